"""`probe`: a linear probe on frozen pretrained features, then confident learning (cleanlab).

K-fold out-of-fold logistic regression (scikit-learn) gives every training sample class probabilities from a
model that never saw its label. cleanlab turns them into label-quality scores (`noise_score` = 1 -
quality) and, with `flag: cleanlab`, into `find_label_issues` flags; with `flag: rank` (default) the
round(estimated rate x N) lowest-quality samples are flagged, the rate being cleanlab's confident-joint
estimate from the same probabilities. The same out-of-fold probabilities feed the noise estimate
(`noise.estimate_from: probe`). Test probabilities come from one probe fitted on every training row.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline.config import Strict
from pipeline.detectors.base import DetectorInput, DetectorResult, DetectorSpec, rank_flags, register_detector
from pipeline.errors import DataError
from pipeline.schemas import Column


class ProbeOptions(Strict):
    """`detector.probe:` options."""

    folds: int = Field(5, ge=2)  # K of the out-of-fold split
    C: Annotated[float, Field(gt=0.0)] | Literal["auto"] = "auto"  # inverse L2 strength (sklearn's C);
    # auto = the value of C_grid with the lowest out-of-fold log-loss against the given labels
    C_grid: list[Annotated[float, Field(gt=0.0)]] = Field(
        default_factory=lambda: [0.3, 1.0, 3.0, 10.0], min_length=1
    )
    max_iter: int = Field(2000, ge=10)  # lbfgs iterations
    flag: Literal["rank", "cleanlab"] = "rank"  # rank: the estimated number of issues, lowest quality first
    filter_by: Literal[
        "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"
    ] = "prune_by_noise_rate"  # flag: cleanlab -> cleanlab.filter.find_label_issues
    scoring: Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"] = (
        "self_confidence"  # cleanlab.rank.get_label_quality_scores
    )


def _fit(x: np.ndarray, y: np.ndarray, k: int, c: float, max_iter: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=max_iter).fit(x, y)


def _proba(model, x: np.ndarray, k: int) -> np.ndarray:
    """(M, K) probabilities; classes absent from the fit get 0."""
    out = np.zeros((len(x), k), dtype=np.float64)
    out[:, model.classes_] = model.predict_proba(x)
    return out


def probe_oof(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    folds: int,
    C: float | str,
    seed: int,
    max_iter: int = 2000,
    C_grid: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0),
) -> tuple[np.ndarray, list[float], float]:
    """Out-of-fold logistic-regression probabilities.

    Args:
        features: (N, D) float32.
        labels: (N,) int64 given labels.
        num_classes: K.
        folds: stratified folds.
        C: sklearn's inverse regularisation strength, or "auto": each of `C_grid` is tried and the one
            with the lowest out-of-fold log-loss against the given labels is kept (no truth is used).
        seed: fold split seed.

    Returns:
        ((N, K) float32 probabilities, each fold's held-out accuracy against the given labels, the C used).
    """
    from sklearn.metrics import log_loss

    labels = np.asarray(labels)
    if len(features) != len(labels):
        raise ValueError(f"probe_oof: {len(features)} feature rows for {len(labels)} labels")
    largest = int(np.bincount(labels).max())
    if largest < folds:
        raise DataError(
            f"probe: {folds} folds need a class with at least {folds} samples (largest: {largest})"
        )
    best = None
    for c in C_grid if C == "auto" else (float(C),):
        oof, accs = _oof(features, labels, num_classes, folds, c, seed, max_iter)
        loss = log_loss(labels, np.clip(oof, 1e-7, 1.0), labels=list(range(num_classes)))
        if best is None or loss < best[0]:
            best = (loss, oof, accs, c)
    _, oof, accs, c = best
    return oof, accs, c


def _oof(x: np.ndarray, y: np.ndarray, k: int, folds: int, c: float, seed: int, max_iter: int):
    from sklearn.model_selection import StratifiedKFold

    out = np.zeros((len(y), k), dtype=np.float64)
    accs = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fit_idx, held_idx in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
            model = _fit(x[fit_idx], y[fit_idx], k, c, max_iter)
            out[held_idx] = _proba(model, x[held_idx], k)
            accs.append(float((out[held_idx].argmax(1) == y[held_idx]).mean()))
    out /= out.sum(1, keepdims=True)
    return out.astype(np.float32), accs


def detect_probe(opts: ProbeOptions, data: DetectorInput) -> DetectorResult:
    """Out-of-fold probe + cleanlab; see the module docstring."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from pipeline.noise.estimate import estimate_noise

    oof, accs, c = probe_oof(
        data.train, data.labels, num_classes=data.num_classes, folds=opts.folds, C=opts.C, seed=data.seed,
        max_iter=opts.max_iter, C_grid=tuple(opts.C_grid),
    )  # fmt: skip
    probs = oof.astype(np.float64)
    quality = get_label_quality_scores(data.labels, probs, method=opts.scoring)
    rate = estimate_noise(data.labels, probs, num_classes=data.num_classes)["rate"]
    if opts.flag == "rank":
        flags = rank_flags(quality, int(round(rate * len(data.labels))))
    else:
        flags = find_label_issues(data.labels, probs, filter_by=opts.filter_by)
    full = _fit(data.train, data.labels, data.num_classes, c, opts.max_iter)
    return DetectorResult(
        probs=oof,
        flagged=np.asarray(flags, dtype=bool),
        test_probs=_proba(full, data.test, data.num_classes).astype(np.float32),
        noise_score=(1.0 - quality).astype(np.float32),
        extra={"label_quality": quality.astype(np.float32)},
        log={"estimated_rate": rate, "held_out_acc": float(np.mean(accs)), "C": c},
    )


SPEC = register_detector(
    DetectorSpec(
        "probe",
        ProbeOptions,
        detect_probe,
        "out-of-fold logistic regression on frozen pretrained features, then cleanlab",
        columns=(
            Column(
                "label_quality",
                pa.float32(),
                min_value=0.0,
                max_value=1.0,
                direction="higher = given label more likely right",
                description="probe: cleanlab's label-quality score of the given label (1 - noise_score).",
            ),
        ),
    )
)
