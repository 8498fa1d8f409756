"""Noise estimation from out-of-fold predicted probabilities (confident joint, via cleanlab)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from pipeline.config import TrainParams
from pipeline.data.tensors import ImageData
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
    patience: int | None = None,
) -> np.ndarray:
    """K-fold cross-validated CE probabilities (N, K): `fold_estimate(...)`'s probabilities alone."""
    return fold_estimate(
        train, cfg, num_classes=num_classes, folds=folds, epochs=epochs, seed=seed, device=device,
        patience=patience,
    )[0]  # fmt: skip


def fold_estimate(
    train: ImageData,
    cfg: TrainParams,
    *,
    num_classes: int,
    folds: int,
    epochs: int,
    seed: int,
    device: torch.device,
    patience: int | None = 1,
) -> tuple[np.ndarray, list[float], list[int]]:
    """K-fold cross-validated CE probabilities: each sample is predicted by a model that never saw it.

    With `patience`, each fold's model trains for at most `epochs` and stops once its held-out accuracy
    against the given (noisy) labels has not improved for `patience` epochs; the held-out probabilities of
    its best epoch are kept (a model that goes on memorising its own noisy labels over-estimates the
    noise). `patience=None` trains every fold for `epochs` and keeps the last epoch's probabilities.

    Args:
        train: training split with the given (possibly noisy) labels.
        cfg: backbone, optimiser and schedule (its `epochs` is replaced by `epochs`).
        num_classes: K.
        folds: number of stratified folds.
        epochs: most CE epochs per fold.
        seed: seeds the fold split and each fold's model.
        device: training device.
        patience: epochs without a better held-out accuracy before a fold stops (None = never).

    Returns:
        ((N, K) float32 probabilities, row i for train row i; each fold's held-out accuracy of the kept
        epoch; each fold's kept epoch, 1-based).
    """
    from sklearn.model_selection import StratifiedKFold

    from pipeline.methods import REGISTRY
    from pipeline.train import TrainContext

    labels = train.labels.cpu().numpy()
    largest = int(np.bincount(labels).max())
    if largest < folds:
        raise DataError(
            f"noise.estimate_folds: {folds} folds need a class with at least {folds} training "
            f"samples (the largest has {largest})"
        )
    fold_cfg = cfg.model_copy(update={"epochs": epochs, "resume": False})
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    accs, best_epochs = [], []
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
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(ctx.seed)
            model = spec.build(spec.options(), ctx)
            best, best_epoch, stale = -1.0, 0, 0
            for epoch in range(epochs):
                model.train_epoch(epoch)
                probs = model.predict(held)
                acc = (probs.argmax(-1) == held.labels).float().mean().item()
                if acc > best or patience is None:
                    best, best_epoch, stale = acc, epoch + 1, 0
                    out[held_idx] = probs.float().cpu().numpy()
                else:
                    stale += 1
                    if stale >= patience:
                        break
        print(f"[estimate fold {f + 1}/{folds}] best held-out accuracy {best:.3f} at epoch {best_epoch}")
        accs.append(best)
        best_epochs.append(best_epoch)
    return out, accs, best_epochs


def model_warning(held_out_accuracy: float, rate: float, threshold: float) -> str | None:
    """A sentence when the estimate's models look too weak to trust, else None.

    If a model's mistakes are independent of the label noise, its accuracy on the true labels is about its
    held-out accuracy on the given labels divided by (1 - rate).
    """
    implied = held_out_accuracy / max(1.0 - rate, 1e-6)
    if implied >= threshold:
        return None
    return (
        f"the estimate's models reach {held_out_accuracy:.2f} held-out accuracy on the given labels (about "
        f"{min(implied, 1.0):.2f} on the true labels), below noise.min_model_accuracy {threshold:g}: the "
        f"estimated rate {rate:.3f}, and the auto settings and the cleaning cap, may be far off; "
        "use stronger features (noise.estimate_from: probe with a pretrained embedding model)"
    )


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
