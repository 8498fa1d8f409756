"""Where FAISS starts to pay off for the knn detector: exact k-NN self-search of N synthetic L2-normalised
D-dimensional rows with scikit-learn's brute-force search against FAISS's IndexFlatIP, in one run.

    python bench/bench_neighbours.py [--sizes 10000,100000,1000000] [--dim 1280] [--k 20] [--queries 2000]

Each size searches `--queries` rows against all N (the full self-search costs N / queries times that) and
prints the seconds and the ratio as Markdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipeline.detectors.knn import neighbours  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--queries", type=int, default=2000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"| rows | sklearn s ({args.queries} queries) | faiss s | sklearn / faiss | full search, faiss s |")
    print("|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        x = rng.standard_normal((n, args.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = x[: args.queries]
        times = {}
        for backend in ("sklearn", "faiss"):
            t0 = time.perf_counter()
            neighbours(x, q, args.k, exclude_self=False, backend=backend)
            times[backend] = time.perf_counter() - t0
        full = times["faiss"] * n / len(q)
        print(
            f"| {n} | {times['sklearn']:.2f} | {times['faiss']:.2f} | "
            f"{times['sklearn'] / times['faiss']:.2f} | {full:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
