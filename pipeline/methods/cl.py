"""Confident learning (Northcutt et al., 2021) via cleanlab, on the noise stage's out-of-fold probabilities.

Flags come from `cleanlab.filter.find_label_issues`, the noise score is one minus cleanlab's label-quality
score, and a final CE model trained on the unflagged samples gives the test accuracy. The exported `probs`
(and so `pseudo_label`, `confidence`) are the out-of-fold probabilities the decision was made on.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from pipeline.config import Strict
from pipeline.data.tensors import ImageData
from pipeline.errors import ConfigError
from pipeline.methods.base import MethodOutput, MethodSpec, register
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
    progress,
)


class CLOptions(Strict):
    """`method.cl:` options (passed to cleanlab)."""

    filter_by: Literal[
        "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"
    ] = "prune_by_noise_rate"
    scoring: Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"] = (
        "self_confidence"
    )


class ConfidentLearning:
    """cleanlab flags on out-of-fold probabilities, then CE on the kept samples."""

    def __init__(self, opts: CLOptions, ctx: TrainContext) -> None:
        from cleanlab.rank import get_label_quality_scores

        from pipeline.detectors.base import label_issue_flags

        if ctx.oof_probs is None:
            raise ConfigError(
                "methods: 'cl' uses the out-of-fold probabilities of noise estimation; "
                "set noise.estimate: true"
            )
        self.ctx = ctx
        labels = ctx.train.labels.cpu().numpy()
        probs = ctx.oof_probs.double().cpu().numpy()
        probs = probs / probs.sum(1, keepdims=True)
        flags = label_issue_flags(labels, probs, filter_by=opts.filter_by)
        quality = get_label_quality_scores(labels, probs, method=opts.scoring)
        self.flags = torch.as_tensor(flags, device=ctx.device)
        self.noise_score = torch.as_tensor(1.0 - quality, dtype=torch.float32, device=ctx.device)
        self.keep = torch.as_tensor(np.flatnonzero(~flags), dtype=torch.long)
        if len(self.keep) < 2:
            raise ConfigError("method.cl: cleanlab flagged (almost) every sample; nothing left to train on")
        (self.net,) = build_nets(ctx, 1)
        self.opt = make_optimizer(self.net, ctx.cfg)
        self.sched = make_scheduler(self.opt, ctx.cfg)

    def train_epoch(self, epoch: int) -> EpochResult:
        acc = Accumulator(self.ctx.device)
        self.net.train()
        for idx in progress(self.ctx.batches(self.keep), self.ctx, f"cl e{epoch + 1}"):
            _, x, y = self.ctx.train_batch(idx)
            loss, logits = ce_step(self.net, self.opt, x, y, self.ctx)
            acc.add(loss, logits, y)
        self.sched.step()
        return acc.result(kept=~self.flags)

    def predict(self, data: ImageData) -> torch.Tensor:
        return predict(self.net, data, self.ctx)

    def networks(self) -> list[torch.nn.Module]:
        """The CE network trained here (the reported probabilities are the out-of-fold ones)."""
        return [self.net]

    def export(self) -> MethodOutput:
        return MethodOutput(self.ctx.oof_probs.float(), noise_score=self.noise_score, flagged=self.flags)

    def state_dict(self) -> dict[str, Any]:
        return nets_state([self.net], [self.opt], [self.sched])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_nets_state(state, [self.net], [self.opt], [self.sched])


SPEC = register(
    MethodSpec(
        "cl",
        CLOptions,
        ConfidentLearning,
        "confident learning (cleanlab) on out-of-fold probabilities + CE on kept samples",
    )
)
