"""GSS: Gradient Switching Strategy (Yu et al., "How to Prevent the Continuous Damage of Noises to Model
Training?", CVPR 2024; how it is read: docs/methods.md).

Every sample n owns a direction pool D_n ∈ R^K (one per network for the dual branch), initialised to
one-hot(ỹ_n) and held on the training device as one (P, N, K) tensor. Every iteration the training label
is drawn ŷ ~ Categorical(D_n / ΣD_n) for the whole batch with one `torch.multinomial` call
(`sample_pools`), and the loss is CE(f(x), ŷ): the gradient direction is switched, not the sample dropped.
After epoch e of E (0-based), `update_pools` adds

    v_or = p_ỹ (1 − e/E) on ỹ,   v_pr = p_ỹ λ1 e/E on argmax p,   v_rd = λ2 e/E spread as 1/K on every class

(Eq. 6-9; p_ỹ weights v_pr as the paper writes it). Variants (`variant:`):

* `sb` (single branch): one network, its own predictions update its pool. λ1 = 2.0, λ2 = 1.0.
* `db` (dual branch): two networks, two pools; each network draws from its own pool, and each pool is
  updated with the *peer's* p (both p_ỹ and argmax), so one network's mistake does not feed its own pool.
* `ssl`: GSS inside DivideMix (`pipeline.methods.dividemix`). Per network, a labeled-set pool
  (λ1 0.1, λ2 0.0) and an unlabeled-set pool (λ1 0.2, λ2 0.5). Our reading, the paper's supplement being
  unavailable: in the label co-refinement w·onehot(ŷ) + (1−w)·p̄ the labeled sample's ŷ is drawn from the
  labeled-set pool instead of being ỹ; the unlabeled target becomes w·onehot(ŷ_u) + (1−w)·guess before
  sharpening, ŷ_u drawn from the unlabeled-set pool and w the sample's GMM clean probability (small for
  unlabeled samples, so the co-guess still dominates). Both pools of every sample are updated at the start
  of each post-warm-up epoch from the peer's eval-mode predictions that DivideMix computes anyway for its
  GMM (so the update costs nothing extra), with e the epoch just finished. The CE warm-up uses ỹ.

Where p comes from (`pool_probs`, sb/db): `eval` (default) runs one eval-mode, no-augmentation pass over
the training set after each epoch, as docs/methods.md reads the paper; `train` instead records each sample's
softmax from its own training forward pass of the epoch (detached, no extra pass). On the 2-core CPU the
eval pass (batch 512, no autograd) costs under 5% of an epoch, so both keep GSS-SB at CE's cost.

Exports: the normalised pools (`direction_pool`, plus `direction_pool_peer` for two networks; for SSL the
pool in use for each sample), `pool_entropy` (/ log K, in [0, 1]) and noise_score = 1 − the pools' mean
mass on ỹ.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.config import Strict
from pipeline.data.tensors import ImageData
from pipeline.methods.base import MethodOutput, MethodSpec, log_plot, register
from pipeline.methods.dividemix import COLUMNS as DIVIDEMIX_COLUMNS
from pipeline.methods.dividemix import (
    DivideMixOptions,
    codivide_epoch,
    divide_both,
    rampup,
    warmup_epoch,
)
from pipeline.schemas import Column
from pipeline.train import (
    Accumulator,
    EpochResult,
    TrainContext,
    build_nets,
    load_nets_state,
    make_optimizer,
    make_scheduler,
    nets_state,
    predict,
    predict_mean,
    progress,
)


class GSSOptions(Strict):
    """`method.gss:` options. λ defaults are the paper's per variant."""

    variant: Literal["sb", "db", "ssl"] = "sb"  # single branch | dual branch | inside DivideMix
    lambda1: float = Field(2.0, ge=0.0)  # sb/db: weight of the predicted label (v_pr)
    lambda2: float = Field(1.0, ge=0.0)  # sb/db: weight of the uniform label (v_rd)
    labeled_lambda1: float = Field(0.1, ge=0.0)  # ssl: labeled-set pool
    labeled_lambda2: float = Field(0.0, ge=0.0)
    unlabeled_lambda1: float = Field(0.2, ge=0.0)  # ssl: unlabeled-set pool
    unlabeled_lambda2: float = Field(0.5, ge=0.0)
    # sb/db: p from an eval pass after the epoch, or from the epoch's own training passes
    pool_probs: Literal["eval", "train"] = "eval"
    history: bool = False  # keep every epoch's pools -> the train stage's pool-history table (N·E rows)
    dividemix: DivideMixOptions = Field(default_factory=DivideMixOptions)  # ssl: the DivideMix around GSS

    def warmups(self) -> dict[str, int]:
        """Warm-up lengths the params check against train.epochs (only ssl has one)."""
        return {"dividemix.warmup_epochs": self.dividemix.warmup_epochs} if self.variant == "ssl" else {}


# ---------------------------------------------------------------------------------------- pure pieces
def init_pools(labels: torch.Tensor, num_classes: int, count: int = 1) -> torch.Tensor:
    """(count, N, K) float32 pools, each row one-hot on the given label."""
    return F.one_hot(labels, num_classes).float().unsqueeze(0).repeat(count, 1, 1)


def sample_pools(pools: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """One label per pool row, ŷ ~ Categorical(D / ΣD), in a single batched multinomial draw.

    Args:
        pools: (..., K) non-negative pool rows with positive sums (e.g. (P, B, K) for P networks).
        gen: generator on the pools' device.

    Returns:
        (...) int64 labels.
    """
    if pools.ndim < 1 or pools.shape[-1] < 1:
        raise ValueError(f"pools must have a class dimension, got shape {tuple(pools.shape)}")
    flat = pools.reshape(-1, pools.shape[-1])
    return torch.multinomial(flat, 1, generator=gen).reshape(pools.shape[:-1])


def pool_weights(
    p_given: torch.Tensor, epoch: int, epochs: int, lambda1: float, lambda2: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The paper's update weights after epoch `epoch` (0-based) of `epochs`.

    Args:
        p_given: (N,) predicted probability of each sample's given label.

    Returns:
        (v_or (N,) = p_ỹ(1 − e/E), v_pr (N,) = p_ỹ·λ1·e/E, v_rd = λ2·e/E).
    """
    if epochs < 1 or not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in [0, {epochs}), got {epoch}")
    t = epoch / epochs
    return p_given * (1.0 - t), p_given * (lambda1 * t), lambda2 * t


def update_pools(
    pools: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    epoch: int,
    epochs: int,
    lambda1: float,
    lambda2: float,
) -> torch.Tensor:
    """D ← D + onehot(ỹ)·v_or + onehot(argmax p)·v_pr + (1/K)·v_rd, for every pool row at once.

    Args:
        pools: (..., N, K) pools (e.g. (P, N, K)).
        labels: (N,) given labels ỹ.
        probs: (..., N, K) the probabilities that update each pool (the peer's for the dual branch).
        epoch, epochs: e (0-based) and E.

    Returns:
        The updated pools, a new tensor of the same shape.
    """
    if probs.shape != pools.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and pools {tuple(pools.shape)} must match")
    k = pools.shape[-1]
    y = labels.expand(probs.shape[:-1])[..., None]
    v_or, v_pr, v_rd = pool_weights(probs.gather(-1, y)[..., 0], epoch, epochs, lambda1, lambda2)
    out = pools.clone()
    out.scatter_add_(-1, y, v_or[..., None])
    out.scatter_add_(-1, probs.argmax(-1, keepdim=True), v_pr[..., None])
    return out.add_(v_rd / k)


def normalise(pools: torch.Tensor) -> torch.Tensor:
    """Pools as distributions: D / ΣD over the last dimension."""
    return pools / pools.sum(-1, keepdim=True)


def pool_entropy(pools: torch.Tensor) -> torch.Tensor:
    """(..., K) pools -> (...) entropy of D / ΣD divided by log K, in [0, 1] (1 = uniform)."""
    q = normalise(pools)
    h = -(q * q.clamp_min(1e-12).log()).sum(-1)
    return h / float(np.log(max(pools.shape[-1], 2)))


def pool_mass_summary(
    pool: torch.Tensor, given: torch.Tensor, pred: torch.Tensor, truth: torch.Tensor | None
) -> dict[str, float]:
    """Mean pool mass on the given label, on the predicted label (when it differs from the given one) and
    on the other classes, for clean and mislabeled samples; plus the mass on the true label of mislabeled
    ones. The report's "pool evolution" figure (the paper's Figure 2 idea). Empty without the truth.

    Args:
        pool: (N, K) pools; given, pred: (N,) labels; truth: (N,) or None.
    """
    if truth is None:
        return {}
    q = normalise(pool)
    on_given = q.gather(1, given[:, None])[:, 0]
    on_pred = torch.where(pred != given, q.gather(1, pred[:, None])[:, 0], torch.zeros_like(on_given))
    on_true = q.gather(1, truth[:, None])[:, 0]
    noisy = truth != given
    out = {}
    for name, mask in (("clean", ~noisy), ("noisy", noisy)):
        n = int(mask.sum())
        for part, v in (("given", on_given), ("pred", on_pred), ("other", 1.0 - on_given - on_pred)):
            out[f"pool_{part}_{name}"] = float(v[mask].mean()) if n else float("nan")
    out["pool_true_noisy"] = float(on_true[noisy].mean()) if bool(noisy.any()) else float("nan")
    return out


# ------------------------------------------------------------------------------------------------ method
class GSS:
    """GSS-SB / GSS-DB / GSS-SSL (see the module docstring)."""

    def __init__(self, opts: GSSOptions, ctx: TrainContext) -> None:
        self.ctx, self.options = ctx, opts
        n = 1 if opts.variant == "sb" else 2
        self.nets = build_nets(ctx, n)
        self.optimizers = [make_optimizer(net, ctx.cfg) for net in self.nets]
        self.schedulers = [make_scheduler(opt, ctx.cfg) for opt in self.optimizers]
        labels = ctx.train.labels
        # sb/db: (P, N, K) pools; ssl: (2, N, K) labeled-set pools + (2, N, K) unlabeled-set pools
        self.pools = init_pools(labels, ctx.num_classes, n)
        self.upools = init_pools(labels, ctx.num_classes, n) if opts.variant == "ssl" else None
        self.seen = torch.full((n, len(labels), ctx.num_classes), 1.0 / ctx.num_classes, device=ctx.device)
        self.labeled = torch.ones(n, len(labels), dtype=torch.bool, device=ctx.device)  # ssl: per network
        self.gen = torch.Generator(device=ctx.device)
        self.gen.manual_seed(ctx.seed + 11)
        self.history: list[tuple[int, torch.Tensor]] = []

    # ------------------------------------------------------------------------------------------- training
    def train_epoch(self, epoch: int) -> EpochResult:
        res = self._ssl_epoch(epoch) if self.options.variant == "ssl" else self._branch_epoch(epoch)
        for s in self.schedulers:
            s.step()
        if self.options.history:
            self.history.append((epoch + 1, normalise(self.active_pools()).half().cpu()))
        return res

    def _branch_epoch(self, epoch: int) -> EpochResult:
        """SB / DB: draw labels from the pools every step, then update the pools after the epoch."""
        ctx, options = self.ctx, self.options
        acc, switched = Accumulator(ctx.device), []
        for net in self.nets:
            net.train()
        for idx in progress(ctx.batches(), ctx, f"gss-{options.variant} e{epoch + 1}"):
            idx, x, y = ctx.train_batch(idx)
            draws = sample_pools(self.pools[:, idx], self.gen)  # (P, B): one multinomial for all networks
            for j, (net, opt) in enumerate(zip(self.nets, self.optimizers, strict=True)):
                with ctx.amp:
                    logits = ctx.parallel(net)(x).float()
                loss = F.cross_entropy(logits, draws[j], reduction="none")
                opt.zero_grad(set_to_none=True)
                loss.mean().backward()
                opt.step()
                if options.pool_probs == "train":
                    self.seen[j, idx] = logits.detach().softmax(-1)
                if j == 0:
                    acc.add(loss, logits, y)
            switched.append((draws != y).float().mean())
        probs = (
            self.seen
            if options.pool_probs == "train"
            else torch.stack([predict(n, ctx.train, ctx) for n in self.nets])
        )
        source = probs if options.variant == "sb" else probs.flip(0)  # DB: each pool learns from its peer
        self.pools = update_pools(
            self.pools, ctx.train.labels, source, epoch, ctx.cfg.epochs, options.lambda1, options.lambda2
        )
        extra = pool_mass_summary(self.pools[0], ctx.train.labels, probs[0].argmax(-1), ctx.train.true_labels)
        return acc.result(
            steps={"switched": torch.stack(switched)},
            switched=float(torch.stack(switched).mean()),
            pool_entropy=float(pool_entropy(self.pools).mean()),
            **extra,
        )

    def _ssl_epoch(self, epoch: int) -> EpochResult:
        """GSS-SSL: DivideMix with labels drawn from the pools (see the module docstring)."""
        ctx, options, dm = self.ctx, self.options, self.options.dividemix
        if epoch < dm.warmup_epochs:
            return warmup_epoch(self.nets, self.optimizers, ctx, f"gss-ssl warm-up e{epoch + 1}")
        probs: list[torch.Tensor] = []
        divisions, gmm_s = divide_both(self.nets, ctx, dm, probs)
        peer = torch.stack(probs).flip(0)  # pool j learns from network 1 − j
        if epoch > 0:  # the update "after epoch e − 1", with the predictions of the networks it left
            labels, epochs = ctx.train.labels, ctx.cfg.epochs
            self.pools = update_pools(
                self.pools, labels, peer, epoch - 1, epochs, options.labeled_lambda1, options.labeled_lambda2
            )
            self.upools = update_pools(
                self.upools,
                labels,
                peer,
                epoch - 1,
                epochs,
                options.unlabeled_lambda1,
                options.unlabeled_lambda2,
            )
        label_x = [self._drawer(self.pools, j) for j in range(2)]
        hint_u = [self._drawer(self.upools, j) for j in range(2)]
        acc, lu = codivide_epoch(
            self.nets,
            self.optimizers,
            ctx,
            dm,
            epoch,
            divisions,
            f"gss-ssl e{epoch + 1}",
            label_x=label_x,
            hint_u=hint_u,
        )
        self.labeled = torch.stack([divisions[1].labeled, divisions[0].labeled])  # network j's labeled set
        active = self.active_pools()
        extra = pool_mass_summary(active[0], ctx.train.labels, probs[0].argmax(-1), ctx.train.true_labels)
        return acc.result(
            divisions[0].labeled | divisions[1].labeled,
            labeled_fraction=0.5
            * float(divisions[0].labeled.float().mean() + divisions[1].labeled.float().mean()),
            lambda_u=dm.lambda_u * rampup(epoch + 1, dm.warmup_epochs, dm.rampup_epochs),
            loss_u=float(lu),
            gmm_seconds=gmm_s,
            pool_entropy=float(pool_entropy(active).mean()),
            **extra,
        )

    def active_pools(self) -> torch.Tensor:
        """(P, N, K) the pool each network draws from for each sample: sb/db its only pool; ssl the
        labeled-set pool where the peer's last division labels the sample, else the unlabeled-set pool."""
        if self.upools is None:
            return self.pools
        return torch.where(self.labeled[..., None], self.pools, self.upools)

    def _drawer(self, pools: torch.Tensor, j: int):
        """rows (B,) -> labels (B,) drawn from network j's pools (one multinomial per call)."""
        return lambda idx: sample_pools(pools[j, idx], self.gen)

    # ------------------------------------------------------------------------------------------- outputs
    def predict(self, data: ImageData) -> torch.Tensor:
        return predict_mean(self.nets, data, self.ctx)

    def networks(self) -> list[torch.nn.Module]:
        return self.nets

    def export(self) -> MethodOutput:
        """Mean probabilities of the networks; pools, their entropy, noise = 1 − mean pool mass on ỹ."""
        ctx = self.ctx
        if self.options.variant == "ssl":
            divisions, _ = divide_both(self.nets, ctx, self.options.dividemix)
            clean = 0.5 * (divisions[0].clean_prob + divisions[1].clean_prob)
            if self.options.dividemix.warmup_epochs < ctx.cfg.epochs:  # the pools were in use
                self.labeled = torch.stack([divisions[1].labeled, divisions[0].labeled])
        pools = self.active_pools()
        q = normalise(pools)  # (P, N, K)
        on_given = q.gather(-1, ctx.train.labels.expand(q.shape[:-1])[..., None])[..., 0].mean(0)
        ent = pool_entropy(pools)
        extra: dict[str, Any] = {
            "direction_pool": _as_lists(q[0]),
            "pool_entropy": ent[0].cpu().numpy().astype(np.float32),
        }
        if len(self.nets) == 2:
            extra["direction_pool_peer"] = _as_lists(q[1])
            extra["pool_entropy_peer"] = ent[1].cpu().numpy().astype(np.float32)
        if self.options.variant == "ssl":
            extra["clean_probability"] = clean.cpu().numpy().astype(np.float32)
        return MethodOutput(
            self.predict(ctx.train), noise_score=1.0 - on_given, extra=extra, history=self.history_frame()
        )

    def history_frame(self) -> pl.DataFrame | None:
        """Long table (sample_id, epoch, pool[, pool_peer]) of the normalised pools after every epoch, or None
        when `history` is off."""
        if not self.options.history:
            return None
        ids = self.ctx.train.sample_ids
        frames = []
        for epoch, q in self.history:
            cols = {
                "sample_id": pl.Series(ids, dtype=pl.Int64),
                "epoch": pl.Series(np.full(len(ids), epoch, dtype=np.int32)),
                "pool": pl.Series(q[0].float().numpy()).cast(pl.List(pl.Float32)),
                "pool_peer": pl.Series(q[1].float().numpy()).cast(pl.List(pl.Float32))
                if len(q) > 1
                else pl.Series([None] * len(ids), dtype=pl.List(pl.Float32)),
            }
            frames.append(pl.DataFrame(cols))
        return pl.concat(frames) if frames else None

    def state_dict(self) -> dict[str, Any]:
        return {
            **nets_state(self.nets, self.optimizers, self.schedulers),
            "pools": self.pools,
            "upools": self.upools,
            "seen": self.seen,
            "labeled": self.labeled,
            "gen": self.gen.get_state(),
            "history": [(e, q) for e, q in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.ctx.device
        load_nets_state(state, self.nets, self.optimizers, self.schedulers)
        self.pools, self.seen = state["pools"].to(dev), state["seen"].to(dev)
        self.upools = None if state["upools"] is None else state["upools"].to(dev)
        self.labeled = state["labeled"].to(dev)
        self.gen.set_state(state["gen"])
        self.history = [(int(e), q) for e, q in state["history"]]


def _as_lists(q: torch.Tensor) -> pl.Series:
    """(N, K) float tensor -> a list<float32> Series."""
    return pl.Series(q.float().cpu().numpy()).cast(pl.List(pl.Float32))


COLUMNS = (
    Column(
        "direction_pool",
        pa.list_(pa.float32()),
        distribution=True,
        description="GSS: the (first) network's direction pool D / ΣD, length K (SSL: the pool in use, "
        "labeled- or unlabeled-set). Mass on the given label = 1 - noise_score for one network.",
    ),
    Column(
        "direction_pool_peer",
        pa.list_(pa.float32()),
        distribution=True,
        description="GSS-DB / GSS-SSL: the second network's direction pool, length K.",
    ),
    Column(
        "pool_entropy",
        pa.float32(),
        min_value=0.0,
        max_value=1.0,
        direction="higher = pool closer to uniform (the label is uncertain)",
        description="GSS: entropy of direction_pool / log K.",
    ),
    Column(
        "pool_entropy_peer",
        pa.float32(),
        min_value=0.0,
        max_value=1.0,
        direction="higher = pool closer to uniform",
        description="GSS-DB / GSS-SSL: entropy of direction_pool_peer / log K.",
    ),
)
"""The score columns this method adds to SCORES (pipeline.schemas.Column)."""


POOL_PARTS = (
    ("given", "given label ỹ"),
    ("pred", "predicted label (≠ ỹ)"),
    ("other", "other classes"),
)


def _pools_figure(log, method: str) -> str:
    """The mean pool mass on the given, the predicted and the other labels over training, for clean and for
    mislabeled samples (epoch log columns pool_*)."""
    from pipeline.figures import plt, png

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, group, title in ((axes[0], "clean", "clean samples"), (axes[1], "noisy", "mislabeled samples")):
        for i, (part, label) in enumerate(POOL_PARTS):
            col = f"pool_{part}_{group}"
            if col in log.columns:
                ax.plot(log["epoch"], log[col], marker=".", color=f"C{i}", label=label)
        if group == "noisy" and "pool_true_noisy" in log.columns:
            ax.plot(log["epoch"], log["pool_true_noisy"], "k--", label="true label (not used)")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean pool mass")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{method}: where the direction pools put their mass", fontsize=11)
    return png(fig)


def report_section(r, name: str) -> str:
    """The report's direction-pool section (`pipeline.figures.ReportInputs` -> HTML); empty without the
    truth, which the pool figures split by."""
    log = r.logs[name]
    if "pool_given_clean" not in log.columns:
        return ""
    opts = GSSOptions.model_validate(r.params.method.get(name) or {})
    return (
        "<h2>GSS: direction pools during training (the paper's Figure 2 idea)</h2>"
        f"<p>variant <b>{opts.variant}</b>. Each sample's training label is drawn from its pool every "
        "step; a mislabeled sample's pool should move its mass off the given label (onto the "
        "predicted one, or spread out), a clean sample's should stay on it. Means after each epoch "
        "(SSL: the pool in use for each sample).</p>" + _pools_figure(log, name)
    )


PLOTS = (
    log_plot(
        "GSS direction pools (mean mass on the given label)",
        "logs/gss.csv",
        ["pool_given_clean", "pool_given_noisy"],
    ),
)


SPEC = register(
    MethodSpec(
        "gss",
        GSSOptions,
        GSS,
        "GSS: labels drawn from per-sample direction pools (SB, DB, or in DivideMix)",
        columns=COLUMNS + DIVIDEMIX_COLUMNS,
        report_section=report_section,
        plots=PLOTS,
    )
)
