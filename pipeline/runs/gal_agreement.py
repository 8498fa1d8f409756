"""Stage gal_agreement: GAL's Figure 1, the agreement ratio per step at several noise rates.

The stage script calls the `run_*` function here; it writes through `staged_outputs()`, so nothing
appears unless it all succeeded.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.config import Params
from pipeline.data.sources import subsample
from pipeline.errors import DataError
from pipeline.io import read_table, staged_outputs
from pipeline.noise import apply_noise
from pipeline.runs.train import decode_splits, train_method
from pipeline.schemas import AGREEMENT_COLUMNS, INGESTED
from pipeline.train import resolve_device


def run_gal_agreement(params: Params, ingested_dir: Path, out_csv: Path) -> None:
    """GAL's Figure 1: train θA + θB once per `gal_agreement.rates` and log the agreement ratio per step.

    As the paper's Figure 1 experiment: after the warm-up, θA = θB are fed class-matched batches and BOTH
    train normally (`update: all`) while the gate is measured, so `gate_ratio` (share of parameters whose
    gradient cosine is ≥ τ) shows how far noisy labels pull the two gradients apart. Each run injects
    symmetric noise at the rate into the ingested labels (the `noise` section's other keys and `seed`
    apply; noise estimation is off) and trains `gal` for `gal_agreement.epochs` epochs with `method.gal`'s
    other options and `third_net: false`, on a stratified subsample of `gal_agreement.max_samples` training
    images when set. One row per step, columns `AGREEMENT_COLUMNS`; agreement_ratio
    (share updated: 1) and gate_ratio are NaN during the warm-up.
    """
    train_df, names = read_table(ingested_dir / "train.parquet", INGESTED)
    test_df, _ = read_table(ingested_dir / "test.parquet", INGESTED)
    k, sweep = len(names), params.gal_agreement
    train_df = subsample(train_df, sweep.max_samples, params.seed)
    cfg = params.train.model_copy(update={"epochs": sweep.epochs, "resume": False})
    run_params = params.model_copy(update={"train": cfg})
    opts = {**(params.method.get("gal") or {}), "third_net": False, "update": "all"}
    device = resolve_device(cfg.device)
    frames = []
    for rate in sweep.rates:
        noise = params.noise.model_copy(update={"kind": "symmetric", "rate": rate, "estimate": False})
        noisy = apply_noise(train_df, k, noise, params.seed)
        truth = noisy["true_label"].to_numpy()
        train, test = decode_splits(
            train_df,
            noisy["given_label"].to_numpy(),
            test_df,
            cfg,
            device,
            truth,
            ingested_dir / "test.parquet",
        )
        _, _, res = train_method("gal", opts, run_params, train, test, k, device, None)
        realised = float(noisy["is_noisy"].mean())
        steps = pl.from_dicts(res.steps, infer_schema_length=None)
        if steps.filter(pl.col("epoch") == sweep.epochs)["gate_ratio"].drop_nulls().is_empty():
            raise DataError(
                f"gal_agreement: {len(train)} training samples give no pair of class-matched batches of "
                f"train.batch_size {cfg.batch_size} after the warm-up; raise gal_agreement.max_samples or "
                f"lower train.batch_size"
            )
        frames.append(steps.with_columns(noise_rate=pl.lit(rate), realised_rate=pl.lit(realised)))
        print(
            f"gal_agreement: noise {rate:.2f} (realised {realised:.3f}): last-epoch gate ratio "
            f"{steps.filter(pl.col('epoch') == sweep.epochs)['gate_ratio'].mean():.4f}, A+B test_acc "
            f"{res.log[-1]['test_acc']:.4f}"
        )
    schema = {c: pl.Float64 for c in AGREEMENT_COLUMNS} | {"step": pl.Int64, "epoch": pl.Int64}
    table = (
        pl.concat([f.select(AGREEMENT_COLUMNS) for f in frames]) if frames else pl.DataFrame(schema=schema)
    )
    with staged_outputs() as out:
        out.write_csv(out_csv, table)
