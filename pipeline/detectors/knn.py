"""`knn`: neighbour label agreement on frozen pretrained features (SimiFeat-style vote).

Each training sample's k nearest neighbours (cosine similarity of L2-normalised features, itself excluded)
vote with their given labels. `probs` is the smoothed vote share per class, (votes + 1/K) / (k + 1);
`noise_score` = 1 - probs[given]; `knn_agreement` = share of neighbours with the same given label.
`flag: vote` flags a sample whose majority neighbour label differs from its own; `flag: cleanlab` runs
cleanlab's `find_label_issues` on the vote shares instead. Test samples are classified by the same vote
among the training neighbours.

Neighbours come from scikit-learn's exact search, or from FAISS's exact inner-product index
(`faiss-cpu`, installed with the project) once the training split has `faiss_from` rows or more
(`backend: auto`; the crossover is measured by `bench/bench_neighbours.py`, see docs/results.md).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline.config import Strict
from pipeline.detectors.base import DetectorInput, DetectorResult, DetectorSpec, register_detector
from pipeline.errors import ConfigError
from pipeline.schemas import Column


class KnnOptions(Strict):
    """`detector.knn:` options."""

    k: int = Field(20, ge=1)  # neighbours per sample
    flag: Literal["vote", "cleanlab"] = "vote"
    backend: Literal["auto", "sklearn", "faiss"] = "auto"
    faiss_from: int = Field(1000, ge=1)  # auto: FAISS from this many training rows (faster from 1.5k here)


def neighbours(
    base: np.ndarray, queries: np.ndarray, k: int, *, exclude_self: bool, backend: str = "sklearn"
) -> np.ndarray:
    """(Q, k) row indices into `base` of each query's nearest neighbours by inner product (cosine on
    L2-normalised rows), most similar first; with `exclude_self` the queries are `base` and each row's own
    index is left out."""
    extra = 1 if exclude_self else 0
    kk = min(k + extra, len(base))
    if backend == "faiss":
        try:
            import faiss
        except ImportError:
            raise ConfigError("detector.knn.backend: faiss needs the package faiss-cpu") from None
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(np.ascontiguousarray(base, dtype=np.float32))
        _, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), kk)
    else:
        from sklearn.neighbors import NearestNeighbors

        idx = (
            NearestNeighbors(n_neighbors=kk, algorithm="brute", metric="cosine")
            .fit(base)
            .kneighbors(queries, return_distance=False)
        )
    if not exclude_self:
        return idx[:, :k]
    rows = np.arange(len(queries))[:, None]
    keep = idx != rows  # drop the row itself wherever it was ranked (duplicates may come first)
    return np.stack([r[m][: kk - 1] for r, m in zip(idx, keep, strict=True)])


def vote_shares(neighbour_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, k) neighbour labels -> (N, K) smoothed vote shares (votes + 1/K) / (k + 1). Pure."""
    k = neighbour_labels.shape[1]
    counts = np.stack([(neighbour_labels == c).sum(1) for c in range(num_classes)], 1)
    return ((counts + 1.0 / num_classes) / (k + 1.0)).astype(np.float64)


def detect_knn(opts: KnnOptions, data: DetectorInput) -> DetectorResult:
    """Neighbour vote on the training features; see the module docstring."""
    from cleanlab.filter import find_label_issues

    if len(data.train) < 2:
        raise ConfigError("detector.knn: needs at least 2 training samples")
    k = min(opts.k, len(data.train) - 1)
    backend = opts.backend
    if backend == "auto":
        backend = "faiss" if len(data.train) >= opts.faiss_from else "sklearn"
    idx = neighbours(data.train, data.train, k, exclude_self=True, backend=backend)
    labels = np.asarray(data.labels)
    shares = vote_shares(labels[idx], data.num_classes)
    agreement = (labels[idx] == labels[:, None]).mean(1)
    if opts.flag == "vote":
        flags = shares.argmax(1) != labels
    else:
        flags = find_label_issues(labels, shares / shares.sum(1, keepdims=True))
    test_idx = neighbours(data.train, data.test, k, exclude_self=False, backend=backend)
    return DetectorResult(
        probs=shares.astype(np.float32),
        flagged=np.asarray(flags, dtype=bool),
        test_probs=vote_shares(labels[test_idx], data.num_classes).astype(np.float32),
        extra={"knn_agreement": agreement.astype(np.float32)},
        log={"k": float(k)},
    )


SPEC = register_detector(
    DetectorSpec(
        "knn",
        KnnOptions,
        detect_knn,
        "k-nearest-neighbour label vote on frozen pretrained features",
        columns=(
            Column(
                "knn_agreement",
                pa.float32(),
                min_value=0.0,
                max_value=1.0,
                direction="higher = more neighbours share the given label (more likely clean)",
                description="knn: share of the k nearest training neighbours with the same given label.",
            ),
        ),
    )
)
