"""The method protocol, the registry and the shared export to the SCORES table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel

from pipeline.data.tensors import ImageData
from pipeline.schemas import SCORES, Column
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

    def state_dict(self) -> dict[str, Any]:
        """Every piece of state needed to resume (networks, optimisers, schedulers, method state)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output."""


@dataclass(frozen=True)
class MethodSpec:
    """A registry entry: everything the rest of the pipeline knows about a method, from its own file.

    Attributes:
        name: registry and stage name (`train@<name>`, `scores/<name>.parquet`, `method.<name>` options).
        options: pydantic model of `method.<name>` (unknown keys fail); an optional `warmups()` method
            returns {option key: epochs} that must leave some of `train.epochs`.
        build: `(options, TrainContext) -> Method`.
        summary: one line for the docs and `--help`.
        columns: the score columns the method adds to SCORES (written by `export`, checked on write and
            on read like the contract columns).
        report_section: `(ReportInputs, name) -> HTML` for the report (`pipeline.figures.ReportInputs`), or
            None for no section of its own.
        plots: `dvc.yaml` plot definitions of the method's own log columns ({title: {x, y, ...}}, paths
            under `logs/`); `tests/test_dvc_plots.py` checks dvc.yaml against them.
    """

    name: str
    options: type[BaseModel]
    build: Callable[[Any, TrainContext], Method]
    summary: str
    columns: tuple[Column, ...] = ()
    report_section: Callable[[Any, str], str] | None = None
    plots: tuple[dict[str, Any], ...] = ()


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method to `REGISTRY` (a module-level `SPEC = register(MethodSpec(...))` in the method's file)."""
    if spec.name in REGISTRY:
        raise ValueError(f"method '{spec.name}' registered twice")
    clash = {c.name for c in spec.columns} & {c.name for c in SCORES.columns}
    if clash:
        raise ValueError(f"method '{spec.name}': columns {sorted(clash)} are SCORES contract columns")
    REGISTRY[spec.name] = spec
    return spec


def log_plot(title: str, log: str, y: str | list[str], x: str = "epoch") -> dict[str, Any]:
    """One dvc.yaml plot of a method's log columns (`MethodSpec.plots`): {title: {x, y: {log: y}}}."""
    return {title: {"x": x, "y": {log: y}}}


def unregister(name: str) -> None:
    """Remove a method from `REGISTRY` (tests that register a method of their own)."""
    REGISTRY.pop(name)


def scores_frame(
    name: str,
    ctx: TrainContext,
    out: MethodOutput,
    flag_threshold: float,
    grad_similarity: torch.Tensor | None = None,
) -> pl.DataFrame:
    """Build the SCORES table (contract columns + the method's extra columns) from a MethodOutput;
    `grad_similarity` (N,) fills the contract column of that name (null when None)."""
    to_np = lambda t: None if t is None else t.detach().float().cpu().numpy()  # noqa: E731
    return score_table(
        name,
        ctx.train.sample_ids,
        ctx.train.labels.cpu().numpy(),
        to_np(out.probs),
        noise_score=to_np(out.noise_score),
        flagged=None if out.flagged is None else out.flagged.cpu().numpy().astype(bool),
        flag_threshold=flag_threshold,
        extra=out.extra,
        grad_similarity=to_np(grad_similarity),
    )


def score_table(
    name: str,
    sample_ids: np.ndarray,
    given: np.ndarray,
    probs: np.ndarray,
    *,
    noise_score: np.ndarray | None,
    flagged: np.ndarray | None,
    flag_threshold: float,
    extra: dict[str, Any],
    grad_similarity: np.ndarray | None = None,
) -> pl.DataFrame:
    """The SCORES table from numpy arrays (trained methods and embedding detectors alike).

    Args:
        sample_ids: (N,) int64; given: (N,) given labels; probs: (N, K), renormalised here.
        noise_score: (N,) or None = 1 - probs[given]; clipped to [0, 1].
        flagged: (N,) bool or None = noise_score >= flag_threshold.
        extra: the method's own columns (name -> length-N array or list).
        grad_similarity: (N,) or None (a null column).
    """
    probs = np.asarray(probs, dtype=np.float32)
    probs = probs / probs.sum(-1, keepdims=True)
    given = np.asarray(given)
    pseudo, conf = probs.argmax(-1), probs.max(-1)
    noise = 1.0 - probs[np.arange(len(given)), given] if noise_score is None else np.asarray(noise_score)
    noise = np.clip(noise.astype(np.float32), 0.0, 1.0)
    frame = pl.DataFrame(
        {
            "sample_id": pl.Series(sample_ids, dtype=pl.Int64),
            "method": pl.Series([name] * len(given), dtype=pl.String),
            "given_label": pl.Series(given.astype(np.int32)),
            "pseudo_label": pl.Series(pseudo.astype(np.int32)),
            "confidence": pl.Series(conf.astype(np.float32)),
            "noise_score": pl.Series(noise),
            "is_flagged": pl.Series(flagged.astype(bool) if flagged is not None else noise >= flag_threshold),
            "probs": pl.Series(probs).cast(pl.List(pl.Float32)),
            "grad_similarity": pl.Series(
                [None] * len(given) if grad_similarity is None else grad_similarity.astype(np.float32),
                dtype=pl.Float32,
            ).fill_nan(None),
        }
    )
    for col, values in extra.items():
        frame = frame.with_columns(pl.Series(col, values))
    return frame
