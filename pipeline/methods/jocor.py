"""JoCoR (Wei et al., CVPR 2020) with N ≥ 2 networks (three-network extension of Fazekas et al.).

Per sample ℓ = (1 − λ)·Σ_n CE(p_n, ỹ) + λ·Σ_pairs D(p_a, p_b), with pairs `all` (every ordered pair; N = 2
is the original symmetric KL) or `circular` (D(p1,p2) + … + D(pN,p1)) and D = KL(p_b ‖ p_a) (`kl`) or the
cross-entropy −Σ p_b log p_a (`ce`); gradients flow through both sides, as in the reference code. Each
batch keeps the ⌊(1 − R(t))·B⌋ smallest ℓ and one optimiser steps every network on their mean.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from pipeline.config import Strict
from pipeline.data.tensors import ImageData
from pipeline.methods.base import MethodOutput, MethodSpec, register
from pipeline.methods.selection import (
    KEPT_COLUMNS,
    KeptTracker,
    forget_rate_at,
    resolve_forget_rate,
    small_loss_indices,
)
from pipeline.schemas import Column
from pipeline.train import (
    Accumulator,
    EpochResult,
    TrainContext,
    build_nets,
    load_states,
    make_optimizer,
    make_scheduler,
    predict_mean,
    progress,
)


class JoCoROptions(Strict):
    """`method.jocor:` options."""

    nets: int = Field(2, ge=2, le=8)  # number of co-trained networks
    pairs: Literal["all", "circular"] = "all"  # which network pairs enter the contrast term
    contrast: Literal["kl", "ce"] = "kl"  # D in the contrast term
    lam: float | Literal["auto"] = "auto"  # λ in [0, 1]; auto: see `auto_lambda`
    forget_rate: float | Literal["auto"] = "auto"  # τ in [0, 1); auto = the estimated noise rate
    num_gradual: int = Field(10, ge=0)  # T_k: epochs over which R(t) ramps up to τ
    exponent: float = Field(1.0, gt=0.0)  # c in R(t) = τ·min((t/T_k)^c, 1)

    @field_validator("lam")
    @classmethod
    def _lam(cls, v):
        if v != "auto" and not 0.0 <= v <= 1.0:
            raise ValueError(f"λ must be in [0, 1], got {v}")
        return v

    @field_validator("forget_rate")
    @classmethod
    def _forget(cls, v):
        if v != "auto" and not 0.0 <= v < 1.0:
            raise ValueError(f"forget_rate must be in [0, 1), got {v}")
        return v


def auto_lambda(noise_rate: float | None, nets: int, num_pairs: int) -> float:
    """λ for `lam: auto`: the JoCoR README's λ0 (0.9; 0.65 above 60% estimated noise), rescaled so the
    contrast-to-CE weight per network matches the two-network original.

    The loss sums `nets` CE terms and `num_pairs` divergences; keeping λ/(1-λ)·num_pairs/nets equal to
    λ0/(1-λ0) gives λ = λ0·N / (λ0·N + (1-λ0)·P): 0.9 for N = 2 (both pair modes) and N = 3 circular,
    0.818 for N = 3 with all six pairs.
    """
    lam0 = 0.65 if (noise_rate or 0.0) > 0.6 else 0.9
    return lam0 * nets / (lam0 * nets + (1.0 - lam0) * num_pairs)


def pair_list(n: int, pairs: str) -> list[tuple[int, int]]:
    """Ordered network pairs (a, b) whose divergence D(p_a, p_b) enters the loss."""
    if pairs == "all":
        return [(a, b) for a in range(n) for b in range(n) if a != b]
    return [(a, (a + 1) % n) for a in range(n)]


def contrast(logits_a: torch.Tensor, logits_b: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample D(p_a, p_b): KL(p_b ‖ p_a) or CE(target p_b, prediction p_a). (B,K),(B,K) -> (B,)."""
    log_a = F.log_softmax(logits_a, -1)
    if kind == "kl":
        return F.kl_div(log_a, F.log_softmax(logits_b, -1), reduction="none", log_target=True).sum(-1)
    return -(F.softmax(logits_b, -1) * log_a).sum(-1)


def joint_loss(
    logits: list[torch.Tensor], y: torch.Tensor, lam: float, pairs: list[tuple[int, int]], kind: str
) -> torch.Tensor:
    """ℓ per sample (B,) from N networks' logits (each (B, K)) and labels (B,)."""
    sup = sum(F.cross_entropy(lg, y, reduction="none") for lg in logits)
    con = sum(contrast(logits[a], logits[b], kind) for a, b in pairs)
    return (1.0 - lam) * sup + lam * con


class JoCoR:
    """N networks, one optimiser, joint loss with small-loss selection."""

    def __init__(self, opts: JoCoROptions, ctx: TrainContext) -> None:
        self.ctx, self.options = ctx, opts
        self.tau = resolve_forget_rate(opts.forget_rate, ctx.noise_rate, "method.jocor.forget_rate")
        self.pairs = pair_list(opts.nets, opts.pairs)
        self.lam = (
            float(opts.lam) if opts.lam != "auto" else auto_lambda(ctx.noise_rate, opts.nets, len(self.pairs))
        )
        self.nets = build_nets(ctx, opts.nets)
        self.opt = make_optimizer(self.nets, ctx.cfg)
        self.sched = make_scheduler(self.opt, ctx.cfg)
        self.kept = KeptTracker(len(ctx.train), ctx.device)
        self.last_loss = torch.full((len(ctx.train),), float("nan"), device=ctx.device)

    def train_epoch(self, epoch: int) -> EpochResult:
        ctx = self.ctx
        forget = forget_rate_at(epoch, self.tau, self.options.num_gradual, self.options.exponent)
        kept, acc = self.kept.new_epoch(), Accumulator(ctx.device)
        for n in self.nets:
            n.train()
        for idx in progress(ctx.batches(), ctx, f"jocor e{epoch + 1}"):
            idx, x, y = ctx.train_batch(idx)
            with ctx.amp:
                logits = [ctx.parallel(net)(x).float() for net in self.nets]
            ell = joint_loss(logits, y, self.lam, self.pairs, self.options.contrast)
            pick = small_loss_indices(ell, forget)
            loss = ell[pick].mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            kept[idx[pick]] = True
            self.last_loss[idx] = ell.detach()
            acc.add(ell[pick], logits[0], y)  # accuracy follows the first network
        self.sched.step()
        self.kept.end_epoch(kept)
        return acc.result(kept, forget_rate=forget, **{"lambda": self.lam})

    def predict(self, data: ImageData) -> torch.Tensor:
        return predict_mean(self.nets, data, self.ctx)

    def networks(self) -> list[torch.nn.Module]:
        return self.nets

    def export(self) -> MethodOutput:
        return MethodOutput(
            self.predict(self.ctx.train),
            extra={
                "joint_loss": self.last_loss.cpu().numpy().astype(np.float32),
                "kept_fraction": self.kept.fraction(),
            },
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": [n.state_dict() for n in self.nets],
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "kept": self.kept.state_dict(),
            "last_loss": self.last_loss,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_states(self.nets, state["nets"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.kept.load_state_dict(state["kept"])
        self.last_loss = state["last_loss"].to(self.ctx.device)


COLUMNS = (
    Column(
        "joint_loss",
        pa.float32(),
        nullable=True,
        min_value=0.0,
        direction="higher = more likely noisy",
        description="JoCoR: last joint loss (CE + contrast) of the sample; null if never seen.",
    ),
)
"""The score columns this method adds to SCORES (pipeline.schemas.Column)."""


SPEC = register(
    MethodSpec(
        "jocor",
        JoCoROptions,
        JoCoR,
        "JoCoR: N networks, joint loss, small-loss selection",
        columns=KEPT_COLUMNS + COLUMNS,
    )
)
