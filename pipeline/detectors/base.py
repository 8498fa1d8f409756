"""The detector protocol: a pure function of features and labels, its options, and the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from pipeline.schemas import Column


@dataclass(frozen=True)
class DetectorInput:
    """What a detector sees.

    Attributes:
        train: (N, D) float32 L2-normalised training features.
        labels: (N,) int64 given labels in [0, K).
        test: (M, D) float32 L2-normalised test features.
        num_classes: K.
        seed: seeds any randomness (fold splits).
        oof: (N, K) float32 out-of-fold probabilities the noise stage estimated the rate from, or None.
        oof_record: how they were made (the noise report's `estimate` section); a detector that made
            them itself may reuse them when the record says so, instead of fitting again.
    """

    train: np.ndarray
    labels: np.ndarray
    test: np.ndarray
    num_classes: int
    seed: int
    oof: np.ndarray | None = None
    oof_record: dict | None = None


@dataclass
class DetectorResult:
    """Per-sample evidence, row i = training row i.

    Attributes:
        probs: (N, K) class probabilities the decision was made on (rows sum to 1).
        flagged: (N,) bool, the detector calls the given label wrong.
        test_probs: (M, K) probabilities for the test split (its accuracy goes to the log).
        noise_score: (N,) in [0, 1], higher = more likely wrong; None = 1 - probs[given].
        extra: the detector's own score columns (declared in its `DetectorSpec.columns`).
        log: extra one-line figures for the detector's log row.
    """

    probs: np.ndarray
    flagged: np.ndarray
    test_probs: np.ndarray
    noise_score: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    log: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DetectorSpec:
    """A registry entry.

    Attributes:
        name: registry and stage name (`detect@<name>`, `scores/<name>.parquet`).
        options: pydantic model of `detector.<name>` (unknown keys fail).
        detect: `(options, DetectorInput) -> DetectorResult`, pure.
        summary: one line for docs and the report.
        columns: the detector's own score columns (checked like the contract columns).
    """

    name: str
    options: type[BaseModel]
    detect: Callable[[Any, DetectorInput], DetectorResult]
    summary: str
    columns: tuple[Column, ...] = ()


DETECTORS: dict[str, DetectorSpec] = {}


def register_detector(spec: DetectorSpec) -> DetectorSpec:
    if spec.name in DETECTORS:
        raise ValueError(f"detector '{spec.name}' registered twice")
    DETECTORS[spec.name] = spec
    return spec


LabelQualityScoring = Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"]
"""cleanlab's label-quality scorings (`cleanlab.rank.get_label_quality_scores`'s `method`)."""


def label_quality(labels: np.ndarray, probs: np.ndarray, *, scoring: LabelQualityScoring) -> np.ndarray:
    """cleanlab's label-quality score of each given label, in [0, 1], higher = more likely correct.

    Args:
        labels: (N,) given labels in [0, K).
        probs: (N, K) predicted probabilities (rows sum to 1).
        scoring: `self_confidence` (probs[given]), `normalized_margin` ((probs[given] - the largest other
            class's prob + 1) / 2) or `confidence_weighted_entropy`.

    Returns:
        (N,) float64.
    """
    from cleanlab.rank import get_label_quality_scores

    return get_label_quality_scores(labels, probs, method=scoring)


def rank_flags(quality: np.ndarray, count: int) -> np.ndarray:
    """Flag the `count` samples of lowest label quality (ties by row order). Pure; (N,) -> (N,) bool."""
    flags = np.zeros(len(quality), dtype=bool)
    if count > 0:
        flags[np.argsort(quality, kind="stable")[:count]] = True
    return flags


def label_issue_flags(
    labels: np.ndarray, probs: np.ndarray, *, filter_by: str = "prune_by_noise_rate"
) -> np.ndarray:
    """cleanlab's `find_label_issues`, run in this process (`n_jobs=1`).

    With more jobs cleanlab hands its workers the per-class data through module globals that only a forked
    worker inherits, so it fails with a NameError where the start method is spawn or forkserver (a CUDA
    program that set it, a multiprocessing child, Python 3.14's default). The flags do not depend on
    `n_jobs`; see docs/design.md.

    Args:
        labels: (N,) given labels in [0, K).
        probs: (N, K) predicted probabilities (rows sum to 1).
        filter_by: cleanlab's filter.

    Returns:
        (N,) bool, True where the given label looks wrong.
    """
    from cleanlab.filter import find_label_issues

    return find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1)
