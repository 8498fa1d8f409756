"""`probe`: a linear probe on frozen pretrained features, then confident learning (cleanlab).

K-fold out-of-fold logistic regression (scikit-learn) gives every training sample class probabilities from a
model that never saw its label. cleanlab turns them into label-quality scores (`noise_score` = 1 -
quality) and, with `flag: cleanlab`, into `find_label_issues` flags; with `flag: rank` (default) the
round(estimated rate x N) lowest-quality samples are flagged, the rate being cleanlab's confident-joint
estimate from the same probabilities. The same out-of-fold probabilities feed the noise estimate
(`noise.estimate_from: probe`); when the noise stage made them from exactly these features, labels,
options and seed (its report carries the fit's fingerprint), the detector reuses them instead of fitting
again. Test probabilities come from one probe fitted on every training row.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline.config import Strict
from pipeline.detectors.base import (
    DetectorInput,
    DetectorResult,
    DetectorSpec,
    LabelQualityScoring,
    label_issue_flags,
    label_quality,
    rank_flags,
    register_detector,
)
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
    blas_threads: int = Field(1, ge=1)  # BLAS threads during the fits: lbfgs at this size is several times
    # faster on one thread than on two (docs/results.md, "The probe's fits and BLAS threads")
    flag: Literal["rank", "cleanlab"] = "rank"  # rank: the estimated number of issues, lowest quality first
    filter_by: Literal[
        "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"
    ] = "prune_by_noise_rate"  # flag: cleanlab -> cleanlab.filter.find_label_issues
    scoring: LabelQualityScoring = "self_confidence"  # cleanlab's label-quality score; self_confidence finds
    # the most wrong labels within the first 200 on aggre, normalized_margin on worst and random1 (docs)


def _blas_threads(n: int):
    """A context that runs its body on `n` BLAS threads (threadpoolctl, scikit-learn's own dependency)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")


def _fit(x: np.ndarray, y: np.ndarray, k: int, c: float, max_iter: int, blas_threads: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings(), _blas_threads(blas_threads):
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
    blas_threads: int = 1,
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
        max_iter: lbfgs iterations per fit.
        C_grid: the values `C: "auto"` chooses from.
        blas_threads: BLAS threads during the fits (`ProbeOptions.blas_threads`).

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
    grid = sorted(C_grid) if C == "auto" else [float(C)]
    with _blas_threads(blas_threads):
        per_c = _oof(features, labels, num_classes, folds, grid, seed, max_iter)
    losses = [log_loss(labels, np.clip(oof, 1e-7, 1.0), labels=list(range(num_classes))) for oof, _ in per_c]
    best = int(np.argmin(losses))
    return per_c[best][0], per_c[best][1], grid[best]


def _oof(x: np.ndarray, y: np.ndarray, k: int, folds: int, grid: list[float], seed: int, max_iter: int):
    """[(oof probs, per-fold held-out accuracies)] for each C of `grid` (ascending).

    Within a fold the fits walk the grid upwards, each starting from the previous solution (sklearn's
    `warm_start`): the same optimum, reached in fewer lbfgs iterations.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    outs = [np.zeros((len(y), k), dtype=np.float64) for _ in grid]
    accs: list[list[float]] = [[] for _ in grid]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        for fit_idx, held_idx in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
            model = LogisticRegression(C=grid[0], max_iter=max_iter, warm_start=True)
            for j, c in enumerate(grid):
                model.set_params(C=c).fit(x[fit_idx], y[fit_idx])
                outs[j][held_idx] = _proba(model, x[held_idx], k)
                accs[j].append(float((outs[j][held_idx].argmax(1) == y[held_idx]).mean()))
    return [((o / o.sum(1, keepdims=True)).astype(np.float32), a) for o, a in zip(outs, accs, strict=True)]


def fit_fingerprint(features: np.ndarray, labels: np.ndarray, opts: ProbeOptions, seed: int) -> str:
    """sha256 of everything the out-of-fold fit depends on: features, labels, options, seed."""
    h = hashlib.sha256()
    for arr in (np.ascontiguousarray(features, dtype=np.float32), np.asarray(labels, dtype=np.int64)):
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    h.update(json.dumps({"options": opts.model_dump(mode="json"), "seed": seed}, sort_keys=True).encode())
    return h.hexdigest()


def fit_probe(opts: ProbeOptions, data: DetectorInput) -> tuple[np.ndarray, list[float], float, bool]:
    """(oof probs, held-out accuracies, C, reused): the noise stage's fit when its record carries this
    exact fit's fingerprint (`noise.estimate_from: probe` fits the same thing), else a fresh one."""
    rec = data.oof_record or {}
    if (
        data.oof is not None
        and rec.get("from") == "probe"
        and rec.get("fingerprint") == fit_fingerprint(data.train, data.labels, opts, data.seed)
    ):
        return data.oof, list(rec["held_out_accuracy_per_fold"]), float(rec["C"]), True
    oof, accs, c = probe_oof(
        data.train, data.labels, num_classes=data.num_classes, folds=opts.folds, C=opts.C, seed=data.seed,
        max_iter=opts.max_iter, C_grid=tuple(opts.C_grid), blas_threads=opts.blas_threads,
    )  # fmt: skip
    return oof, accs, c, False


def detect_probe(opts: ProbeOptions, data: DetectorInput) -> DetectorResult:
    """Out-of-fold probe + cleanlab; see the module docstring."""
    from pipeline.noise.estimate import estimate_noise

    oof, accs, c, reused = fit_probe(opts, data)
    probs = oof.astype(np.float64)
    quality = label_quality(data.labels, probs, scoring=opts.scoring)
    rate = estimate_noise(data.labels, probs, num_classes=data.num_classes)["rate"]
    if opts.flag == "rank":
        flags = rank_flags(quality, int(round(rate * len(data.labels))))
    else:
        flags = label_issue_flags(data.labels, probs, filter_by=opts.filter_by)
    full = _fit(data.train, data.labels, data.num_classes, c, opts.max_iter, opts.blas_threads)
    return DetectorResult(
        probs=oof,
        flagged=np.asarray(flags, dtype=bool),
        test_probs=_proba(full, data.test, data.num_classes).astype(np.float32),
        noise_score=(1.0 - quality).astype(np.float32),
        extra={"label_quality": quality.astype(np.float32)},
        log={
            "estimated_rate": rate,
            "held_out_acc": float(np.mean(accs)),
            "C": c,
            "reused_oof": float(reused),
        },
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
