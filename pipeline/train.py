"""Shared training pieces as plain functions: device, optimiser, schedule, steps, prediction, checkpoints,
and the epoch driver `fit` that every method runs under."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pipeline.config import TrainParams
from pipeline.data.tensors import ImageData, Normalizer, augment, batch_indices, to_device
from pipeline.distributed import Dist, ShardedForward, wrap_ddp
from pipeline.errors import ConfigError
from pipeline.models import FeaturesAndLogits, build_model, resolve_pretrained


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; anything else is passed to torch.device after a check."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device '{name}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: '{name}' requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"train.device: '{name}' requested but Apple's MPS is not available on this machine"
        )
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(
            f"train.device: '{name}' is not a device gradclean trains on (auto, cpu, cuda[:N], mps)"
        )
    return dev


@dataclass
class TrainContext:
    """Everything a method needs to train, passed explicitly (no global state).

    Attributes:
        train: training split (labels = given labels).
        test: test split (labels = truth).
        cfg: shared training params.
        num_classes: K.
        in_chans: image channels.
        device: torch device.
        seed: run seed; methods derive model seeds from it.
        gen: CPU generator for shuffling and augmentation; saved in checkpoints.
        normalize: batch preprocessing (resize to `cfg.image_size`, normalise): statistics fitted on the
            training images, or the pretrained weights' own (`cfg.pretrained`).
        noise_rate: estimated noise rate from the noise stage (None when not estimated); what
            `forget_rate: auto` resolves to. Never the injected truth.
        oof_probs: (N, K) out-of-fold probabilities from noise estimation, None when not computed.
        dist: this process's rank and the world size (`pipeline.distributed`); one process by default.
    """

    train: ImageData
    test: ImageData
    cfg: TrainParams
    num_classes: int
    in_chans: int
    device: torch.device
    seed: int
    gen: torch.Generator = field(default_factory=torch.Generator)
    normalize: Normalizer | None = None
    noise_rate: float | None = None
    oof_probs: torch.Tensor | None = None
    dist: Dist = field(default_factory=Dist)
    _runners: dict[tuple[nn.Module, bool], Callable] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.gen.manual_seed(self.seed)
        if self.normalize is None:
            size = self.cfg.image_size if self.cfg.stored_size != self.cfg.image_size else None
            pre = None
            if self.cfg.pretrained is not False:
                pre = resolve_pretrained(self.cfg.backbone, self.cfg.pretrained, "train.pretrained")
            self.normalize = (
                Normalizer.fit(self.train.images, size)
                if pre is None
                else Normalizer.from_stats(pre.mean, pre.std, self.in_chans, self.device, size)
            )

    def parallel(self, net: nn.Module, *, features: bool = False) -> Callable:
        """The callable every batch forward of `net` goes through: images (B, C, H, W) -> logits (B, K),
        or (penultimate features (B, D), logits (B, K)) with `features`.

        In one process without `train.compile` it simply calls `net`. Under torchrun it runs a DDP wrapper of
        `net` on this rank's shard of the rows and gathers the whole batch's outputs (`ShardedForward`);
        with `train.compile` the network (or its DDP wrapper) is `torch.compile`d. Built once per network
        and kept; `net` stays the unwrapped module, so its state_dict keys never change.
        """
        key = (net, features)  # modules hash by identity
        if key not in self._runners:
            module = net
            if features:
                module = FeaturesAndLogits(net)
            if self.dist.active:
                module = wrap_ddp(module, self.dist, self.device, self.cfg.sync_bn)
            if self.cfg.compile:
                module = torch.compile(module)
            self._runners[key] = ShardedForward(module, self.dist)
        return self._runners[key]

    @property
    def amp(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when enabled, a no-op elsewhere."""
        if self.device.type == "cuda" and self.cfg.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batches(self, subset: torch.Tensor | None = None) -> Iterable[torch.Tensor]:
        """Shuffled index batches over the training set (or over the row indices `subset`), from `gen`."""
        if subset is None:
            return batch_indices(len(self.train), self.cfg.batch_size, self.gen)
        subset = subset.cpu()
        return (subset[b] for b in batch_indices(len(subset), self.cfg.batch_size, self.gen))

    def train_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(idx, augmented normalised images (B,C,H,W), given labels (B,)) for one batch of indices."""
        idx = to_device(idx, self.device)
        x = augment(self.train.images[idx], self.cfg.augment, self.gen)
        x = self.normalize(x)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return idx, x, self.train.labels[idx]


def build_nets(ctx: TrainContext, count: int, first_seed: int | None = None) -> list[nn.Module]:
    """`count` fresh backbones on `ctx.device` (channels_last on CUDA), seeded first_seed, first_seed + 1, …

    `first_seed` defaults to `ctx.seed`.
    """
    seed = ctx.seed if first_seed is None else first_seed
    nets = [build_model(ctx.cfg, ctx.num_classes, ctx.in_chans, seed + i) for i in range(count)]
    nets = [n.to(ctx.device) for n in nets]
    if ctx.device.type == "cuda":
        nets = [n.to(memory_format=torch.channels_last) for n in nets]
    return nets


def load_states(objs: Iterable[Any], states: Iterable[dict[str, Any]]) -> None:
    """`obj.load_state_dict(state)` pairwise (networks, optimisers, schedulers); lengths must match."""
    for obj, state in zip(objs, states, strict=True):
        obj.load_state_dict(state)


def nets_state(nets: list[nn.Module], opts: list, scheds: list) -> dict[str, Any]:
    """State of several networks with their own optimisers and schedulers: keys nets, opts, scheds."""
    return {
        "nets": [n.state_dict() for n in nets],
        "opts": [o.state_dict() for o in opts],
        "scheds": [s.state_dict() for s in scheds],
    }


def load_nets_state(state: dict[str, Any], nets: list[nn.Module], opts: list, scheds: list) -> None:
    """Restore `nets_state` output."""
    load_states(nets, state["nets"])
    load_states(opts, state["opts"])
    load_states(scheds, state["scheds"])


def param_groups(nets: nn.Module | list[nn.Module], cfg: TrainParams) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: one group, or with `backbone_lr_scale` / `freeze_backbone_epochs`
    set, the classifiers (timm's `get_classifier()`) first and the backbones second.

    Each group carries `lr_scale` (its lr relative to `train.lr`) and `frozen_epochs` (epochs at lr 0),
    which `make_scheduler` reads.
    """
    nets = [nets] if isinstance(nets, nn.Module) else list(nets)
    params = [p for n in nets for p in n.parameters()]
    if cfg.backbone_lr_scale == 1.0 and cfg.freeze_backbone_epochs == 0:
        return [{"params": params, "lr_scale": 1.0, "frozen_epochs": 0}]
    head_ids = set()
    for n in nets:
        head = n.get_classifier() if hasattr(n, "get_classifier") else None
        if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
            raise ConfigError(
                "train.backbone_lr_scale / freeze_backbone_epochs: the backbone has no classifier module "
                "(timm's get_classifier()) to tell head from backbone"
            )
        head_ids |= {id(p) for p in head.parameters()}
    return [
        {"params": [p for p in params if id(p) in head_ids], "lr_scale": 1.0, "frozen_epochs": 0},
        {
            "params": [p for p in params if id(p) not in head_ids],
            "lr_scale": cfg.backbone_lr_scale,
            "frozen_epochs": cfg.freeze_backbone_epochs,
        },
    ]


def make_optimizer(nets: nn.Module | list[nn.Module], cfg: TrainParams) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay), Adam or AdamW from the shared params over the networks' parameters
    (`param_groups`: the backbone at `lr * backbone_lr_scale`)."""
    groups = [{**g, "lr": cfg.lr * g["lr_scale"]} for g in param_groups(nets, cfg)]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(epoch: float, cfg: TrainParams, total_epochs: int | None = None) -> float:
    """Learning-rate multiplier at a (fractional) epoch: linear warm-up then constant/step/cosine."""
    total = total_epochs or cfg.epochs
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / (cfg.warmup_epochs + 1)
    if cfg.schedule == "step":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        span = max(total - cfg.warmup_epochs, 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    return 1.0


def scheduled_lr(epoch: int, cfg: TrainParams) -> float:
    """The learning rate every method's schedule gives at `epoch` (0-based), for the log: `train.lr` times
    `lr_factor` (the classifier's rate; a pretrained backbone's is × `backbone_lr_scale`, 0 while frozen)."""
    return cfg.lr * lr_factor(epoch, cfg)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainParams, total_epochs: int | None = None):
    """Per-epoch LambdaLR over `lr_factor` (call `.step()` once per epoch); a group's `frozen_epochs` first
    epochs run at lr 0 (the backbone while only the head trains)."""

    def group_factor(frozen: int):
        return lambda e: 0.0 if e < frozen else lr_factor(e, cfg, total_epochs)

    return torch.optim.lr_scheduler.LambdaLR(
        opt, [group_factor(g.get("frozen_epochs", 0)) for g in opt.param_groups]
    )


@torch.no_grad()
def predict(
    model: nn.Module, data: ImageData, ctx: TrainContext, batch_size: int | None = None
) -> torch.Tensor:
    """Softmax probabilities (N, K) float32 of `model` in eval mode, no augmentation, on `ctx.device`."""
    was = model.training
    model.eval()
    out = []
    run = ctx.parallel(model)
    for i in range(0, len(data), batch_size or ctx.cfg.eval_batch_size):
        x = ctx.normalize(data.images[i : i + (batch_size or ctx.cfg.eval_batch_size)])
        with ctx.amp:
            out.append(run(x).float().softmax(-1))
    model.train(was)
    return torch.cat(out) if out else torch.empty(0, ctx.num_classes, device=ctx.device)


def predict_mean(nets: list[nn.Module], data: ImageData, ctx: TrainContext) -> torch.Tensor:
    """Mean of several networks' softmax probabilities (N, K) — the ensemble a co-training method reports."""
    return torch.stack([predict(n, data, ctx) for n in nets]).mean(0)


def ce_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """One plain cross-entropy step. Returns (per-sample loss (B,), logits (B,K)), both detached."""
    with ctx.amp:
        logits = ctx.parallel(model)(x)
        loss = F.cross_entropy(logits.float(), y, reduction="none")
    opt.zero_grad(set_to_none=True)
    loss.mean().backward()
    opt.step()
    return loss.detach(), logits.detach()


@dataclass
class EpochResult:
    """What a method reports for one epoch (tensors stay on device until the driver logs them).

    Attributes:
        loss_sum: summed training loss over the samples it was taken on.
        correct: training predictions equal to the given label.
        seen: samples seen.
        kept: (N,) bool mask of samples the method trained on this epoch, None = all.
        extra: further per-epoch figures for the log (floats).
        loss_count: how many per-sample losses `loss_sum` adds up (None = `seen`); the log's train_loss
            is loss_sum / loss_count, the mean loss of the samples trained on.
        steps: per-step columns for the step log, each (S,) over the epoch's S steps (device tensors;
            `Accumulator` fills `loss`, methods may add e.g. GAL's `agreement_ratio`).
    """

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int
    kept: torch.Tensor | None = None
    extra: dict[str, float] = field(default_factory=dict)
    loss_count: int | None = None
    steps: dict[str, torch.Tensor] = field(default_factory=dict)


class Accumulator:
    """Sums loss and accuracy on device and keeps each step's mean loss; no host sync inside the loop."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0
        self.loss_count = 0
        self.step_loss: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """loss: (M,) per-sample losses actually trained on (M ≤ B, e.g. a small-loss pick);
        logits (B, K) and y (B,) of the whole batch for the accuracy."""
        total = loss.detach().float().sum()
        self.loss += total
        self.loss_count += loss.numel()
        self.step_loss.append(total / max(loss.numel(), 1))
        self.correct += (logits.detach().argmax(-1) == y).sum()
        self.seen += len(y)

    def result(
        self, kept: torch.Tensor | None = None, steps: dict[str, torch.Tensor] | None = None, **extra: float
    ) -> EpochResult:
        """The epoch's figures; `steps` adds per-step columns (S,) beside the per-step `loss`."""
        cols = {"loss": torch.stack(self.step_loss)} if self.step_loss else {}
        cols.update(steps or {})
        return EpochResult(self.loss, self.correct, self.seen, kept, dict(extra), self.loss_count, cols)


# ------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temp file, then atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """Load a checkpoint with weights_only=True; None when absent."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


# -------------------------------------------------------------------------------------------- driver
@dataclass
class FitResult:
    """Epoch log rows, step log rows and total training seconds.

    Attributes:
        log: one row per epoch (see `fit`).
        seconds: training time, evaluation excluded.
        steps: one row per optimiser step: step (0-based, over the run), epoch (1-based), loss (mean
            training loss of the step's samples) and the method's per-step columns.
    """

    log: list[dict[str, float]]
    seconds: float
    steps: list[dict[str, float]] = field(default_factory=list)


def fit(
    method: Any,
    ctx: TrainContext,
    *,
    name: str,
    epochs: int,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    resume: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Run `method.train_epoch` for `epochs`, evaluating, logging and checkpointing after each.

    The log row per epoch holds: epoch, train_loss, train_acc (vs given labels), test_acc, kept_fraction,
    label_precision (share of kept samples whose given label is correct; NaN when truth unknown),
    lr, seconds (cumulative training time), plus the method's extra figures. The step log holds one row
    per step (see `FitResult.steps`); both are saved in the checkpoint and restored on resume. Under
    torchrun every rank runs this loop in step; rank 0 alone prints and writes the checkpoint.

    Args:
        method: an object satisfying `pipeline.methods.Method`.
        ctx: training context.
        name: method name for progress output.
        epochs: number of epochs.
        checkpoint: file to write after each epoch (None = no checkpoints).
        fingerprint: identifies the params; a checkpoint with another fingerprint is ignored.
        resume: continue from `checkpoint` when it exists and matches.
        on_epoch: optional callback receiving each log row.
    """
    log: list[dict[str, float]] = []
    steps: list[dict[str, float]] = []
    start, elapsed = 0, 0.0
    say = tqdm.write if ctx.dist.is_main else (lambda _msg: None)
    rng_cm = torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else [])
    with rng_cm:
        torch.manual_seed(ctx.seed)
        if resume and checkpoint is not None:
            st = load_checkpoint(checkpoint)
            if st is not None and st.get("fingerprint") == fingerprint:
                method.load_state_dict(st["method"])
                ctx.gen.set_state(st["gen"])
                torch.set_rng_state(st["torch_rng"])
                log, start, elapsed = list(st["log"]), int(st["epoch"]), float(st["seconds"])
                steps = list(st.get("steps", []))
                say(f"[{name}] resumed from {checkpoint} after epoch {start}")
            elif st is not None:
                say(f"[{name}] ignoring {checkpoint}: it was written with other params")
        truth = ctx.train.true_labels
        clean = None if truth is None else (truth == ctx.train.labels)
        wrote = False  # whether this run has written `checkpoint` (removed again if the loss blows up)
        for epoch in range(start, epochs):
            lr = scheduled_lr(epoch, ctx.cfg)
            t0 = time.perf_counter()
            res: EpochResult = method.train_epoch(epoch)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            elapsed += time.perf_counter() - t0
            _check_finite(name, res, epoch, len(steps), lr, checkpoint if wrote else None)
            test_probs = method.predict(ctx.test)
            test_acc = (test_probs.argmax(-1) == ctx.test.labels).float().mean().item()
            kept = res.kept
            kept_frac = 1.0 if kept is None else kept.float().mean().item()
            if clean is None:
                precision = float("nan")
            else:
                k = torch.ones_like(clean) if kept is None else kept
                precision = (clean & k).sum().item() / max(int(k.sum().item()), 1)
            row = {
                "epoch": epoch + 1,
                "train_loss": res.loss_sum.item() / max(res.loss_count or res.seen, 1),
                "train_acc": res.correct.item() / max(res.seen, 1),
                "test_acc": test_acc,
                "kept_fraction": kept_frac,
                "label_precision": precision,
                "lr": lr,
                "seconds": elapsed,
                **res.extra,
            }
            log.append(row)
            steps += step_rows(res.steps, epoch + 1, len(steps))
            say(
                f"[{name}] epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.4f}  train_acc "
                f"{row['train_acc']:.3f}  test_acc {test_acc:.3f}  kept {kept_frac:.2f}  label_prec "
                f"{precision:.3f}  {elapsed:.1f}s"
            )
            if on_epoch:
                on_epoch(row)
            if checkpoint is not None and ctx.dist.is_main:
                save_checkpoint(
                    checkpoint,
                    {
                        "fingerprint": fingerprint,
                        "epoch": epoch + 1,
                        "seconds": elapsed,
                        "log": log,
                        "steps": steps,
                        "method": method.state_dict(),
                        "gen": ctx.gen.get_state(),
                        "torch_rng": torch.get_rng_state(),
                    },
                )
                wrote = start == 0  # a resumed run's checkpoint was there before it
    return FitResult(log, elapsed, steps)


def _check_finite(
    name: str, res: EpochResult, epoch: int, first_step: int, lr: float, written: Path | None
) -> None:
    """Refuse an epoch whose loss is not finite, naming the first bad step and the settings that cause it;
    `written` (a checkpoint this run created, not one it resumed from or replaces) is removed so the
    failing stage leaves nothing behind."""
    losses = res.steps.get("loss")
    bad = None
    if losses is not None and losses.numel():
        finite = torch.isfinite(losses.detach().float())
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0, 0])
    elif not bool(torch.isfinite(res.loss_sum.detach().float()).all()):
        bad = 0
    if bad is None:
        return
    if written is not None and Path(written).is_file():
        Path(written).unlink()
    raise ConfigError(
        f"train@{name}: the training loss is not finite at epoch {epoch + 1}, step {first_step + bad} "
        f"(learning rate {lr:g}); check train.lr (and the method's options), train.optimizer and the "
        "input data"
    )


def step_rows(cols: dict[str, torch.Tensor], epoch: int, first_step: int) -> list[dict[str, float]]:
    """Per-step columns (each (S,)) of one epoch -> S rows {step, epoch, **cols} (one host sync)."""
    if not cols:
        return []
    names = list(cols)
    values = torch.stack([cols[n].detach().float().reshape(-1).cpu() for n in names], 1).tolist()
    return [
        {"step": first_step + i, "epoch": epoch, **dict(zip(names, v, strict=True))}
        for i, v in enumerate(values)
    ]


def progress(it: Iterable, ctx: TrainContext, desc: str, total: int | None = None) -> Iterable:
    """tqdm over `it` when `train.progress` is on (rank 0 only under torchrun)."""
    off = not ctx.cfg.progress or not ctx.dist.is_main
    return tqdm(it, desc=desc, total=total, leave=False, disable=off, mininterval=0.5)
