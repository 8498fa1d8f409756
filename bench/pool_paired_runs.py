"""Pool paired retrain runs (the same training seed on the noisy and on the cleaned labels) from several
bench runs into one paired comparison: the figures docs/results.md quotes for aggre over all its seeds.

    python bench/pool_paired_runs.py [bench/data/aggre_retrain_pairs.csv] [--out FILE]
    python bench/pool_paired_runs.py bench/data/aggre_retrain_pairs_margin.csv   # knn's current score
    python bench/pool_paired_runs.py bench/data/aggre_retrain_pairs.csv --seeds 32-71
    python bench/pool_paired_runs.py bench/data/aggre_retrain_pairs_margin.csv \
        --against bench/data/aggre_retrain_pairs.csv   # one cleaning against another, seed by seed

The CSV holds one row per run: `seed`, `host`, `noisy_labels` and `cleaned_labels` (test accuracy of the
fine-tuned CE on each), and `source`, the docs/results.md section whose bench command produced the pair.
Each host pairs its own runs (the fine-tune's last digits differ across CPUs); pooling pairs from two hosts
is sound because every difference is taken within one host and one seed. `--seeds A-B` keeps the runs at
those seeds; `--against OTHER` compares two cleanings: this file's `cleaned_labels` against OTHER's at the
same (host, seed), the runs both files hold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import emit, table  # noqa: E402  bench/, on the path when a script runs
from _paired import paired_summary  # noqa: E402

PAIRS = Path(__file__).with_name("data") / "aggre_retrain_pairs.csv"


def read_pairs(path: Path) -> pl.DataFrame:
    """The paired runs of one CSV; a (host, seed) pair given twice is refused."""
    runs = pl.read_csv(path)
    if runs.select(["host", "seed"]).is_duplicated().any():
        raise SystemExit(f"{path}: a (host, seed) pair appears twice")
    return runs


def seed_ranges(seeds: pl.Series) -> list[str]:
    """Sorted seeds as runs of consecutive numbers: [0, 6, 7, 8] -> ["0", "6-8"]."""
    out: list[list[int]] = []
    for s in sorted(seeds.to_list()):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return [f"{a}" if a == b else f"{a}-{b}" for a, b in out]


def against(runs: pl.DataFrame, other: pl.DataFrame) -> pl.DataFrame:
    """`runs` with `other`'s `cleaned_labels` as the baseline (`noisy_labels`), at the (host, seed) both
    hold."""
    base = other.select("host", "seed", pl.col("cleaned_labels").alias("noisy_labels"))
    return runs.drop("noisy_labels").join(base, on=["host", "seed"], how="inner", maintain_order="left")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="?", type=Path, default=PAIRS, help="CSV of paired runs")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    ap.add_argument("--seeds", help="only the runs at these training seeds, A-B (both included)")
    ap.add_argument("--against", type=Path, help="CSV of another cleaning's runs: the baseline instead")
    args = ap.parse_args()

    runs = read_pairs(args.pairs)
    if args.against is not None:
        runs = against(runs, read_pairs(args.against))
    if args.seeds is not None:
        first, last = (int(s) for s in args.seeds.split("-"))
        runs = runs.filter(pl.col("seed").is_between(first, last))
    if runs.height < 2:
        raise SystemExit(f"{args.pairs}: under two paired runs left to compare")
    # one row per bench run of two or more seeds (a single pair has no spread), then all runs pooled
    groups = [
        (f"{g['source'][0]}: {g['host'][0]}, seeds {', '.join(seed_ranges(g['seed']))}", g)
        for g in runs.partition_by("source", maintain_order=True)
        if len(g) > 1
    ]
    groups.append(("all", runs))
    baseline = "noisy" if args.against is None else "the other's cleaned"
    rows = []
    for name, g in groups:
        s = paired_summary(g["noisy_labels"].to_numpy(), g["cleaned_labels"].to_numpy())
        rows.append(
            {
                "runs": name,
                "n": s["runs"],
                f"cleaned − {baseline} (points, ± se)": f"{s['mean']:+.1f} ± {s['se']:.1f}",
                "sd": f"{s['sd']:.1f}",
                "ahead / behind / level": f"{s['ahead']} / {s['behind']} / {s['level']}",
                "paired t-test p": f"{s['t_p']:.3f}",
                "Wilcoxon p": f"{s['wilcoxon_p']:.3f}",
            }
        )
    emit(table(f"`python bench/pool_paired_runs.py {' '.join(sys.argv[1:])}`", rows), args.out)


if __name__ == "__main__":
    main()
