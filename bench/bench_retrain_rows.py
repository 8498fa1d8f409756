"""Which rows the fine-tuned retrain loses, one change at a time: the pipeline's `retrain` (CE) on edited
cleaned-label files of a `bench_clean_retrain.py` workspace, at the params' seed.

    python bench/bench_clean_retrain.py --keys aggre_label --work /tmp/cr   # once: the workspace
    python bench/bench_retrain_rows.py --work /tmp/cr/aggre_label [--drop 176] [--out FILE]

Rows: every training row with its given label (the retrain path must reproduce CE on the noisy labels);
`--drop` rows dropped at random; every truly wrong row dropped (an oracle); the workspace's own cleaning.
The table gives each run's training rows, the size of the epoch's trailing batch before training leaves
out one under a quarter of the batch size, and the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import yaml  # noqa: E402
from _markdown import emit  # noqa: E402  bench/, on the path when a script runs

from pipeline.params import parse_params  # noqa: E402
from pipeline.run import run_retrain  # noqa: E402


def variants(cleaned: pl.DataFrame, noisy: pl.DataFrame, drop: int, seed: int) -> dict[str, pl.DataFrame]:
    """Cleaned-label tables: keep-all, a random drop, the oracle drop, and the workspace's own."""
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
        "every row, given labels": keep_all,
        f"{drop} rows dropped at random": dropping(random_drop),
        "every wrong row dropped (oracle)": dropping(wrong.to_numpy()),
        "the workspace's cleaning": cleaned,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="a bench_clean_retrain label-set folder")
    ap.add_argument("--params", type=Path, default=Path("presets/cifar10n_cpu.yaml"))
    ap.add_argument("--key", default="aggre_label", help="data.noisy_label_key of that folder")
    ap.add_argument("--drop", type=int, default=176)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    raw = yaml.safe_load(a.params.read_text())
    raw["data"]["noisy_label_key"] = a.key
    raw["methods"] = ["ce"]
    params = parse_params(raw)
    cleaned = pl.read_parquet(a.work / "cleaned/labels.parquet")
    noisy = pl.read_parquet(a.work / "noisy/train.parquet")
    batch = params.train.batch_size
    lines = [
        f"`python bench/bench_retrain_rows.py {' '.join(sys.argv[1:])}`: seed {params.seed}, batch {batch}",
        "",
        "| training rows | rows | trailing batch | test acc |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, table in variants(cleaned, noisy, a.drop, params.seed).items():
            path, out = Path(tmp) / "cleaned.parquet", Path(tmp) / "retrain.json"
            table.write_parquet(path)
            run_retrain(params, a.work / "ingested", a.work / "noisy/train.parquet", path, out,
                        Path(tmp) / "retrain.csv", None)  # fmt: skip
            res = json.loads(out.read_text())
            rows = res["train_samples"]
            lines.append(f"| {name} | {rows} | {rows % batch} | {res['test_acc_last']:.3f} |")
    emit(lines, a.out)


if __name__ == "__main__":
    main()
