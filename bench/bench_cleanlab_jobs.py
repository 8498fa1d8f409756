"""cleanlab's `find_label_issues` with its own worker pool (cleanlab's default `n_jobs`) against one process
(`n_jobs=1`, what `pipeline.detectors.base.label_issue_flags` runs), on the real-noise dev set: the flags
must be the same; the table gives both times.

For each label set it runs the preset's ingest and noise stages through their pipeline functions on one
embeddings file (the embed stage's output: the features do not depend on the labels) and takes the probe's
out-of-fold probabilities that the noise stage writes. Run it in a fresh process: the pool needs the fork
start method, which is Linux's default before Python 3.14.

    python bench/bench_cleanlab_jobs.py --features features/embeddings.parquet \
        --keys worse_label,aggre_label --out /tmp/cleanlab_jobs.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from _markdown import emit  # noqa: E402  bench/, on the path when a script runs

from pipeline.io import read_table  # noqa: E402
from pipeline.params import parse_params  # noqa: E402
from pipeline.run import run_ingest, run_noise  # noqa: E402
from pipeline.schemas import NOISY, OOF_PROBS  # noqa: E402

FILTERS = ("prune_by_noise_rate", "prune_by_class", "both")


def seconds(fn, repeats: int, *args, **kwargs) -> tuple[np.ndarray, float]:
    """`fn(*args, **kwargs)`'s result and its median wall time over `repeats` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main() -> None:
    from cleanlab.filter import find_label_issues

    from pipeline.detectors.base import label_issue_flags

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("presets/cifar10n_cpu.yaml"))
    ap.add_argument("--features", type=Path, required=True, help="the embed stage's embeddings.parquet")
    ap.add_argument("--keys", default="worse_label,aggre_label")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gradclean-cleanlab-jobs"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    a = ap.parse_args()
    raw = yaml.safe_load(a.params.read_text())
    lines = [
        f"`{' '.join(sys.argv)}`: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "",
        "| labels | filter_by | flagged: pool | flagged: one process | same flags | pool s | one process s |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in a.keys.split(","):
        params = parse_params({**raw, "data": {**raw["data"], "noisy_label_key": key}})
        d = a.work / key
        shutil.rmtree(d, ignore_errors=True)
        run_ingest(params, d / "ingested")
        noisy, oof = d / "noisy/train.parquet", d / "noisy/oof.parquet"
        run_noise(params, d / "ingested", noisy, d / "noisy/report.json", oof, a.features)
        given = read_table(noisy, NOISY)[0].sort("sample_id")["given_label"].to_numpy()
        probs = np.stack(read_table(oof, OOF_PROBS)[0].sort("sample_id")["probs"].to_list())
        probs = probs.astype(np.float64) / probs.sum(1, keepdims=True)
        for fb in FILTERS:
            pool, t_pool = seconds(find_label_issues, a.repeats, given, probs, filter_by=fb)
            one, t_one = seconds(label_issue_flags, a.repeats, given, probs, filter_by=fb)
            same = "yes" if np.array_equal(pool, one) else "**no**"
            lines.append(
                f"| {key} | {fb} | {pool.sum()} | {one.sum()} | {same} | {t_pool:.3f} | {t_one:.3f} |"
            )
            print(lines[-1], flush=True)
    emit(lines, a.out)


if __name__ == "__main__":
    main()
