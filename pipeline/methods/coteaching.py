"""Co-teaching (Han et al., NeurIPS 2018): two networks, each trained on its peer's small-loss samples."""

from __future__ import annotations

from typing import Any, Literal

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
from pipeline.train import (
    Accumulator,
    EpochResult,
    TrainContext,
    build_nets,
    load_nets_state,
    make_optimizer,
    make_scheduler,
    nets_state,
    predict_mean,
    progress,
)


class CoteachingOptions(Strict):
    """`method.coteaching:` options."""

    forget_rate: float | Literal["auto"] = "auto"  # τ in [0, 1); auto = the estimated noise rate
    num_gradual: int = Field(10, ge=0)  # T_k: epochs over which R(t) ramps up to τ
    exponent: float = Field(1.0, gt=0.0)  # c in R(t) = τ·min((t/T_k)^c, 1)

    @field_validator("forget_rate")
    @classmethod
    def _forget(cls, v):
        if v != "auto" and not 0.0 <= v < 1.0:
            raise ValueError(f"forget_rate must be in [0, 1), got {v}")
        return v


class Coteaching:
    """Two networks; network A steps on B's small-loss samples and vice versa."""

    def __init__(self, opts: CoteachingOptions, ctx: TrainContext) -> None:
        self.ctx, self.options = ctx, opts
        self.tau = resolve_forget_rate(opts.forget_rate, ctx.noise_rate, "method.coteaching.forget_rate")
        self.nets = build_nets(ctx, 2)
        self.optimizers = [make_optimizer(n, ctx.cfg) for n in self.nets]
        self.schedulers = [make_scheduler(opt, ctx.cfg) for opt in self.optimizers]
        self.kept = KeptTracker(len(ctx.train), ctx.device)

    def train_epoch(self, epoch: int) -> EpochResult:
        ctx = self.ctx
        forget = forget_rate_at(epoch, self.tau, self.options.num_gradual, self.options.exponent)
        kept, acc = self.kept.new_epoch(), Accumulator(ctx.device)
        for n in self.nets:
            n.train()
        for idx in progress(ctx.batches(), ctx, f"coteaching e{epoch + 1}"):
            idx, x, y = ctx.train_batch(idx)
            with ctx.amp:
                la, lb = (ctx.parallel(net)(x).float() for net in self.nets)
            ce_a = F.cross_entropy(la, y, reduction="none")
            ce_b = F.cross_entropy(lb, y, reduction="none")
            pick_a, pick_b = small_loss_indices(ce_a, forget), small_loss_indices(ce_b, forget)
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            (ce_a[pick_b].mean() + ce_b[pick_a].mean()).backward()  # the two graphs are disjoint
            for opt in self.optimizers:
                opt.step()
            kept[idx[pick_a]] = True
            kept[idx[pick_b]] = True
            acc.add(ce_a[pick_b], la, y)  # the log follows network A on its peer's pick
        for s in self.schedulers:
            s.step()
        self.kept.end_epoch(kept)
        return acc.result(kept, forget_rate=forget)

    def predict(self, data: ImageData) -> torch.Tensor:
        return predict_mean(self.nets, data, self.ctx)

    def networks(self) -> list[torch.nn.Module]:
        return self.nets

    def export(self) -> MethodOutput:
        return MethodOutput(self.predict(self.ctx.train), extra={"kept_fraction": self.kept.fraction()})

    def state_dict(self) -> dict[str, Any]:
        return {
            **nets_state(self.nets, self.optimizers, self.schedulers),
            "kept": self.kept.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_nets_state(state, self.nets, self.optimizers, self.schedulers)
        self.kept.load_state_dict(state["kept"])


SPEC = register(
    MethodSpec(
        "coteaching",
        CoteachingOptions,
        Coteaching,
        "Co-teaching: two networks exchanging small-loss samples",
        columns=KEPT_COLUMNS,
    )
)
