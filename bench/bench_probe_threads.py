"""The probe's out-of-fold fits on 1 BLAS thread against more (`detector.probe.blas_threads`), in one run:
wall seconds of `probe_oof` (every fold x every C of the grid, as the noise stage runs it) and how far the
probabilities move between the settings.

    python bench/bench_probe_threads.py --workspace /tmp/def [--threads 1,2] [--repeats 2] [--out FILE]
    python bench/bench_probe_threads.py --sizes 1500,20000 [--threads 1,2]

`--workspace` takes a finished `dvc repro` workspace and fits on its `features/embeddings.parquet` and
`data/noisy/train.parquet` (the default run's own problem); `--sizes` fits on N synthetic L2-normalised
1 280-d rows around 10 class centres, 30% of the labels redrawn at random.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from _markdown import emit  # noqa: E402  bench/, on the path when a script runs

from pipeline.detectors.probe import probe_oof  # noqa: E402


def workspace_problem(ws: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """(name, (N, D) features, (N,) given labels) of a finished default-run workspace."""
    from pipeline.embed import load_features

    noisy = pl.read_parquet(ws / "data/noisy/train.parquet")
    test = pl.read_parquet(ws / "data/ingested/test.parquet")
    feats = load_features(
        ws / "features/embeddings.parquet", noisy["sample_id"].to_numpy(), test["sample_id"].to_numpy()
    )
    return (
        f"{ws} ({feats.train.shape[0]} x {feats.train.shape[1]})",
        feats.train,
        noisy["given_label"].to_numpy(),
    )


def synthetic_problem(n: int, seed: int = 0) -> tuple[str, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, 1280))
    y = rng.integers(0, 10, n)
    x = (centres[y] + 3.0 * rng.normal(size=(n, 1280))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    flip = rng.random(n) < 0.3
    y[flip] = rng.integers(0, 10, int(flip.sum()))
    return f"synthetic ({n} x 1280)", x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, default=None)
    ap.add_argument("--sizes", default="", help="synthetic row counts, comma-separated")
    ap.add_argument("--threads", default="1,2", help="BLAS thread counts to compare")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    problems = [workspace_problem(args.workspace)] if args.workspace else []
    problems += [synthetic_problem(int(n)) for n in args.sizes.split(",") if n]
    if not problems:
        ap.error("give --workspace and/or --sizes")
    threads = [int(t) for t in args.threads.split(",")]
    lines = [
        f"`python bench/bench_probe_threads.py {' '.join(sys.argv[1:])}`: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, 5 folds x C grid (0.3, 1, 3, 10), lbfgs max_iter 2000",
        "",
        "| problem | BLAS threads | seconds (each repeat) | max abs prob. difference to the first row |",
        "|---|---|---|---|",
    ]
    for name, x, y in problems:
        first = None
        for t in threads:
            secs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                oof, _, _ = probe_oof(
                    x, y, num_classes=int(y.max()) + 1, folds=5, C="auto", seed=0, blas_threads=t
                )
                secs.append(time.perf_counter() - start)
            first = oof if first is None else first
            diff = float(np.abs(oof - first).max())
            lines.append(f"| {name} | {t} | {', '.join(f'{s:.2f}' for s in secs)} | {diff:.4f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
