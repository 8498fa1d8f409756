"""Cross-entropy baseline: one network, or two (`nets: 2`) averaged — GAL's "θA + θB + CE" row."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from pipeline.config import Strict
from pipeline.data.tensors import ImageData
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
    predict_mean,
    progress,
)


class CEOptions(Strict):
    """`method.ce:` options."""

    nets: int = Field(1, ge=1, le=2)  # 2 = two independently initialised networks, probabilities averaged


class CrossEntropy:
    """Plain cross-entropy on the given labels, with the shared optimiser and schedule."""

    def __init__(self, opts: CEOptions, ctx: TrainContext) -> None:
        self.ctx = ctx
        self.nets = build_nets(ctx, opts.nets)
        self.optimizers = [make_optimizer(n, ctx.cfg) for n in self.nets]
        self.schedulers = [make_scheduler(opt, ctx.cfg) for opt in self.optimizers]

    def train_epoch(self, epoch: int) -> EpochResult:
        acc = Accumulator(self.ctx.device)
        for n in self.nets:
            n.train()
        for idx in progress(self.ctx.batches(), self.ctx, f"ce e{epoch + 1}"):
            _, x, y = self.ctx.train_batch(idx)
            for k, (net, opt) in enumerate(zip(self.nets, self.optimizers, strict=True)):
                loss, logits = ce_step(net, opt, x, y, self.ctx)
                if k == 0:  # the log follows the first network
                    acc.add(loss, logits, y)
        for s in self.schedulers:
            s.step()
        return acc.result()

    def predict(self, data: ImageData) -> torch.Tensor:
        return predict_mean(self.nets, data, self.ctx)

    def networks(self) -> list[torch.nn.Module]:
        return self.nets

    def export(self) -> MethodOutput:
        return MethodOutput(self.predict(self.ctx.train))

    def state_dict(self) -> dict[str, Any]:
        return nets_state(self.nets, self.optimizers, self.schedulers)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_nets_state(state, self.nets, self.optimizers, self.schedulers)


SPEC = register(MethodSpec("ce", CEOptions, CrossEntropy, "cross-entropy baseline (1 or 2 networks)"))
