"""Synthetic label noise (symmetric, asymmetric, pair-flip; docs/methods.md), seeded, no global state."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from pipeline.config import NoiseParams
from pipeline.errors import ConfigError, DataError

# Fine label -> coarse (superclass) label of CIFAR-100, in the official label order.
CIFAR100_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
])  # fmt: skip


def _cifar100_map() -> dict[int, int]:
    """Each fine class flips to the next fine class (by index) inside its superclass, cyclically."""
    out = {}
    for c in range(20):
        members = np.flatnonzero(CIFAR100_COARSE == c)
        for a, b in zip(members, np.roll(members, -1), strict=True):
            out[int(a)] = int(b)
    return out


ASYM_MAPS: dict[str, dict[int, int]] = {
    "digits": {2: 7, 3: 8, 5: 6, 6: 5, 7: 1},
    "cifar10": {9: 1, 2: 0, 4: 7, 3: 5, 5: 3},  # truck->automobile, bird->airplane, deer->horse, cat<->dog
    "cifar100": _cifar100_map(),
}


def _asym_map(spec: str | dict[int, int], k: int) -> dict[int, int]:
    m = ASYM_MAPS[spec] if isinstance(spec, str) else {int(a): int(b) for a, b in spec.items()}
    for a, b in m.items():
        if not (0 <= a < k and 0 <= b < k):
            raise ConfigError(f"noise.asym_map: {a}->{b} is outside the {k} classes")
    return m


def expected_matrix(
    kind: str, rate: float, k: int, *, exclude_true: bool = True, asym_map: str | dict[int, int] = "digits"
) -> np.ndarray:
    """The K×K matrix T[i, j] = P(given = j | true = i) the requested noise implies."""
    t = np.eye(k)
    if kind == "symmetric":
        if exclude_true:
            t = np.full((k, k), rate / (k - 1))
            np.fill_diagonal(t, 1 - rate)
        else:
            t = np.full((k, k), rate / k)
            np.fill_diagonal(t, 1 - rate + rate / k)
    elif kind == "pairflip":
        t = (1 - rate) * np.eye(k) + rate * np.roll(np.eye(k), 1, axis=1)
    elif kind == "asymmetric":
        for a, b in _asym_map(asym_map, k).items():
            t[a, a] -= rate
            t[a, b] += rate
    return t


def inject(
    labels: np.ndarray,
    kind: str,
    rate: float,
    k: int,
    *,
    seed: int,
    exclude_true: bool = True,
    exact: bool = False,
    asym_map: str | dict[int, int] = "digits",
) -> np.ndarray:
    """Corrupt labels.

    Args:
        labels: (N,) true labels in [0, k).
        kind: symmetric | asymmetric | pairflip.
        rate: flip probability r in [0, 1].
        k: number of classes.
        seed: seed of the numpy generator used (nothing global is touched).
        exclude_true: symmetric only; draw the new label from the other k-1 classes.
        exact: choose exactly round(r * n) samples to flip (n = samples eligible to flip) instead of
            flipping each with probability r.
        asym_map: asymmetric only; built-in map name or {from: to}.

    Returns:
        (N,) given labels, int64.
    """
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"noise.rate: {rate} is outside [0, 1]")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(seed))
    n = len(labels)
    if kind == "asymmetric":
        m = _asym_map(asym_map, k)
        eligible = np.isin(labels, list(m))
    else:
        eligible = np.ones(n, dtype=bool)
    cand = np.flatnonzero(eligible)
    if exact:
        flip = np.zeros(n, dtype=bool)
        flip[rng.choice(cand, size=int(round(rate * len(cand))), replace=False)] = True
    else:
        flip = eligible & (rng.random(n) < rate)
    given = labels.copy()
    idx = np.flatnonzero(flip)
    if kind == "symmetric":
        if exclude_true:
            given[idx] = (labels[idx] + rng.integers(1, k, size=len(idx))) % k
        else:
            given[idx] = rng.integers(0, k, size=len(idx))
    elif kind == "pairflip":
        given[idx] = (labels[idx] + 1) % k
    elif kind == "asymmetric":
        lut = np.arange(k)
        for a, b in m.items():
            lut[a] = b
        given[idx] = lut[labels[idx]]
    else:
        raise ConfigError(f"noise.kind: cannot inject '{kind}'")
    return given


def realised_matrix(true: np.ndarray, given: np.ndarray, k: int) -> np.ndarray:
    """Row-normalised K×K confusion T[i, j] = #(true=i, given=j) / #(true=i); empty rows stay zero."""
    counts = np.zeros((k, k))
    np.add.at(counts, (np.asarray(true), np.asarray(given)), 1)
    rows = counts.sum(1, keepdims=True)
    return np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)


def apply_noise(ingested_train: pl.DataFrame, k: int, p: NoiseParams, seed: int) -> pl.DataFrame:
    """Build the NOISY table (sample_id, given_label, true_label, is_noisy) from the ingested train split."""
    ids = ingested_train["sample_id"]
    labels = ingested_train["label"].to_numpy().astype(np.int64)
    if p.kind == "none":
        given, true = labels, None
    elif p.kind == "real":
        noisy = ingested_train["noisy_label"]
        if noisy.null_count() == len(noisy):
            raise DataError(
                "noise.kind is 'real' but the ingested data has no noisy labels "
                "(set data.noisy_labels to a CIFAR-N label file, or use noise.kind: none)"
            )
        if noisy.null_count():
            row = int(np.flatnonzero(noisy.is_null().to_numpy())[0])
            raise DataError(f"ingested train: sample_id {ids[row]} has no noisy label")
        given, true = noisy.to_numpy().astype(np.int64), labels
    else:
        given, true = (
            inject(
                labels,
                p.kind,
                p.rate,
                k,
                seed=seed,
                exclude_true=p.exclude_true,
                exact=p.exact,
                asym_map=p.asym_map,
            ),
            labels,
        )
    return pl.DataFrame(
        {
            "sample_id": ids,
            "given_label": pl.Series(given.astype(np.int32)),
            "true_label": pl.Series(
                true.astype(np.int32) if true is not None else [None] * len(ids), dtype=pl.Int32
            ),
            "is_noisy": pl.Series(given != true if true is not None else [None] * len(ids), dtype=pl.Boolean),
        }
    )


def noise_report(noisy: pl.DataFrame, k: int, p: NoiseParams, class_names: list[str]) -> dict[str, Any]:
    """The noise_report.json content: requested vs realised rate and matrices."""
    rep: dict[str, Any] = {
        "kind": p.kind,
        "num_classes": k,
        "class_names": class_names,
        "num_samples": noisy.height,
    }
    injected = p.kind in ("symmetric", "asymmetric", "pairflip")
    rep["requested_rate"] = p.rate if injected else None
    if injected:
        rep.update(exclude_true=p.exclude_true, exact=p.exact)
        rep["expected_matrix"] = np.round(
            expected_matrix(p.kind, p.rate, k, exclude_true=p.exclude_true, asym_map=p.asym_map), 6
        ).tolist()
        if p.kind == "asymmetric":
            rep["asym_map"] = {str(a): b for a, b in _asym_map(p.asym_map, k).items()}
    if noisy["true_label"].null_count() == 0:
        true, given = noisy["true_label"].to_numpy(), noisy["given_label"].to_numpy()
        rep["realised_rate"] = float(np.mean(true != given))
        rep["realised_matrix"] = np.round(realised_matrix(true, given, k), 6).tolist()
        rep["per_class_noise_rate"] = {
            class_names[c]: float(np.mean(given[true == c] != c)) for c in range(k) if np.any(true == c)
        }
    else:
        rep["realised_rate"] = None
        rep["realised_matrix"] = None
    rep["estimate"] = None  # filled by noise estimation (noise.estimate), when enabled
    return rep
