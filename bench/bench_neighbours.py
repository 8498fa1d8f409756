"""Where FAISS, and then FAISS's IVF index, start to pay off for the knn detector: k-NN search of N
synthetic L2-normalised D-dimensional rows with scikit-learn's brute force, FAISS's exact IndexFlatIP and
FAISS's approximate IndexIVFFlat (the knn detector's `backend` values), in one run.

    python bench/bench_neighbours.py [--sizes 10000,100000,1000000] [--dim 1280] [--k 20] [--queries 2000]
        [--backends sklearn,faiss,faiss_ivf] [--ivf-probe 32] [--clusters 0]

Each size builds every backend's index once (timed) and searches `--queries` rows against all N (timed).
The detector searches all N rows, so the table also gives the full self-search, extrapolated as
build + query time x N / queries, and IVF's recall@k against the exact neighbours. Random rows are the
hard case for IVF (no clusters); `--clusters C` draws the rows around C random centres instead (noise of the
same norm as the centres), closer to embeddings of C classes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipeline.detectors.knn import ivf_lists_for, make_searcher  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--backends", default="sklearn,faiss,faiss_ivf")
    ap.add_argument("--ivf-probe", type=int, default=32)
    ap.add_argument("--clusters", type=int, default=0)
    args = ap.parse_args()
    backends = args.backends.split(",")
    rng = np.random.default_rng(0)
    kind = f"{args.clusters} clusters" if args.clusters else "uniform on the sphere"
    print(f"k = {args.k}, {args.dim}-d rows ({kind}), {args.queries} queries, IVF nprobe {args.ivf_probe}\n")
    print("| rows | backend | build s | query s | full self-search s (est.) | recall@k vs exact |")
    print("|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        x = rng.standard_normal((n, args.dim), dtype=np.float32)
        if args.clusters:
            centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
            x += centres[rng.integers(0, args.clusters, n)]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = x[: args.queries]
        exact = None
        for backend in backends:
            t0 = time.perf_counter()
            search = make_searcher(x, backend=backend, ivf_probe=args.ivf_probe)
            t1 = time.perf_counter()
            idx = search(q, args.k)
            t2 = time.perf_counter()
            if backend != "faiss_ivf":
                exact = idx if exact is None else exact
                recall = "exact"
            elif exact is not None:
                hits = [len(np.intersect1d(a, b)) for a, b in zip(idx, exact, strict=True)]
                recall = f"{np.mean(hits) / args.k:.3f}"
            else:
                recall = "n/a"
            name = f"faiss_ivf ({ivf_lists_for(n)} lists)" if backend == "faiss_ivf" else backend
            full = (t1 - t0) + (t2 - t1) * n / len(q)
            print(f"| {n} | {name} | {t1 - t0:.2f} | {t2 - t1:.2f} | {full:.0f} | {recall} |", flush=True)
        del x


if __name__ == "__main__":
    main()
