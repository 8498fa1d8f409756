"""DivideMix (Li, Socher & Hoi, ICLR 2020): learning with noisy labels as semi-supervised learning.

Shipped as its own method so that GSS-SSL (`gss` with `variant: ssl`, which is DivideMix plus direction
pools) can be measured against it. Two networks, phases counted in the shared driver's epochs:

* Warm-up (`epoch < warmup_epochs`): both networks train with plain cross-entropy on every sample.
* Afterwards, at the start of every epoch: each network scores the whole training set in eval mode
  (`eval_losses`); a two-component Gaussian mixture on its min-max normalised per-sample losses
  (`gmm_clean_probability`, scikit-learn on a 1-D array) gives every sample a clean probability w.
  Co-divide: network A trains with B's division (labeled = w_B > `p_threshold`, the rest unlabeled) and
  vice versa, so a network never confirms its own mistakes.
* One MixMatch step per labeled batch (`mixmatch_step`): label co-refinement
  (w·onehot(ỹ) + (1−w)·p̄, p̄ the network's mean over two augmented views, sharpened by T), co-guessing for
  unlabeled samples (the mean of both networks over both views, sharpened), MixUp with
  λ = max(l, 1−l), l ~ Beta(α, α), over the labeled and unlabeled views together; loss = L_x (soft-target
  CE) + λ_u(t)·L_u (MSE) + the uniform-prior penalty Σ_k π_k log(π_k / p̄_k). λ_u ramps up linearly over
  `rampup_epochs` after the warm-up. Unlabeled batches are drawn from a reshuffled cycle over the
  unlabeled set, one per labeled batch, as the reference code does.

Every random draw (shuffles, augmentation, the Beta draw, the MixUp permutation) comes from `ctx.gen`.
The reported model is the mean of the two networks; exports add `clean_probability` (the mean of the two
GMM posteriors at the end of training) and the noise score is one minus it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field
from scipy.special import betaincinv
from torch import nn

from pipeline.config import Strict
from pipeline.data.tensors import ImageData, to_device
from pipeline.methods.base import MethodOutput, MethodSpec, register
from pipeline.schemas import Column
from pipeline.train import (
    Accumulator,
    EpochResult,
    TrainContext,
    build_nets,
    ce_step,
    load_nets_state,
    make_optimizer,
    make_scheduler,
    nets_state,
    predict,
    predict_mean,
    progress,
)


class DivideMixOptions(Strict):
    """`method.dividemix:` options (also `method.gss.dividemix:` for GSS-SSL). Defaults are the paper's
    CIFAR-10 values except where noted; params.yaml sets shorter ones for the 20-epoch digits run."""

    warmup_epochs: int = Field(10, ge=0)  # CE epochs on both networks before the first division
    p_threshold: float = Field(0.5, gt=0.0, lt=1.0)  # labeled for the peer when clean probability > this
    temperature: float = Field(0.5, gt=0.0)  # T of the sharpening p^(1/T)
    alpha: float = Field(4.0, gt=0.0)  # MixUp Beta(α, α)
    lambda_u: float = Field(25.0, ge=0.0)  # weight of L_u (paper: 0 at 20%, 25 at 50/80%, 50 at 90% sym)
    rampup_epochs: int = Field(16, ge=0)  # epochs for λ_u to ramp from 0 after the warm-up (0 = at once)
    prior_penalty: bool = True  # the uniform-prior regulariser Σ π_k log(π_k / mean p_k)
    gmm_max_iter: int = Field(10, ge=1)  # EM iterations of the GMM (reference: 10)
    gmm_tol: float = Field(1e-2, gt=0.0)
    gmm_reg_covar: float = Field(5e-4, gt=0.0)

    def warmups(self) -> dict[str, int]:
        """Warm-up lengths the params check against train.epochs."""
        return {"warmup_epochs": self.warmup_epochs}


# ---------------------------------------------------------------------------------------- pure pieces
def gmm_clean_probability(
    losses: np.ndarray, *, max_iter: int = 10, tol: float = 1e-2, reg_covar: float = 5e-4, seed: int = 0
) -> np.ndarray:
    """Posterior of the low-loss component of a two-component 1-D Gaussian mixture.

    Args:
        losses: (N,) per-sample losses, finite, N ≥ 2; min-max normalised before the fit.
        max_iter, tol, reg_covar: scikit-learn `GaussianMixture` settings.
        seed: the mixture's random_state.

    Returns:
        (N,) float64 in [0, 1], higher = more likely clean. All-equal losses carry no evidence: ones.

    Raises:
        ValueError: on a wrong shape, fewer than two samples, or a non-finite loss (the row is named).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = np.asarray(losses, dtype=np.float64)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"losses must be a 1-D array of at least 2 values, got shape {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise ValueError(f"losses: non-finite value at row {int(bad[0])} ({x[bad[0]]})")
    span = x.max() - x.min()
    if span <= 0:
        return np.ones_like(x)
    x = ((x - x.min()) / span)[:, None]
    gmm = GaussianMixture(2, max_iter=max_iter, tol=tol, reg_covar=reg_covar, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 10 iterations by design, as the reference
        gmm.fit(x)
    return gmm.predict_proba(x)[:, int(np.argmin(gmm.means_[:, 0]))]


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, K) probabilities -> p^(1/T) renormalised per row."""
    q = p.pow(1.0 / temperature)
    return q / q.sum(-1, keepdim=True)


def rampup(epoch: float, warmup: int, length: int) -> float:
    """Linear ramp in [0, 1]: 0 at the end of the warm-up, 1 after `length` more epochs (fractional)."""
    if length <= 0:
        return 1.0
    return float(np.clip((epoch - warmup) / length, 0.0, 1.0))


def beta_draw(alpha: float, gen: torch.Generator) -> float:
    """One draw of Beta(α, α) by inverse CDF from a uniform of `gen` (torch's Beta takes no generator)."""
    u = float(torch.rand((), generator=gen))
    return float(betaincinv(alpha, alpha, u))


@torch.no_grad()
def eval_losses(net: nn.Module, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample CE against the given labels over ctx.train, eval mode, no augmentation.

    Returns:
        (losses (N,), probs (N, K)) on ctx.device.
    """
    probs = predict(net, ctx.train, ctx)
    p_given = probs.gather(1, ctx.train.labels[:, None])[:, 0]
    return -p_given.clamp_min(1e-12).log(), probs


@dataclass
class Division:
    """One network's view of the training set for its peer: clean probability and the labeled mask."""

    clean_prob: torch.Tensor  # (N,) float32 in [0, 1]
    labeled: torch.Tensor  # (N,) bool, clean_prob > p_threshold


def divide(losses: torch.Tensor, options: DivideMixOptions, seed: int) -> Division:
    """GMM on one network's per-sample losses -> its Division of the training set."""
    prob = gmm_clean_probability(
        losses.float().cpu().numpy(),
        max_iter=options.gmm_max_iter,
        tol=options.gmm_tol,
        reg_covar=options.gmm_reg_covar,
        seed=seed,
    )
    w = torch.as_tensor(prob, dtype=torch.float32, device=losses.device)
    return Division(w, w > options.p_threshold)


def _cycle(ctx: TrainContext, rows: torch.Tensor) -> Iterator[torch.Tensor]:
    """Endless shuffled batches over `rows` (a fresh permutation from ctx.gen each pass)."""
    while True:
        yield from ctx.batches(rows)


LabelFn = Callable[[torch.Tensor], torch.Tensor]
"""(B,) training-set rows -> (B,) labels; GSS-SSL's pool draws."""


def mixmatch_step(
    net: nn.Module,
    peer: nn.Module,
    opt: torch.optim.Optimizer,
    ctx: TrainContext,
    idx_x: torch.Tensor,
    idx_u: torch.Tensor,
    w: torch.Tensor,
    options: DivideMixOptions,
    lambda_u: float,
    *,
    label_x: LabelFn | None = None,
    hint_u: LabelFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One DivideMix step of `net` (train mode) with `peer` co-guessing (the caller sets peer.eval()).

    Args:
        net, peer, opt: the network that steps, its peer, and the network's optimiser.
        idx_x: (B,) labeled training rows; idx_u: (B',) unlabeled rows, B' ≥ 0 (0: no L_u).
        w: (N,) clean probabilities from the peer's division (labeled refinement weights; GSS-SSL also
            weights its unlabeled pool draws by them).
        options: the method's options; lambda_u: the ramped L_u weight for this step.
        label_x: labels of the labeled rows for the refinement (default: the given labels). GSS-SSL passes
            draws from the labeled-set pools.
        hint_u: GSS-SSL: labels drawn from the unlabeled-set pools, mixed into the co-guess as
            w·onehot(hint) + (1−w)·guess before sharpening. None = plain DivideMix.

    Returns:
        (L_x per labeled sample over both views (2B,), logits of view 1 (B, K) for the accuracy, given
        labels (B,), L_u as a scalar), all detached.
    """
    k = ctx.num_classes
    _, x1, y = ctx.train_batch(idx_x)
    _, x2, _ = ctx.train_batch(idx_x)
    has_u = idx_u.numel() > 0
    idx_x = to_device(idx_x, ctx.device)
    wx = w[idx_x][:, None]
    with torch.no_grad():
        with ctx.amp:
            o1, o2 = ctx.parallel(net)(x1).float(), ctx.parallel(net)(x2).float()
        lab = y if label_x is None else label_x(idx_x)
        px = 0.5 * (o1.softmax(-1) + o2.softmax(-1))
        tx = sharpen(wx * F.one_hot(lab, k).float() + (1.0 - wx) * px, options.temperature)
        if has_u:
            _, u1, _ = ctx.train_batch(idx_u)
            _, u2, _ = ctx.train_batch(idx_u)
            with ctx.amp:
                pu = sum(ctx.parallel(m)(v).float().softmax(-1) for m in (net, peer) for v in (u1, u2)) / 4.0
            if hint_u is not None:
                idx_u = to_device(idx_u, ctx.device)
                wu = w[idx_u][:, None]
                pu = wu * F.one_hot(hint_u(idx_u), k).float() + (1.0 - wu) * pu
            tu = sharpen(pu, options.temperature)
    inputs = [x1, x2] + ([u1, u2] if has_u else [])
    targets = [tx, tx] + ([tu, tu] if has_u else [])
    all_x, all_t = torch.cat(inputs), torch.cat(targets)
    lam = beta_draw(options.alpha, ctx.gen)
    lam = max(lam, 1.0 - lam)
    perm = to_device(torch.randperm(len(all_x), generator=ctx.gen), ctx.device)
    mixed_x = lam * all_x + (1.0 - lam) * all_x[perm]
    mixed_t = lam * all_t + (1.0 - lam) * all_t[perm]
    with ctx.amp:
        logits = ctx.parallel(net)(mixed_x).float()
    nx = 2 * len(idx_x)
    lx = -(F.log_softmax(logits[:nx], -1) * mixed_t[:nx]).sum(-1)
    lu = ((logits[nx:].softmax(-1) - mixed_t[nx:]) ** 2).mean() if has_u else logits.new_zeros(())
    loss = lx.mean() + lambda_u * lu
    if options.prior_penalty:
        prior = torch.full((k,), 1.0 / k, device=logits.device)
        mean_p = logits.softmax(-1).mean(0)
        loss = loss + (prior * (prior / mean_p.clamp_min(1e-12)).log()).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return lx.detach(), o1, y, lu.detach()


def warmup_epoch(
    nets: list[nn.Module], opts: list[torch.optim.Optimizer], ctx: TrainContext, desc: str, label_fns=None
) -> EpochResult:
    """Plain CE for every network on the same shuffled batches; the log follows the first network.

    `label_fns[j]` (optional) replaces the given labels of network j (GSS-SSL keeps them: None)."""
    acc = Accumulator(ctx.device)
    for n in nets:
        n.train()
    for idx in progress(ctx.batches(), ctx, desc):
        idx, x, y = ctx.train_batch(idx)
        for j, (net, opt) in enumerate(zip(nets, opts, strict=True)):
            target = y if label_fns is None else label_fns[j](idx)
            loss, logits = ce_step(net, opt, x, target, ctx)
            if j == 0:
                acc.add(loss, logits, y)
    return acc.result()


def codivide_epoch(
    nets: list[nn.Module],
    opts: list[torch.optim.Optimizer],
    ctx: TrainContext,
    options: DivideMixOptions,
    epoch: int,
    divisions: list[Division],
    desc: str,
    *,
    label_x: list[LabelFn] | None = None,
    hint_u: list[LabelFn] | None = None,
) -> tuple[Accumulator, torch.Tensor]:
    """One post-warm-up epoch: network j trains on the division of network 1−j with MixMatch.

    Args:
        nets, opts: the two networks and their optimisers.
        divisions: divisions[j] is network j's own GMM view; network j trains on divisions[1 − j].
        label_x, hint_u: per-network GSS-SSL label sources (see `mixmatch_step`); None = DivideMix.

    Returns:
        (an Accumulator over network 0's steps, mean L_u over all steps of both networks).
    """
    acc, lu_sum, steps = Accumulator(ctx.device), torch.zeros((), device=ctx.device), 0
    for j, (net, opt) in enumerate(zip(nets, opts, strict=True)):
        peer, div = nets[1 - j], divisions[1 - j]
        labeled = torch.nonzero(div.labeled).flatten()
        unlabeled = torch.nonzero(~div.labeled).flatten()
        if labeled.numel() < 2:  # the peer calls (almost) everything noisy: fall back to all samples
            labeled, unlabeled = torch.arange(len(ctx.train), device=ctx.device), unlabeled[:0]
        net.train()
        peer.eval()
        u_iter = _cycle(ctx, unlabeled) if unlabeled.numel() >= 2 else None
        batches = list(ctx.batches(labeled))
        for i, idx_x in enumerate(progress(batches, ctx, f"{desc} net{j + 1}")):
            idx_u = next(u_iter) if u_iter is not None else idx_x[:0]
            lam_u = options.lambda_u * rampup(
                epoch + i / max(len(batches), 1), options.warmup_epochs, options.rampup_epochs
            )
            lx, logits, y, lu = mixmatch_step(
                net,
                peer,
                opt,
                ctx,
                idx_x,
                idx_u,
                div.clean_prob,
                options,
                lam_u,
                label_x=None if label_x is None else label_x[j],
                hint_u=None if hint_u is None else hint_u[j],
            )
            lu_sum += lu
            steps += 1
            if j == 0:
                acc.add(lx, logits, y)
        peer.train()
    return acc, lu_sum / max(steps, 1)


# ------------------------------------------------------------------------------------------------ method
class DivideMix:
    """Two networks, CE warm-up, then per-epoch GMM co-divide and MixMatch (see the module docstring)."""

    def __init__(self, opts: DivideMixOptions, ctx: TrainContext) -> None:
        self.ctx, self.options = ctx, opts
        self.nets = build_nets(ctx, 2)
        self.optimizers = [make_optimizer(n, ctx.cfg) for n in self.nets]
        self.schedulers = [make_scheduler(opt, ctx.cfg) for opt in self.optimizers]

    def train_epoch(self, epoch: int) -> EpochResult:
        ctx, options = self.ctx, self.options
        if epoch < options.warmup_epochs:
            res = warmup_epoch(self.nets, self.optimizers, ctx, f"dividemix warm-up e{epoch + 1}")
        else:
            divisions, gmm_s = divide_both(self.nets, ctx, options)
            acc, lu = codivide_epoch(
                self.nets, self.optimizers, ctx, options, epoch, divisions, f"dividemix e{epoch + 1}"
            )
            kept = divisions[0].labeled | divisions[1].labeled
            res = acc.result(
                kept,
                labeled_fraction=0.5
                * float(divisions[0].labeled.float().mean() + divisions[1].labeled.float().mean()),
                lambda_u=options.lambda_u * rampup(epoch + 1, options.warmup_epochs, options.rampup_epochs),
                loss_u=float(lu),
                gmm_seconds=gmm_s,
            )
        for s in self.schedulers:
            s.step()
        return res

    def predict(self, data: ImageData) -> torch.Tensor:
        return predict_mean(self.nets, data, self.ctx)

    def networks(self) -> list[torch.nn.Module]:
        return self.nets

    def export(self) -> MethodOutput:
        """Both networks' mean probabilities; `clean_probability` from a last GMM on each network's losses."""
        divisions, _ = divide_both(self.nets, self.ctx, self.options)
        clean = 0.5 * (divisions[0].clean_prob + divisions[1].clean_prob)
        return MethodOutput(
            self.predict(self.ctx.train),
            noise_score=1.0 - clean,
            extra={"clean_probability": clean.cpu().numpy().astype(np.float32)},
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            **nets_state(self.nets, self.optimizers, self.schedulers),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_nets_state(state, self.nets, self.optimizers, self.schedulers)


def divide_both(
    nets: list[nn.Module], ctx: TrainContext, options: DivideMixOptions, probs_out: list | None = None
) -> tuple[list[Division], float]:
    """Each network's eval-mode losses and GMM division; returns (divisions, seconds spent in the GMM fits).

    `probs_out`, when given, receives each network's (N, K) eval probabilities (GSS-SSL's pool updates)."""
    divisions, gmm_s = [], 0.0
    for j, net in enumerate(nets):
        losses, probs = eval_losses(net, ctx)
        if probs_out is not None:
            probs_out.append(probs)
        t0 = time.perf_counter()
        divisions.append(divide(losses, options, ctx.seed + j))
        gmm_s += time.perf_counter() - t0
    return divisions, gmm_s


COLUMNS = (
    Column(
        "clean_probability",
        pa.float32(),
        min_value=0.0,
        max_value=1.0,
        direction="higher = more likely clean",
        description="DivideMix, GSS-SSL: GMM posterior of the low-loss component, mean of both "
        "networks, after training.",
    ),
)
"""The score columns this method adds to SCORES (pipeline.schemas.Column)."""


SPEC = register(
    MethodSpec(
        "dividemix",
        DivideMixOptions,
        DivideMix,
        "DivideMix: GMM co-divide + MixMatch on two networks",
        columns=COLUMNS,
    )
)
