"""Gradient-similarity reweighting (J. Wei, "Label Noise Reduction Without Assumptions", Dartmouth TR2020-899,
2020; how it is read: docs/methods.md).

In each minibatch, sample i's weight is w_i ∝ Σ over its top-k partners j of exp(a · D_ij), where D is the
cosine of the per-example gradients of the last linear layer (closed form, `pipeline.gradient_cosine`);
the weights sum to 1 and the loss is Σ w_i · CE_i with w detached. A sample whose gradient few others agree
with (a mislabeled one, the thesis argues) is down-weighted.

Modes: `weight` (the paper), `drop_bottom` (zero the `drop_fraction` lowest-weighted samples of each batch,
uniform weights on the rest), `score_only` (plain CE; the weights are only recorded). `within_class`
compares a sample only with batch members of the same given label (the thesis' supplementary variant).

Exports: `gradsim_weight`, each sample's weight × B (1.0 = an average sample) averaged over the last
`average_epochs` epochs, and `gradsim_rank` (1 = the highest weight). The epoch log carries the thesis'
ranking figures: mislabeled samples among each batch's top-10 and bottom-10 weights.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.config import Strict
from pipeline.data.tensors import ImageData
from pipeline.gradient_cosine import last_layer_cosine, similarity_weights
from pipeline.methods.base import MethodOutput, MethodSpec, log_plot, register
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
    progress,
)

RANK_WINDOW = 10  # the thesis' top-10 / bottom-10


class GradSimOptions(Strict):
    """`method.gradsim:` options."""

    k: Annotated[int, Field(ge=1)] | Literal["all"] = (
        4  # partners per sample (top-k cosines); all = the whole batch (paper: 4)
    )
    a: float = Field(4.0, gt=0.0, le=50.0)  # annealing constant in exp(a·D) (paper: 4)
    mode: Literal["weight", "drop_bottom", "score_only"] = "weight"
    drop_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # drop_bottom: share of each batch given weight 0
    within_class: bool = False  # compare only with same-label batch members (the thesis' §6.1 variant)
    average_epochs: int = Field(
        3, ge=1
    )  # gradsim_weight = mean over the last this many epochs (all if fewer)

    @property
    def top_k(self) -> int | None:
        return None if self.k == "all" else self.k


def batch_weights(
    features: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor, opts: GradSimOptions, *, bias: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarity weights, training weights) of one batch, both (B,) summing to 1.

    The similarity weights are the paper's; the training weights are what the loss uses under `opts.mode`
    (equal to the similarity weights for `weight`, uniform for `score_only`).
    """
    cos = last_layer_cosine(features, probs, labels, bias=bias)
    w = similarity_weights(cos, k=opts.top_k, a=opts.a, labels=labels if opts.within_class else None)
    if opts.mode == "weight":
        return w, w
    b = len(w)
    if opts.mode == "score_only":
        return w, torch.full_like(w, 1.0 / b)
    drop = min(int(opts.drop_fraction * b), b - 1)
    keep = torch.ones_like(w)
    if drop:
        keep[w.argsort()[:drop]] = 0.0
    return w, keep / keep.sum()


def ranking_counts(weights: torch.Tensor, noisy: torch.Tensor, window: int = RANK_WINDOW) -> torch.Tensor:
    """Mislabeled samples among the `window` highest and the `window` lowest weights of a batch.

    Args:
        weights: (B,) weights.
        noisy: (B,) bool, given label wrong.
        window: capped at B // 2.

    Returns:
        (2,) float: [count in the top window, count in the bottom window].
    """
    w = min(window, len(weights) // 2)
    order = weights.argsort(descending=True)
    return torch.stack([noisy[order[:w]].sum(), noisy[order[len(order) - w :]].sum()]).float()


class GradSim:
    """One network trained on gradient-similarity-weighted cross-entropy."""

    def __init__(self, opts: GradSimOptions, ctx: TrainContext) -> None:
        self.ctx, self.options = ctx, opts
        (self.net,) = build_nets(ctx, 1)
        self.opt = make_optimizer(self.net, ctx.cfg)
        self.sched = make_scheduler(self.opt, ctx.cfg)
        self.bias = self.net.get_classifier().bias is not None
        n = len(ctx.train)
        self.weight_sum = torch.zeros(n, device=ctx.device)  # Σ of B·w over the averaged epochs
        self.weight_count = torch.zeros(n, device=ctx.device)
        truth = ctx.train.true_labels
        self.noisy = None if truth is None else truth != ctx.train.labels

    def train_epoch(self, epoch: int) -> EpochResult:
        ctx, options = self.ctx, self.options
        record = epoch >= ctx.cfg.epochs - options.average_epochs
        acc = Accumulator(ctx.device)
        self.net.train()
        ranks = []
        w_sums = torch.zeros(4, device=ctx.device)  # Σ weight clean, # clean, Σ weight noisy, # noisy
        for idx, x, y in (ctx.train_batch(b) for b in progress(ctx.batches(), ctx, f"gradsim e{epoch + 1}")):
            with ctx.amp:
                h, logits = ctx.parallel(self.net, features=True)(x)
            logits = logits.float()
            loss = F.cross_entropy(logits, y, reduction="none")  # (B,)
            with torch.no_grad():
                w, w_train = batch_weights(h.float(), logits.softmax(-1), y, options, bias=self.bias)
            self.opt.zero_grad(set_to_none=True)
            (w_train * loss).sum().backward()
            self.opt.step()
            acc.add(loss, logits, y)
            scaled = w * len(w)  # 1.0 = an average sample
            if record:
                self.weight_sum[idx] += scaled
                self.weight_count[idx] += 1
            if self.noisy is not None:
                nz = self.noisy[idx]
                ranks.append(ranking_counts(w, nz))
                nzf = nz.float()
                w_sums += torch.stack(
                    [(scaled * (1 - nzf)).sum(), (1 - nzf).sum(), (scaled * nzf).sum(), nzf.sum()]
                )
        self.sched.step()
        nan = torch.full((len(acc.step_loss),), float("nan"), device=ctx.device)
        if ranks:
            r = torch.stack(ranks)  # (S, 2)
            steps = {"top10_noisy": r[:, 0], "bottom10_noisy": r[:, 1]}
            extra = {
                "top10_noisy": r[:, 0].mean().item(),
                "bottom10_noisy": r[:, 1].mean().item(),
                "weight_clean": (w_sums[0] / w_sums[1]).item(),  # NaN when there are none
                "weight_noisy": (w_sums[2] / w_sums[3]).item(),
            }
        else:
            steps = {"top10_noisy": nan, "bottom10_noisy": nan}
            extra = dict.fromkeys(
                ("top10_noisy", "bottom10_noisy", "weight_clean", "weight_noisy"), float("nan")
            )
        return acc.result(steps=steps, **extra)

    def predict(self, data: ImageData) -> torch.Tensor:
        return predict(self.net, data, self.ctx)

    def networks(self) -> list[torch.nn.Module]:
        return [self.net]

    def export(self) -> MethodOutput:
        seen = self.weight_count > 0
        weight = torch.where(seen, self.weight_sum / self.weight_count.clamp_min(1), torch.nan)
        order = torch.where(seen, weight, -torch.inf).argsort(descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(1, len(order) + 1, device=order.device)
        return MethodOutput(
            self.predict(self.ctx.train),
            extra={
                "gradsim_weight": pl.Series(weight.cpu().numpy().astype(np.float32)).fill_nan(None),
                "gradsim_rank": rank.cpu().numpy().astype(np.int32),
            },
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            **nets_state([self.net], [self.opt], [self.sched]),
            "weight_sum": self.weight_sum,
            "weight_count": self.weight_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_nets_state(state, [self.net], [self.opt], [self.sched])
        self.weight_sum.copy_(state["weight_sum"])
        self.weight_count.copy_(state["weight_count"])


COLUMNS = (
    Column(
        "gradsim_weight",
        pa.float32(),
        nullable=True,
        min_value=0.0,
        direction="higher = gradient agrees with more of its batch (more likely clean); 1.0 = average",
        description="gradsim: the sample's similarity weight × batch size, mean over the last "
        "average_epochs epochs; null if it was never in a batch then.",
    ),
    Column(
        "gradsim_rank",
        pa.int32(),
        min_value=1,
        direction="lower = higher gradsim_weight (1 = most trusted)",
        description="gradsim: rank of gradsim_weight over the training set, 1-based, ties by row.",
    ),
)
"""The score columns this method adds to SCORES (pipeline.schemas.Column)."""


def _ranking_figure(log, realised: float | None) -> str:
    """Mislabeled samples among each batch's top-10 and bottom-10 weights, epoch means (epoch log columns
    top10_noisy, bottom10_noisy)."""
    from pipeline.figures import plt, png

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.plot(log["epoch"], log["top10_noisy"], marker=".", label="top-10 weights (lower is better)")
    ax.plot(log["epoch"], log["bottom10_noisy"], marker=".", label="bottom-10 weights (higher is better)")
    if realised is not None:
        ax.axhline(10 * realised, color="k", ls="--", lw=1, label=f"random pick (10 × {realised:.2f})")
    ax.set_ylim(0, 10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mislabeled samples of 10")
    ax.set_title("gradsim: mislabeled samples in each batch's top / bottom 10")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def report_section(r, name: str) -> str:
    """The report's ranking figure (`pipeline.figures.ReportInputs` -> HTML); empty without the truth."""
    log = r.logs[name]
    if not r.truth_known or "top10_noisy" not in log.columns:
        return ""
    return (
        "<h2>gradsim: how the weights rank mislabeled samples</h2>"
        "<p>The ranking figures of the gradient-similarity thesis (panels b and c): mislabeled samples among "
        "each batch's top 10 and bottom 10 weights, mean per epoch.</p>"
        + _ranking_figure(log, r.metrics["noise"]["realised_rate"])
    )


PLOTS = (
    log_plot(
        "gradsim ranking (mislabeled samples among each batch's top / bottom 10 weights)",
        "logs/gradsim.csv",
        ["top10_noisy", "bottom10_noisy"],
    ),
)


SPEC = register(
    MethodSpec(
        "gradsim",
        GradSimOptions,
        GradSim,
        "gradient-similarity reweighting: per-sample weights from last-layer gradient cosines",
        columns=COLUMNS,
        report_section=report_section,
        plots=PLOTS,
    )
)
