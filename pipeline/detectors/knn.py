"""`knn`: neighbour label agreement on frozen pretrained features (SimiFeat-style vote).

Each training sample's k nearest neighbours (cosine similarity of L2-normalised features, itself excluded)
vote with their given labels. `probs` is the smoothed vote share per class, (votes + 1/K) / (k + 1);
`noise_score` = 1 - cleanlab's label-quality score of the given label on those shares (`scoring`: by
default the normalized margin, so a label scores as wrong by how far another class out-votes it;
`self_confidence` gives 1 - probs[given]); `knn_agreement` = share of neighbours with the same given label.
`flag: vote` flags a sample whose majority neighbour label differs from its own; `flag: cleanlab` runs
cleanlab's `find_label_issues` on the vote shares instead. Test samples are classified by the same vote
among the training neighbours.

Neighbours come from scikit-learn's exact search, from FAISS's exact inner-product index (`faiss-cpu`,
installed with the project) once the training split has `faiss_from` rows or more, and from FAISS's
approximate IVF index from `ivf_from` rows (`backend: auto`; the crossovers are measured by
`bench/bench_neighbours.py`, see docs/results.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

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
    register_detector,
)
from pipeline.errors import ConfigError
from pipeline.schemas import Column


class KnnOptions(Strict):
    """`detector.knn:` options."""

    k: int = Field(20, ge=1)  # neighbours per sample
    flag: Literal["vote", "cleanlab"] = "vote"
    scoring: LabelQualityScoring = "normalized_margin"  # noise_score = 1 - this cleanlab label quality of
    # the vote shares; normalized_margin ranks more wrong labels first than self_confidence on all three
    # CIFAR-10N label sets (docs/results.md)
    backend: Literal["auto", "sklearn", "faiss", "faiss_ivf"] = "auto"
    faiss_from: int = Field(
        1000, ge=1
    )  # auto: exact FAISS from this many training rows (faster from 1.5k here)
    ivf_from: int = Field(1_000_000, ge=1)  # auto: approximate FAISS IVF from this many training rows
    ivf_lists: int | None = Field(None, ge=1)  # IVF inverted lists; None = about sqrt(training rows)
    ivf_probe: int = Field(32, ge=1)  # IVF lists visited per query (more = closer to exact, slower)


def ivf_lists_for(rows: int) -> int:
    """Inverted lists for an IVF index over `rows` rows: about sqrt(rows), at least 1, and at most one list
    per 39 rows (FAISS's k-means wants >= 39 training points per centroid)."""
    return int(max(1, min(round(np.sqrt(rows)), rows // 39)))


def make_searcher(
    base: np.ndarray, *, backend: str = "sklearn", ivf_lists: int | None = None, ivf_probe: int = 16
) -> Callable[[np.ndarray, int], np.ndarray]:
    """Build the neighbour index over `base` (N, D) once; returns `search(queries (Q, D), k) -> (Q, k)` row
    indices into `base` by inner product, most similar first.

    `backend`: `sklearn` (exact, brute force), `faiss` (exact, `IndexFlatIP`) or `faiss_ivf` (approximate,
    `IndexIVFFlat` with `ivf_lists` lists, `ivf_lists_for(N)` when None, of which `ivf_probe` are visited per
    query; FAISS's k-means trains on at most 64 rows per list)."""
    if backend in ("faiss", "faiss_ivf"):
        try:
            import faiss
        except ImportError:
            raise ConfigError(f"detector.knn.backend: {backend} needs the package faiss-cpu") from None
        rows = np.ascontiguousarray(base, dtype=np.float32)
        if backend == "faiss":
            index = faiss.IndexFlatIP(rows.shape[1])
        else:
            lists = ivf_lists or ivf_lists_for(len(rows))
            index = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(rows.shape[1]), rows.shape[1], lists, faiss.METRIC_INNER_PRODUCT
            )
            index.cp.max_points_per_centroid = 64
            index.train(rows)
            index.nprobe = min(ivf_probe, lists)
        index.add(rows)

        def search(queries: np.ndarray, k: int) -> np.ndarray:
            return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]

        return search
    if backend != "sklearn":
        raise ConfigError(f"detector.knn.backend: unknown backend {backend!r}")
    from sklearn.neighbors import NearestNeighbors

    fitted = NearestNeighbors(algorithm="brute", metric="cosine").fit(base)
    return lambda queries, k: fitted.kneighbors(queries, n_neighbors=k, return_distance=False)


def neighbours(
    base: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    exclude_self: bool,
    backend: str = "sklearn",
    search: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> np.ndarray:
    """(Q, k) row indices into `base` of each query's nearest neighbours by inner product (cosine on
    L2-normalised rows), most similar first; with `exclude_self` the queries are `base` and each row's own
    index is left out. `search` reuses an index from `make_searcher` (else one is built with `backend`)."""
    extra = 1 if exclude_self else 0
    kk = min(k + extra, len(base))
    idx = (search or make_searcher(base, backend=backend))(queries, kk)
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
    if len(data.train) < 2:
        raise ConfigError("detector.knn: needs at least 2 training samples")
    k = min(opts.k, len(data.train) - 1)
    backend = opts.backend
    if backend == "auto":
        n = len(data.train)
        backend = "faiss_ivf" if n >= opts.ivf_from else "faiss" if n >= opts.faiss_from else "sklearn"
    search = make_searcher(data.train, backend=backend, ivf_lists=opts.ivf_lists, ivf_probe=opts.ivf_probe)
    idx = neighbours(data.train, data.train, k, exclude_self=True, search=search)
    labels = np.asarray(data.labels)
    shares = vote_shares(labels[idx], data.num_classes)
    agreement = (labels[idx] == labels[:, None]).mean(1)
    if opts.flag == "vote":
        flags = shares.argmax(1) != labels
    else:
        flags = label_issue_flags(labels, shares / shares.sum(1, keepdims=True))
    test_idx = neighbours(data.train, data.test, k, exclude_self=False, search=search)
    return DetectorResult(
        probs=shares.astype(np.float32),
        flagged=np.asarray(flags, dtype=bool),
        test_probs=vote_shares(labels[test_idx], data.num_classes).astype(np.float32),
        noise_score=(1.0 - label_quality(labels, shares, scoring=opts.scoring)).astype(np.float32),
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
