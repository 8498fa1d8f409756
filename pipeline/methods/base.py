"""The method protocol, the registry and the shared export to the SCORES table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel

from pipeline.data.memory import ImageData
from pipeline.train import EpochResult, TrainContext


@dataclass
class MethodOutput:
    """Per-sample outputs over the training set, row i = ctx.train row i.

    Attributes:
        probs: (N, K) class probabilities of the model the method reports.
        noise_score: (N,) in [0, 1], higher = given label more likely wrong; None = 1 - probs[given].
        extra: further score columns (name -> length-N numpy array or list), e.g. direction pools.
        flagged: (N,) bool flags when the method decides them itself (e.g. confident learning); None =
            noise_score >= train.flag_threshold.
        history: per-epoch evidence in the POOL_HISTORY layout (GSS with `history: true`), None = none.
    """

    probs: torch.Tensor
    noise_score: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    flagged: torch.Tensor | None = None
    history: pl.DataFrame | None = None


class Method(Protocol):
    """What the epoch driver (`pipeline.train.fit`) and the train stage need from a method."""

    def train_epoch(self, epoch: int) -> EpochResult:
        """Train one epoch (0-based) over ctx.train."""

    def predict(self, data: ImageData) -> torch.Tensor:
        """(N, K) probabilities of the reported model on `data`, eval mode."""

    def networks(self) -> list[torch.nn.Module]:
        """The networks behind `predict`; the `grad_similarity` scoring pass averages over them."""

    def export(self) -> MethodOutput:
        """Per-sample outputs over ctx.train after training."""

    def lr(self) -> float:
        """Current learning rate (for the log)."""

    def state_dict(self) -> dict[str, Any]:
        """Every piece of state needed to resume (networks, optimisers, schedulers, method state)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output."""


@dataclass(frozen=True)
class MethodSpec:
    """A registry entry: the method's name, its options model and its builder."""

    name: str
    options: type[BaseModel]
    build: Callable[[Any, TrainContext], Method]
    summary: str


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"method '{spec.name}' registered twice")
    REGISTRY[spec.name] = spec
    return spec


def scores_frame(
    name: str,
    ctx: TrainContext,
    out: MethodOutput,
    flag_threshold: float,
    grad_similarity: torch.Tensor | None = None,
) -> pl.DataFrame:
    """Build the SCORES table (contract columns + the method's extra columns) from a MethodOutput;
    `grad_similarity` (N,) fills the contract column of that name (null when None)."""
    probs = out.probs.detach().float()
    probs = probs / probs.sum(-1, keepdim=True)
    given = ctx.train.labels
    conf, pseudo = probs.max(-1)
    noise = out.noise_score if out.noise_score is not None else 1.0 - probs.gather(1, given[:, None])[:, 0]
    noise = noise.detach().float().clamp(0.0, 1.0)
    p_np = probs.cpu().numpy().astype(np.float32)
    frame = pl.DataFrame(
        {
            "sample_id": pl.Series(ctx.train.sample_ids, dtype=pl.Int64),
            "method": pl.Series([name] * len(given), dtype=pl.String),
            "given_label": pl.Series(given.cpu().numpy().astype(np.int32)),
            "pseudo_label": pl.Series(pseudo.cpu().numpy().astype(np.int32)),
            "confidence": pl.Series(conf.cpu().numpy().astype(np.float32)),
            "noise_score": pl.Series(noise.cpu().numpy().astype(np.float32)),
            "is_flagged": pl.Series(
                out.flagged.cpu().numpy().astype(bool)
                if out.flagged is not None
                else noise.cpu().numpy() >= flag_threshold
            ),
            "probs": pl.Series(p_np).cast(pl.List(pl.Float32)),
            "grad_similarity": pl.Series(
                [None] * len(given)
                if grad_similarity is None
                else grad_similarity.detach().float().cpu().numpy(),
                dtype=pl.Float32,
            ).fill_nan(None),
        }
    )
    for col, values in out.extra.items():
        frame = frame.with_columns(pl.Series(col, values))
    return frame
