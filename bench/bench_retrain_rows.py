"""Which rows the fine-tuned retrain loses, one change at a time: the pipeline's `retrain` (CE) on edited
cleaned-label files of a `bench_clean_retrain.py` workspace, at the params' seed or over several.

    python bench/bench_clean_retrain.py --keys aggre_label --work /tmp/cr   # once: the workspace
    python bench/bench_retrain_rows.py --work /tmp/cr/aggre_label [--drop 176] [--out FILE]
    python bench/bench_retrain_rows.py --work /tmp/cr/aggre_label --rows all,oracle,cleaning --seeds 6

Rows (`--rows`): `all`, every training row with its given label (the retrain path must reproduce CE on the
noisy labels); `random`, `--drop` rows dropped at random; `oracle`, every truly wrong row dropped; `cleaning`,
the workspace's own cleaning; `cleaning-hits`, that cleaning with its changes to truly right rows undone
(those rows keep their given label): what its drops of right labels cost. The table gives each run's training
rows, the size of the epoch's trailing batch before training leaves out one under a quarter of the batch size,
and the test accuracy.
With `--seeds N` every row is trained at seeds seed+F .. seed+F+N-1 (F = `--first-seed`) over the same
rows, and the table gives the mean ± sd of the test accuracy, each seed's value, and, against `all` at the
same seed, the paired difference's mean ± its standard error: how far the gain of a perfect cleaning (the
oracle) stands out of the fine-tune's seed-to-seed spread. `--all-from FILE` takes the `all` row's per-seed
values from an earlier `--out` table at the same seeds instead of training it again: `all` does not depend
on the workspace's cleaning, so another cleaning of the same label set can be paired with it. Only compare
runs from the same host (the fine-tune's last digits differ across CPUs); `--rows all,cleaning --seeds 1`
at the first seed checks that `all` reproduces.

    python bench/bench_retrain_rows.py --work /tmp/cr2/aggre_label --rows cleaning --seeds 20 \
        --first-seed 12 --all-from /tmp/rows20.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import yaml  # noqa: E402
from _markdown import emit, table  # noqa: E402  bench/, on the path when a script runs
from _paired import paired_summary  # noqa: E402

from pipeline.params import parse_params  # noqa: E402
from pipeline.run import run_retrain  # noqa: E402

ROWS = {
    "all": "every row, given labels",
    "random": "{drop} rows dropped at random",
    "oracle": "every wrong row dropped (oracle)",
    "cleaning": "the workspace's cleaning",
    "cleaning-hits": "the cleaning's changes to wrong rows only (oracle)",
}


def variants(cleaned: pl.DataFrame, noisy: pl.DataFrame, drop: int, seed: int) -> dict[str, pl.DataFrame]:
    """Cleaned-label tables by `ROWS` key: keep-all, a random drop, the oracle drop, the workspace's own,
    and the workspace's own on wrong rows only."""
    keep_all = cleaned.with_columns(
        pl.col("given_label").alias("cleaned_label"), pl.col("given_class").alias("cleaned_class"),
        pl.lit("keep").alias("action"),
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    random_drop = np.zeros(cleaned.height, dtype=bool)
    random_drop[rng.choice(cleaned.height, drop, replace=False)] = True
    wrong = cleaned.join(noisy.select("sample_id", "is_noisy"), on="sample_id", maintain_order="left")[
        "is_noisy"
    ]

    def dropping(mask) -> pl.DataFrame:
        gone = pl.Series(mask)
        return keep_all.with_columns(
            pl.when(gone).then(pl.lit("drop")).otherwise(pl.col("action")).alias("action"),
            pl.when(gone).then(None).otherwise(pl.col("cleaned_label")).alias("cleaned_label"),
            pl.when(gone).then(None).otherwise(pl.col("cleaned_class")).alias("cleaned_class"),
        )

    return {
        "all": keep_all,
        "random": dropping(random_drop),
        "oracle": dropping(wrong.to_numpy()),
        "cleaning": cleaned,
        "cleaning-hits": cleaned.with_columns(  # wrong rows as the cleaning left them, right rows as given
            pl.when(wrong).then(pl.col(c)).otherwise(keep_all[c]).alias(c)
            for c in ("action", "cleaned_label", "cleaned_class")
        ),
    }


def paired(values: list[float], base: list[float]) -> str:
    """The paired difference `values - base` over seeds as 'mean ± standard error', in accuracy units."""
    s = paired_summary(np.asarray(base), np.asarray(values))
    return f"{s['mean'] / 100:+.3f} ± {s['se'] / 100:.3f}"


def earlier_all(path: Path, seeds: range) -> list[float]:
    """The `all` row's per-seed test accuracies from an earlier `--out` table of this script at `seeds`."""
    lines = path.read_text().splitlines()
    span = f"seeds {seeds.start}-{seeds.stop - 1}"
    if not lines or span not in lines[0]:
        raise SystemExit(f"--all-from {path}: its first line is not a run at {span}")
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    if not rows or "per seed" not in rows[0]:
        raise SystemExit(f"--all-from {path}: no table with a `per seed` column")
    column = rows[0].index("per seed")
    for cells in rows[2:]:
        if cells[0].startswith(ROWS["all"]):
            values = [float(v) for v in cells[column].split(",")]
            if len(values) != len(seeds):
                raise SystemExit(f"--all-from {path}: {len(values)} `all` values for {len(seeds)} seeds")
            return values
    raise SystemExit(f"--all-from {path}: no `{ROWS['all']}` row")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a bench_clean_retrain label-set folder")
    ap.add_argument("--params", type=Path, default=Path("presets/cifar10n_cpu.yaml"))
    ap.add_argument("--key", default="aggre_label", help="data.noisy_label_key of that folder")
    ap.add_argument("--drop", type=int, default=176)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per row")
    ap.add_argument("--first-seed", type=int, default=0, help="the first training seed past the params' seed")
    ap.add_argument("--all-from", type=Path, default=None, help="an earlier --out table's `all` row")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = a.rows.split(",")
    if unknown := [r for r in rows if r not in ROWS]:
        ap.error(f"--rows: unknown {unknown}; known: {list(ROWS)}")
    if a.all_from is not None and "all" in rows:
        ap.error("--all-from replaces the `all` row: leave `all` out of --rows")
    if a.seeds > 1 and "all" not in rows and a.all_from is None:
        ap.error("--seeds > 1 pairs every row with `all` at the same seed: include `all` in --rows")
    raw = yaml.safe_load(a.params.read_text())
    raw["data"]["noisy_label_key"] = a.key
    raw["methods"] = ["ce"]
    params = parse_params(raw)
    cleaned = pl.read_parquet(a.work / "cleaned/labels.parquet")
    noisy = pl.read_parquet(a.work / "noisy/train.parquet")
    tables = variants(cleaned, noisy, a.drop, params.seed)  # the same rows at every training seed
    seeds = range(params.seed + a.first_seed, params.seed + a.first_seed + a.seeds)
    batch = params.train.batch_size
    accs: dict[str, list[float]] = {r: [] for r in rows}
    sizes: dict[str, int] = {}
    if a.all_from is not None:
        accs["all"] = earlier_all(a.all_from, seeds)
        sizes["all"] = noisy.height
    with tempfile.TemporaryDirectory() as tmp:
        paths = {r: Path(tmp) / f"{r}.parquet" for r in rows}  # each row's cleaned-label file, written once
        for r, path in paths.items():
            tables[r].write_parquet(path)
        out = Path(tmp) / "retrain.json"
        for seed in seeds:
            p_s = parse_params({**raw, "seed": seed})
            for r in rows:
                run_retrain(p_s, a.work / "ingested", a.work / "noisy/train.parquet", paths[r], out,
                            Path(tmp) / "retrain.csv", None)  # fmt: skip
                res = json.loads(out.read_text())
                sizes[r] = res["train_samples"]
                accs[r].append(res["test_acc_last"])
                print(f"seed {seed}, {r}: {sizes[r]} rows, test acc {accs[r][-1]:.3f}", flush=True)
    head = f"`python bench/bench_retrain_rows.py {' '.join(sys.argv[1:])}`: batch {batch}, "
    head += f"seed {seeds.start}" if a.seeds == 1 else f"seeds {seeds.start}-{seeds.stop - 1}"
    out_rows = []
    for r in (["all"] if a.all_from is not None else []) + rows:
        v, n = accs[r], sizes[r]
        label = ROWS[r].format(drop=a.drop) + (f" (from {a.all_from})" if r == "all" and a.all_from else "")
        row = {"training rows": label, "rows": n, "trailing batch": n % batch}
        if a.seeds == 1:
            row["test acc"] = f"{v[0]:.3f}"
        else:
            row["test acc"] = f"{statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f}"
            row["per seed"] = ", ".join(f"{x:.3f}" for x in v)
            row["− every row (paired, ± se)"] = "" if r == "all" else paired(v, accs["all"])
        out_rows.append(row)
    lines = table(head, out_rows)
    emit(lines, a.out)


if __name__ == "__main__":
    main()
