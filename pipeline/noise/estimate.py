"""Noise estimation from out-of-fold predicted probabilities (confident joint, via cleanlab)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from pipeline.config import TrainParams
from pipeline.data.memory import ImageData
from pipeline.errors import DataError


def out_of_fold_probs(
    train: ImageData,
    cfg: TrainParams,
    *,
    num_classes: int,
    folds: int,
    epochs: int,
    seed: int,
    device: torch.device,
) -> np.ndarray:
    """K-fold cross-validated CE probabilities: each sample is predicted by a model that never saw it.

    Args:
        train: training split with the given (possibly noisy) labels.
        cfg: backbone, optimiser and schedule (its `epochs` is replaced by `epochs`).
        num_classes: K.
        folds: number of stratified folds.
        epochs: CE epochs per fold.
        seed: seeds the fold split and each fold's model.
        device: training device.

    Returns:
        (N, K) float32 probabilities, row i for train row i.
    """
    from sklearn.model_selection import StratifiedKFold

    from pipeline.methods import REGISTRY
    from pipeline.train import TrainContext, fit

    labels = train.labels.cpu().numpy()
    largest = int(np.bincount(labels).max())
    if largest < folds:
        raise DataError(
            f"noise.estimate_folds: {folds} folds need a class with at least {folds} training "
            f"samples (the largest has {largest})"
        )
    fold_cfg = cfg.model_copy(update={"epochs": epochs, "resume": False})
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    with warnings.catch_warnings():  # classes smaller than `folds` are fine: they land in fewer folds
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        split = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(labels, labels))
    for f, (fit_idx, held_idx) in enumerate(split):
        held = train.subset(held_idx)
        ctx = TrainContext(
            train.subset(fit_idx),
            held,
            fold_cfg,
            num_classes,
            train.images.shape[1],
            device,
            seed + 1000 * (f + 1),
        )
        spec = REGISTRY["ce"]
        model = spec.build(spec.options(), ctx)
        fit(model, ctx, name=f"estimate fold {f + 1}/{folds}", epochs=epochs)
        out[held_idx] = model.predict(held).float().cpu().numpy()
    return out


def estimate_noise(labels: np.ndarray, probs: np.ndarray, *, num_classes: int) -> dict[str, Any]:
    """Confident-joint estimate of the label noise.

    Args:
        labels: (N,) given labels in [0, K).
        probs: (N, K) out-of-fold probabilities (rows sum to 1).
        num_classes: K.

    Returns:
        dict with `rate` (estimated share of wrong labels, 1 − trace of the joint), `matrix` (K×K,
        T[i][j] = P(given = j | true = i), rows sum to 1) and `per_class_noise_rate` (1 − T[i][i]).
    """
    from cleanlab.count import estimate_joint

    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(labels), num_classes):
        raise ValueError(
            f"estimate_noise: probs has shape {probs.shape}, expected ({len(labels)}, {num_classes})"
        )
    if not np.isfinite(probs).all() or (np.abs(probs.sum(1) - 1) > 1e-3).any():
        raise ValueError("estimate_noise: probs must be finite and rows must sum to 1")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"estimate_noise: labels outside [0, {num_classes})")
    joint = estimate_joint(labels, probs)  # joint[given][true]
    col = joint.sum(0, keepdims=True)
    t = np.divide(joint, col, out=np.zeros_like(joint), where=col > 0).T  # t[true][given]
    return {
        "rate": float(1.0 - np.trace(joint)),
        "matrix": np.round(t, 6).tolist(),
        "per_class_noise_rate": [float(1.0 - t[i, i]) for i in range(num_classes)],
        "joint": np.round(joint, 6).tolist(),
    }
