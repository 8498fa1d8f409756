"""GAL: Gradient Agreement Learning (Yan et al., "Gradient Agreement Hinders the Memorization of Noisy
Labels", Applied Sciences 2023; how it is read: docs/methods.md).

Phases, counted in the shared driver's epochs (the warm-up is part of `train.epochs`):

* Warm-up (`epoch < warmup_epochs`): ONE network θ trains with plain cross-entropy on all data. Two
  identical networks fed identical batches would follow the same trajectory, so one stands for both.
* At the first epoch ≥ `warmup_epochs`: θA = θB = deepcopy(θ), each with a fresh optimiser and a scheduler
  positioned at the current epoch; θC (seed + 2, built at construction) gets its optimiser too.
* Afterwards, every step: Class Distribution Agreement Sampling (`CDASampler`) gives A and B two disjoint
  batches with the same annotated-class histogram; both backward their own CE; `agreement_update` takes,
  for every parameter pair (or output channel / scalar, per `granularity`), the cosine of the two gradients
  (or of the tentative updates P − η∇P with `agreement_on: update`, the paper's literal Eq. 2-4 with its
  "+" read as the usual descent sign) and updates the pair in BOTH networks only where it is ≥ τ. A blocked
  pair does not change at all: no gradient step, no weight decay, no momentum / Adam-moment update (the
  optimiser steps, then blocked entries are restored from a snapshot, bit for bit). BatchNorm running
  statistics are buffers, not parameters: they follow every forward pass in train mode, gate or not.
* θC (`third_net`) then steps on X^a with L_c + L_d against the joint prediction of A and B (eval mode, no
  grad): Algorithm 2 of the paper.

`joint_from: train` (a faster reading of the paper's "at every epoch, the predictions of θA and θB on the
training set are used as pseudo labels"): no eval forwards. Within a CDAS cycle half, A sees X^a and B sees
X^b at the first step, and the reverse at the second, so after the second step both networks have predicted
both batches in their own training passes (train-mode BatchNorm, each pass its own augmentation draw, A's
and B's first-step predictions one update older). θC then steps on X^a and on X^b against those joint
softmaxes: the same θC batches and step count as `eval`, the first one a step later. A cycle half cut off
by the end of the epoch gives θC no step for it. With `sampling: identical` the pair is complete at every
step. This drops GAL's per-step cost from about 3.67 to 3 CE steps (see the README's bench figures).

`update: random` (the paper's "θA + θB + Random Updating" ablation, which updates "a certain proportion"
of parameter pairs matching the agreement ratio seen at that noise level): the gate is still computed every
step, but not applied; instead each unit (tensor / channel / scalar, same `granularity`) is updated in both
networks independently with probability r̄, the running mean of the gate's ratio (fraction of scalars with
g ≥ τ) over every post-warm-up step so far, the current step included. The draws come from a dedicated
generator on the training device (seed + 3), saved in the state.

`update: all` (the paper's Figure 1 experiment: "a pair of identical networks" fed class-matched batches,
both trained normally while the agreement is measured): every pair is updated; the gate ratio is logged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from pipeline.config import Strict
from pipeline.data.tensors import ImageData
from pipeline.methods.base import MethodOutput, MethodSpec, log_plot, register
from pipeline.models import build_model
from pipeline.schemas import Column
from pipeline.train import (
    Accumulator,
    EpochResult,
    TrainContext,
    ce_step,
    load_nets_state,
    make_optimizer,
    make_scheduler,
    nets_state,
    predict,
    progress,
)

Granularity = Literal["tensor", "channel", "element"]


class GALOptions(Strict):
    """`method.gal:` options."""

    warmup_epochs: int = Field(5, ge=0)  # epochs of plain CE on one network θ (counted in train.epochs)
    tau: float = Field(0.4, ge=-1.0, le=1.0)  # agreement threshold on the cosine g (update where g ≥ τ)
    epsilon: float = Field(0.8, ge=0.0, le=1.0)  # θC: pseudo-label enters L_c when max p_joint > ε
    sampling: Literal["cdas", "cdas_no_reverse", "random", "identical"] = "cdas"  # paper's Table 5 rows
    agreement_on: Literal["gradient", "update"] = "gradient"  # cosine of ∇P, or of P − η∇P (Eq. 2-4)
    granularity: Granularity = "tensor"  # one g per tensor | per output channel (row) | per scalar (sign)
    # agreement: the gate decides | random: p = running mean gate ratio (see module) | all: every pair is
    # updated and the gate only measured (the paper's Figure 1 experiment)
    update: Literal["agreement", "random", "all"] = "agreement"
    third_net: bool = True  # train θC on the joint pseudo-labels and report it
    # θC's p_joint: eval = eval-mode forwards of A and B on θC's batch (the paper's Algorithm 2);
    # train = the softmaxes of A's and B's own training passes over each CDAS cycle half (no extra forwards;
    # needs sampling cdas or identical, see the module docstring)
    joint_from: Literal["eval", "train"] = "eval"

    @model_validator(mode="after")
    def _joint_needs_both_views(self) -> GALOptions:
        if self.joint_from == "train" and self.sampling not in ("cdas", "identical"):
            raise ValueError(
                f"joint_from: train needs A and B to see the same samples (sampling cdas or identical), "
                f"not sampling {self.sampling}"
            )
        return self

    def warmups(self) -> dict[str, int]:
        """Warm-up lengths the params check against train.epochs."""
        return {"warmup_epochs": self.warmup_epochs}


# ----------------------------------------------------------------------------------------------- sampling
class CDASampler:
    """Index batches for A and B over one epoch; explicit state so a run can be resumed.

    Modes:
        cdas: a 4-step cycle. Step 1: X^a random from the epoch's unused pool, X^b class-matched to it;
            A trains on X^a, B on X^b. Step 2: reversed (A on X^b, B on X^a). Steps 3-4: X^b random,
            X^a class-matched, then reversed. Over an epoch A and B see the same multiset of samples.
        cdas_no_reverse: steps 1 and 3 only.
        random: A and B each make their own random pass over the data (independent batches).
        identical: one random pass; both get the same batch.

    Class matching: for every class j with C_j samples (by given label) in the reference batch, C_j samples
    annotated j are drawn without replacement from the epoch's unused pool (which never holds the reference
    batch); when the pool has fewer, the rest is drawn with replacement from class j minus the reference
    batch. A class with no sample outside the reference batch cannot be matched: its samples are dropped
    from the reference batch (they count as used), so the histograms stay equal. A random draw takes
    min(batch, unused // 2) samples for the CDAS modes (so the matched half mostly comes from the pool)
    and min(batch, unused) otherwise; the epoch ends when that is below max(2, batch // 2), like a
    loader's drop_last: a tail of tiny batches would feed BatchNorm's running statistics a few samples each
    (measured: θC's test accuracy swung by 0.2 between epochs at lr ≈ 0 before this rule).

    Attributes:
        used: (N,) bool, samples drawn this epoch (A's pass in `random` mode).
        used_b: (N,) bool, B's pass in `random` mode.
        phase: position in the cycle (0-3).
        pending: [X^a, X^b] of the current cycle half (the batches the reversed step swaps), or None.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, batch_size: int, mode: str) -> None:
        """Build the per-class member lists and empty pools.

        Args:
            labels: (N,) int64 given labels (kept on the CPU, like the index batches).
            num_classes: K.
            batch_size: batch size per network and step.
            mode: cdas | cdas_no_reverse | random | identical.
        """
        self.labels = labels.detach().cpu().long()
        self.num_classes, self.batch_size, self.mode = num_classes, batch_size, mode
        self.members = [(self.labels == j).nonzero().squeeze(1) for j in range(num_classes)]
        n = len(self.labels)
        self.used = torch.zeros(n, dtype=torch.bool)
        self.used_b = torch.zeros(n, dtype=torch.bool)
        self.phase = 0
        self.pending: list[torch.Tensor] | None = None
        self.min_batch = max(2, batch_size // 2)

    def start_epoch(self) -> None:
        """Reset the pools and the cycle."""
        self.used.zero_()
        self.used_b.zero_()
        self.phase, self.pending = 0, None

    def epoch(self, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (A's indices (B_a,), B's indices (B_b,)) pairs until the epoch's pool runs out."""
        self.start_epoch()
        while (pair := self.next(gen)) is not None:
            yield pair

    # -------------------------------------------------------------------------------------------- draws
    def _random(self, used: torch.Tensor, gen: torch.Generator, half: bool) -> torch.Tensor | None:
        """(b,) random unused indices, marked used; None when fewer than 2 can be drawn."""
        avail = (~used).nonzero().squeeze(1)
        b = min(self.batch_size, len(avail) // 2 if half else len(avail))
        if b < self.min_batch:
            return None
        pick = avail[torch.randperm(len(avail), generator=gen)[:b]]
        used[pick] = True
        return pick

    def _matched(self, ref: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(ref', matched): matched has ref's class histogram and no sample of ref (ref' = ref minus any
        class that has no sample outside ref). Matched samples are marked used."""
        counts = torch.bincount(self.labels[ref], minlength=self.num_classes)
        in_ref = torch.zeros(len(self.labels), dtype=torch.bool)
        in_ref[ref] = True
        parts, unmatched = [], []
        for j in counts.nonzero().squeeze(1).tolist():
            cj, mem = int(counts[j]), self.members[j]
            fresh = mem[~self.used[mem]]
            take = fresh[torch.randperm(len(fresh), generator=gen)[:cj]]
            if len(take) < cj:
                pool = mem[~in_ref[mem]]
                if len(pool) == 0:
                    unmatched.append(j)
                    continue
                extra = pool[torch.randint(len(pool), (cj - len(take),), generator=gen)]
                take = torch.cat([take, extra])
            parts.append(take)
        matched = torch.cat(parts) if parts else ref[:0]
        self.used[matched] = True
        if unmatched:
            ref = ref[~torch.isin(self.labels[ref], torch.tensor(unmatched))]
        return ref, matched

    def next(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The next (A's indices, B's indices), or None at the end of the epoch."""
        if self.mode == "identical":
            a = self._random(self.used, gen, half=False)
            return None if a is None else (a, a)
        if self.mode == "random":
            a, b = self._random(self.used, gen, half=False), self._random(self.used_b, gen, half=False)
            return None if a is None or b is None else (a, b)
        reverse = self.mode == "cdas"
        if self.phase in (1, 3):  # reversed step: swap the pending pair
            xa, xb = self.pending
            self.phase = (self.phase + 1) % 4
            return xb, xa
        while True:
            rnd = self._random(self.used, gen, half=True)
            if rnd is None:
                return None
            rnd, matched = self._matched(rnd, gen)
            if len(rnd) >= 2:
                break
        # phase 0: X^a random, X^b matched; phase 2: X^b random, X^a matched
        xa, xb = (rnd, matched) if self.phase == 0 else (matched, rnd)
        self.pending = [xa, xb]
        self.phase = (self.phase + 1) % 4 if reverse else (self.phase + 2) % 4
        return xa, xb

    def state_dict(self) -> dict[str, Any]:
        return {"used": self.used, "used_b": self.used_b, "phase": self.phase, "pending": self.pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.used = state["used"].clone().bool()
        self.used_b = state["used_b"].clone().bool()
        self.phase = int(state["phase"])
        self.pending = None if state["pending"] is None else [t.clone() for t in state["pending"]]


# ---------------------------------------------------------------------------------------------- agreement
def unit_rows(shape: Sequence[int], granularity: str) -> int:
    """Number of agreement units in a tensor of `shape`: 1 (tensor), shape[0] (channel), numel (element).

    Channel units are the rows of the tensor flattened over dims 1..; a 1-D tensor (bias, BatchNorm weight)
    therefore has one unit per scalar, and a 0-D tensor one unit.
    """
    numel = int(np.prod(shape)) if len(shape) else 1
    if granularity == "tensor":
        return 1
    if granularity == "channel":
        return int(shape[0]) if len(shape) else 1
    return numel


_SEGMENTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _segments(shapes: tuple, granularity: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(segment id per scalar (total,), scalars per unit (R,)) for the concatenated flattened tensors."""
    key = (shapes, granularity, str(device))
    if key not in _SEGMENTS:
        sizes = []
        for s in shapes:
            rows = unit_rows(s, granularity)
            numel = int(np.prod(s)) if len(s) else 1
            sizes += [numel // rows] * rows
        size_t = torch.tensor(sizes, dtype=torch.long, device=device)
        seg = torch.repeat_interleave(torch.arange(len(sizes), device=device), size_t)
        if len(_SEGMENTS) > 16:
            _SEGMENTS.clear()
        _SEGMENTS[key] = (seg, size_t)
    return _SEGMENTS[key]


def unit_cosines(
    va: Sequence[torch.Tensor], vb: Sequence[torch.Tensor], granularity: Granularity
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines of paired tensors, one per unit, flattened in parameter order.

    Args:
        va: tensors of network A (gradients or tentative updates), any shapes.
        vb: the matching tensors of network B, same shapes.
        granularity: tensor | channel | element (see `unit_rows`); element gives the sign agreement
            sign(a·b) in {-1, 0, 1}, which is the cosine of two scalars.

    Returns:
        (cos (R,) float32 in [-1, 1], scalars per unit (R,) int64). A unit where either side is all zero
        has cosine 0.
    """
    va = [t.detach().float() for t in va]
    vb = [t.detach().float() for t in vb]
    dev = va[0].device
    if granularity == "element":
        sign = torch._foreach_sign(torch._foreach_mul(va, vb))
        cos = torch.cat([t.reshape(-1) for t in sign])
        return cos, torch.ones(1, dtype=torch.long, device=dev).expand(len(cos))
    seg, sizes = _segments(tuple(tuple(t.shape) for t in va), granularity, dev)
    flat = torch.stack(
        [
            torch.cat([t.reshape(-1) for t in torch._foreach_mul(x, y)])
            for x, y in ((va, vb), (va, va), (vb, vb))
        ]
    )  # (3, total): a·b, a², b²
    dot, na, nb = torch.zeros(3, len(sizes), device=dev).index_add_(1, seg, flat)
    den = na.sqrt() * nb.sqrt()
    cos = torch.where(den > 0, dot / den.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return cos.clamp(-1.0, 1.0), sizes


def pair_cosines(
    va: Sequence[torch.Tensor], vb: Sequence[torch.Tensor], granularity: Granularity
) -> list[torch.Tensor]:
    """Per-tensor cosines (see `unit_cosines`), one tensor per input pair.

    Returns:
        shape () per tensor (`tensor`), (rows,) with rows = shape[0] (`channel`; () for a 0-D tensor), or
        the tensor's own shape (`element`).
    """
    cos, _ = unit_cosines(va, vb, granularity)
    out = []
    for c, t in zip(cos.split([unit_rows(t.shape, granularity) for t in va]), va, strict=True):
        if granularity == "element":
            out.append(c.reshape(t.shape))
        else:
            out.append(c.reshape(()) if granularity == "tensor" or t.dim() == 0 else c)
    return out


def _unit_masks(flat: torch.Tensor, params: Sequence[torch.Tensor], granularity: str) -> list[torch.Tensor]:
    """Split a flat (R,) unit mask into masks broadcastable to each parameter's shape."""
    out = []
    for m, p in zip(flat.split([unit_rows(p.shape, granularity) for p in params]), params, strict=True):
        if granularity == "tensor" or p.dim() == 0:
            out.append(m.reshape(()))
        elif granularity == "channel":
            out.append(m.reshape(-1, *([1] * (p.dim() - 1))))
        else:
            out.append(m.reshape(p.shape))
    return out


def mask_flags(masks: Sequence[torch.Tensor]) -> list[tuple[bool, bool]]:
    """(every entry passes, some entry passes) per mask, read with one host sync."""
    return [tuple(f) for f in torch.stack([torch.stack([m.all(), m.any()]) for m in masks]).tolist()]


@torch.no_grad()
def masked_step(
    opt: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    masks: Sequence[torch.Tensor],
    flags: Sequence[tuple[bool, bool]] | None = None,
    sync_free: bool = False,
):
    """`opt.step()` where every entry whose mask is False does not change at all: no gradient step, no
    weight decay, no momentum / Adam-moment update.

    A tensor blocked entirely has its `.grad` set to None, so the optimiser skips it (PyTorch's optimisers
    skip parameters without a gradient: nothing is read or written, Adam's step count included). Only a
    tensor that is partly blocked (`channel` / `element` granularity) pays for a snapshot: its value and
    element-wise optimiser state (SGD momentum buffer, Adam moments) are cloned before the step and its
    blocked entries restored after it, bit for bit; state that did not exist before the step is restored to
    zeros (for SGD without dampening a zero buffer is the same as no buffer). One host sync per call reads
    which tensors are fully passed, fully blocked or mixed.

    On CUDA that sync would stall the GPU queue every step, so there (`sync_free`) every tensor takes the
    snapshot path: a fully blocked tensor steps and is then restored. Values, momentum
    buffers and Adam moments end the same; only Adam's per-tensor step count (kept on the host) advances.

    Args:
        opt: the optimiser holding `params`.
        params: parameters with gradients.
        masks: one bool mask per parameter, broadcastable to its shape (True = update).
        flags: `mask_flags(masks)` when the caller already has them (A and B share one mask set).
        sync_free: snapshot and restore every tensor instead of reading the flags (no host sync).
    """
    if not params:
        return
    if sync_free:
        flags = [(False, True)] * len(params)
    flags = mask_flags(masks) if flags is None else flags
    mixed = [i for i, (every, some) in enumerate(flags) if some and not every]
    for (_, some), p in zip(flags, params, strict=True):
        if not some:
            p.grad = None
    mp = [params[i] for i in mixed]
    old = torch._foreach_clone([p.detach() for p in mp]) if mp else []
    keys = [[k for k, v in opt.state[p].items() if torch.is_tensor(v)] if p in opt.state else [] for p in mp]
    snaps = [{k: opt.state[p][k].clone() for k in ks} for p, ks in zip(mp, keys, strict=True)]
    opt.step()
    for i, before, snap in zip(mixed, old, snaps, strict=True):
        p, m = params[i], masks[i]
        p.copy_(torch.where(m, p, before))
        for k, v in opt.state[p].items():
            if not torch.is_tensor(v) or v.shape != p.shape:
                continue  # per-tensor scalars (Adam's step): the tensor was partly updated, so it counts
            before = snap.get(k)
            v.copy_(torch.where(m, v, torch.zeros_like(v) if before is None else before))


@dataclass
class AgreementStats:
    """Per-step figures (0-dim float32 tensors on the parameters' device, no host sync).

    Attributes:
        updated: fraction of scalar parameters updated this step.
        gate: fraction of scalar parameters whose unit has g ≥ τ (= updated under `update: agreement`).
        unit_gate: fraction of units (tensors / channels / scalars, per granularity) with g ≥ τ.
        mean_cosine: mean g over the units, weighted by their scalar counts.
    """

    updated: torch.Tensor
    gate: torch.Tensor
    unit_gate: torch.Tensor
    mean_cosine: torch.Tensor


def agreement_update(
    opt_a: torch.optim.Optimizer,
    opt_b: torch.optim.Optimizer,
    params_a: Sequence[nn.Parameter],
    params_b: Sequence[nn.Parameter],
    *,
    tau: float,
    granularity: Granularity = "tensor",
    on: Literal["gradient", "update"] = "gradient",
    select: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> AgreementStats:
    """Gradient-agreement step of A and B (gradients already in `.grad`).

    For every unit (see `unit_rows`) g = cos(∇P^A, ∇P^B) (`on: update`: cos(P^A − η∇P^A, P^B − η∇P^B),
    η = opt_a's lr); both optimisers step and every unit with g < τ is left exactly as it was in both
    networks (see `masked_step`). Pairs where either side has no gradient are left to the optimisers.

    Args:
        opt_a, opt_b: optimisers of A and B.
        params_a, params_b: the networks' parameters, paired by position.
        tau: threshold in [-1, 1].
        granularity: tensor | channel | element.
        on: gradient | update.
        select: optional (gate (R,) bool, scalars per unit (R,), gate ratio ()) -> update mask (R,) bool;
            replaces the gate as the update mask (the `update: random` ablation).

    Returns:
        AgreementStats.
    """
    pairs = [
        (a, b) for a, b in zip(params_a, params_b, strict=True) if a.grad is not None and b.grad is not None
    ]
    pa, pb = [a for a, _ in pairs], [b for _, b in pairs]
    ga, gb = [p.grad for p in pa], [p.grad for p in pb]
    if on == "update":
        lr = opt_a.param_groups[0]["lr"]
        ga = torch._foreach_add([p.detach() for p in pa], ga, alpha=-lr)
        gb = torch._foreach_add([p.detach() for p in pb], gb, alpha=-lr)
    cos, sizes = unit_cosines(ga, gb, granularity)
    gate = cos >= tau
    total = float(max(sum(p.numel() for p in pa), 1))
    gate_ratio = (gate * sizes).sum().float() / total
    mask = gate if select is None else select(gate, sizes, gate_ratio)
    updated = gate_ratio if select is None else (mask * sizes).sum().float() / total
    masks = _unit_masks(mask, pa, granularity)
    sync_free = bool(pa) and pa[0].device.type == "cuda"
    flags = mask_flags(masks) if masks and not sync_free else None  # one host sync for both networks
    masked_step(opt_a, pa, masks, flags, sync_free)
    masked_step(opt_b, pb, masks, flags, sync_free)
    mean_cos = (cos * sizes).sum() / total
    return AgreementStats(updated, gate_ratio, gate.float().mean(), mean_cos)


def _update_all(gate: torch.Tensor, sizes: torch.Tensor, gate_ratio: torch.Tensor) -> torch.Tensor:
    """`update: all`: every unit is updated (the gate is only measured)."""
    return torch.ones_like(gate)


# ------------------------------------------------------------------------------------------------- method
class GAL:
    """Warm-up θ, then θA/θB with gradient-agreement updates and θC on their joint pseudo-labels.

    Each epoch's `EpochResult.steps` carries, per step, `agreement_ratio` (fraction of scalar parameters
    updated) and `gate_ratio` (fraction whose unit has g ≥ τ; equal under `update: agreement`), NaN during
    the warm-up; the driver writes them to the step log (`logs/steps/gal.csv` in the pipeline).
    """

    def __init__(self, opts: GALOptions, ctx: TrainContext) -> None:
        self.ctx, self.options = ctx, opts
        self.theta = self._net(ctx.seed)
        self.opt = make_optimizer(self.theta, ctx.cfg)
        self.sched = make_scheduler(self.opt, ctx.cfg)
        self.net_c = self._net(ctx.seed + 2) if opts.third_net else None
        self.net_a = self.net_b = None
        self.opt_a = self.opt_b = self.opt_c = None
        self.sched_a = self.sched_b = self.sched_c = None
        self.cloned = False
        self.sampler = CDASampler(ctx.train.labels, ctx.num_classes, ctx.cfg.batch_size, opts.sampling)
        self.gate_sum = torch.zeros((), device=ctx.device)
        self.gate_count = 0
        self.update_gen = torch.Generator(device=ctx.device)
        self.update_gen.manual_seed(ctx.seed + 3)

    def _net(self, seed: int) -> nn.Module:
        net = build_model(self.ctx.cfg, self.ctx.num_classes, self.ctx.in_chans, seed).to(self.ctx.device)
        if self.ctx.device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        return net

    def _opt_at_current_epoch(self, net: nn.Module):
        """Fresh optimiser for `net` and a scheduler at θ's position (θ's scheduler has stepped once per
        warm-up epoch), with the optimiser's lr set to that position."""
        opt = make_optimizer(net, self.ctx.cfg)
        sched = make_scheduler(opt, self.ctx.cfg)
        sched.load_state_dict(self.sched.state_dict())
        for g, lr in zip(opt.param_groups, sched.get_last_lr(), strict=True):
            g["lr"] = lr
        return opt, sched

    def _clone(self) -> None:
        """θA = θB = copy(θ) with fresh optimisers; θC gets its optimiser."""
        self.net_a, self.net_b = copy.deepcopy(self.theta), copy.deepcopy(self.theta)
        self.opt_a, self.sched_a = self._opt_at_current_epoch(self.net_a)
        self.opt_b, self.sched_b = self._opt_at_current_epoch(self.net_b)
        if self.net_c is not None:
            self.opt_c, self.sched_c = self._opt_at_current_epoch(self.net_c)
        self.cloned = True

    # ------------------------------------------------------------------------------------------- training
    def train_epoch(self, epoch: int) -> EpochResult:
        if epoch < self.options.warmup_epochs:
            return self._warmup_epoch(epoch)
        if not self.cloned:
            self._clone()
        ctx, options = self.ctx, self.options
        acc = Accumulator(ctx.device)
        c_loss = torch.zeros((), device=ctx.device)
        nets = [self.net_a, self.net_b] + ([self.net_c] if self.net_c is not None else [])
        for n in nets:
            n.train()
        pa, pb = list(self.net_a.parameters()), list(self.net_b.parameters())
        select = {"agreement": None, "random": self._random_select, "all": _update_all}[options.update]
        updated, gates, unit_gates, cosines = [], [], [], []
        held = None  # joint_from train: (X^a as A saw it, A's softmax on it, B's softmax on X^b)
        for ia, ib in progress(self.sampler.epoch(ctx.gen), ctx, f"gal e{epoch + 1}"):
            _, xa, ya = ctx.train_batch(ia)
            if options.sampling == "identical":
                xb, yb = xa, ya  # same images, same augmentation: gradients agree exactly
            else:
                _, xb, yb = ctx.train_batch(ib)
            with ctx.amp:
                la, lb = ctx.parallel(self.net_a)(xa).float(), ctx.parallel(self.net_b)(xb).float()
            loss_a = F.cross_entropy(la, ya, reduction="none")
            loss_b = F.cross_entropy(lb, yb, reduction="none")
            self.opt_a.zero_grad(set_to_none=True)
            self.opt_b.zero_grad(set_to_none=True)
            (loss_a.mean() + loss_b.mean()).backward()  # disjoint graphs: each net gets its own gradient
            stats = agreement_update(
                self.opt_a,
                self.opt_b,
                pa,
                pb,
                tau=options.tau,
                granularity=options.granularity,
                on=options.agreement_on,
                select=select,
            )
            if select is None:
                self.gate_sum += stats.gate
                self.gate_count += 1
            updated.append(stats.updated)
            gates.append(stats.gate)
            unit_gates.append(stats.unit_gate)
            cosines.append(stats.mean_cosine)
            acc.add(loss_a.detach(), la.detach(), ya)  # the log follows A
            if self.net_c is None:
                continue
            if options.joint_from == "eval":
                c_loss += self._c_step(xa) * len(ya)
                continue
            sa, sb = la.detach().softmax(-1), lb.detach().softmax(-1)  # (B, K) each
            if options.sampling == "identical":
                c_loss += self._c_step(xa, 0.5 * (sa + sb)) * len(ya)
            elif self.sampler.phase in (1, 3):  # first step of a cycle half: A on X^a, B on X^b
                held = (xa, sa, sb)
            elif held is not None:  # the reversed step: A on X^b, B on X^a
                x_first, sa_first, sb_first = held
                c_loss += self._c_step(x_first, 0.5 * (sa_first + sb)) * len(x_first)
                c_loss += self._c_step(xa, 0.5 * (sb_first + sa)) * len(xa)
                held = None
        for s in (self.sched_a, self.sched_b, self.sched_c):
            if s is not None:
                s.step()
        cols = {
            "agreement_ratio": updated,
            "gate_ratio": gates,
            "unit_gate_ratio": unit_gates,
            "mean_cosine": cosines,
        }
        steps = {k: torch.stack(v) for k, v in cols.items()} if updated else {}
        return acc.result(
            steps=steps,
            agreement_ratio=steps["agreement_ratio"].mean().item() if updated else float("nan"),
            c_loss=c_loss.item() / max(acc.seen, 1) if self.net_c is not None else float("nan"),
        )

    def _warmup_epoch(self, epoch: int) -> EpochResult:
        acc = Accumulator(self.ctx.device)
        self.theta.train()
        for idx in progress(self.ctx.batches(), self.ctx, f"gal warm-up e{epoch + 1}"):
            _, x, y = self.ctx.train_batch(idx)
            loss, logits = ce_step(self.theta, self.opt, x, y, self.ctx)
            acc.add(loss, logits, y)
        self.sched.step()
        nan = torch.full((len(acc.step_loss),), float("nan"), device=self.ctx.device)
        steps = dict.fromkeys(("agreement_ratio", "gate_ratio", "unit_gate_ratio", "mean_cosine"), nan)
        return acc.result(steps=steps, agreement_ratio=float("nan"), c_loss=float("nan"))

    def _random_select(
        self, gate: torch.Tensor, sizes: torch.Tensor, gate_ratio: torch.Tensor
    ) -> torch.Tensor:
        """`update: random`: each unit updated with probability = running mean gate ratio (this step
        included). gate (R,) bool, sizes (R,) -> mask (R,) bool."""
        self.gate_sum += gate_ratio
        self.gate_count += 1
        p = self.gate_sum / self.gate_count
        return torch.rand(gate.shape, generator=self.update_gen, device=gate.device) < p

    def _c_step(self, x: torch.Tensor, pj: torch.Tensor | None = None) -> torch.Tensor:
        """One θC step on images x (B,C,H,W): L_c + L_d against p_joint (B, K) of A and B, by default from
        eval-mode forwards of A and B on x. Returns the loss ()."""
        ctx = self.ctx
        if pj is None:
            self.net_a.eval()
            self.net_b.eval()
            try:
                with torch.no_grad(), ctx.amp:
                    pa, pb = ctx.parallel(self.net_a)(x).float(), ctx.parallel(self.net_b)(x).float()
                    pj = 0.5 * (pa.softmax(-1) + pb.softmax(-1))  # (B, K)
            finally:
                self.net_a.train()
                self.net_b.train()
        with ctx.amp:
            logp = F.log_softmax(ctx.parallel(self.net_c)(x).float(), -1)  # (B, K)
        conf, yhat = pj.max(-1)
        l_c = ((conf > self.options.epsilon).float() * F.nll_loss(logp, yhat, reduction="none")).mean()
        l_d = F.kl_div(logp, pj, reduction="batchmean")  # mean over the batch of KL(p_joint ‖ p_C)
        loss = l_c + l_d
        self.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_c.step()
        return loss.detach()

    # ------------------------------------------------------------------------------------------- outputs
    def predict(self, data: ImageData) -> torch.Tensor:
        if not self.cloned:
            return predict(self.theta, data, self.ctx)
        if self.net_c is not None:
            return predict(self.net_c, data, self.ctx)
        return 0.5 * (predict(self.net_a, data, self.ctx) + predict(self.net_b, data, self.ctx))

    def networks(self) -> list[torch.nn.Module]:
        """The networks behind `predict`: θ during the warm-up, then θC, or θA and θB without θC."""
        if not self.cloned:
            return [self.theta]
        return [self.net_c] if self.net_c is not None else [self.net_a, self.net_b]

    def export(self) -> MethodOutput:
        """θC's probabilities (A+B mean without θC, θ during warm-up) and the joint A/B columns."""
        train = self.ctx.train
        if self.cloned:
            p_a, p_b = predict(self.net_a, train, self.ctx), predict(self.net_b, train, self.ctx)
            joint = 0.5 * (p_a + p_b)
            disagree = p_a.argmax(-1) != p_b.argmax(-1)
        else:
            joint = predict(self.theta, train, self.ctx)
            disagree = torch.zeros(len(train), dtype=torch.bool, device=joint.device)
        conf, pseudo = joint.max(-1)
        return MethodOutput(
            self.predict(train),
            extra={
                "joint_pseudo_label": pseudo.cpu().numpy().astype(np.int32),
                "joint_confidence": conf.float().cpu().numpy().astype(np.float32),
                "ab_disagree": disagree.cpu().numpy().astype(bool),
            },
        )

    # --------------------------------------------------------------------------------------------- state
    def _twins(self) -> tuple[list[nn.Module], list, list]:
        """After the clone: θA, θB (and θC) with their optimisers and schedulers."""
        nets, opts, scheds = [self.net_a, self.net_b], [self.opt_a, self.opt_b], [self.sched_a, self.sched_b]
        if self.net_c is not None:
            nets, opts, scheds = nets + [self.net_c], opts + [self.opt_c], scheds + [self.sched_c]
        return nets, opts, scheds

    def state_dict(self) -> dict[str, Any]:
        return {
            "cloned": self.cloned,
            "theta": nets_state([self.theta], [self.opt], [self.sched]),
            "c": None
            if self.net_c is None
            else self.net_c.state_dict(),  # θC's weights before it has an optimiser
            "twins": nets_state(*self._twins()) if self.cloned else None,
            "sampler": self.sampler.state_dict(),
            "gate_sum": self.gate_sum,
            "gate_count": self.gate_count,
            "update_gen": self.update_gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_nets_state(state["theta"], [self.theta], [self.opt], [self.sched])
        if self.net_c is not None:
            self.net_c.load_state_dict(state["c"])
        if state["cloned"]:
            self._clone()
            load_nets_state(state["twins"], *self._twins())
        self.sampler.load_state_dict(state["sampler"])
        self.gate_sum = state["gate_sum"].to(self.ctx.device)
        self.gate_count = int(state["gate_count"])
        self.update_gen.set_state(state["update_gen"])


COLUMNS = (
    Column("joint_pseudo_label", pa.int32(), is_label=True, description="GAL: argmax of p_A + p_B."),
    Column(
        "joint_confidence",
        pa.float32(),
        min_value=0.0,
        max_value=1.0,
        direction="higher = θA and θB more confident in joint_pseudo_label",
        description="GAL: max of ½(p_A + p_B).",
    ),
    Column("ab_disagree", pa.bool_(), description="GAL: θA and θB predict different classes."),
)
"""The score columns this method adds to SCORES (pipeline.schemas.Column)."""


def report_section(r, name: str) -> str:
    """The report's gate figure (`pipeline.figures.ReportInputs` -> HTML): the share of parameters GAL
    updated, per epoch."""
    from pipeline.figures import curves

    log = r.logs[name]
    if "agreement_ratio" not in log.columns:
        return ""
    opts = GALOptions.model_validate(r.params.method.get(name) or {})
    return (
        "<h2>GAL: the agreement gate</h2>"
        f"<p>Share of parameters updated per epoch: a pair of gradients moves a parameter only where their "
        f"cosine is at least τ = {opts.tau:g} (granularity {opts.granularity}); NaN in the "
        f"{opts.warmup_epochs}-epoch warm-up.</p>"
        + curves({name: log}, None, "agreement_ratio", "GAL: share of parameters updated (gate)")
    )


PLOTS = (
    log_plot(
        "GAL agreement ratio per step (share of parameters updated)",
        "logs/steps/gal.csv",
        "agreement_ratio",
        x="step",
    ),
)


SPEC = register(
    MethodSpec(
        "gal",
        GALOptions,
        GAL,
        "GAL: gradient-agreement updates of θA/θB, θC on their pseudo-labels",
        columns=COLUMNS,
        report_section=report_section,
        plots=PLOTS,
    )
)
