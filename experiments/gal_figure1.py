"""GAL's Figure 1 on gradclean's own data: how far noisy labels pull two networks' gradients apart.

After a warm-up on one network, θA = θB are fed class-matched disjoint batches and BOTH train normally
(`update: all`) while GAL's gate is measured: `gate_ratio` is the share of parameter scalars whose gradient
cosine between θA and θB is ≥ τ. Each run injects symmetric noise at one rate into the ingested labels
(params' `noise` keys and `seed` apply; no estimate) and trains `gal` with `method.gal`'s other options and
`third_net: false`. The product pipeline does not run this; it is a paper experiment.

    dvc repro ingest       # the ingested tables this reads (or any finished run)
    python experiments/gal_figure1.py --out experiments/results/gal_figure1

writes `<out>/agreement.csv` (one row per step), `<out>/summary.json` (last-epoch means per rate) and
`<out>/figure1.png`. `--params experiments/gal_cifar10.yaml --epochs 200` is the paper's scale (a GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated

import polars as pl
from pydantic import Field, ValidationError, field_validator

from pipeline.config import Strict, _format
from pipeline.errors import ConfigError, DataError, GradcleanError
from pipeline.io import staged_outputs

COLUMNS = (
    "noise_rate",  # requested symmetric flip probability
    "realised_rate",  # share of training labels actually flipped
    "step",  # 1-based optimiser step over the whole run
    "epoch",  # 1-based
    "loss",  # the step's training loss
    "agreement_ratio",  # share of parameters updated (1 with `update: all`); NaN in the warm-up
    "gate_ratio",  # share of parameter scalars with cosine ≥ τ; NaN in the warm-up
    "unit_gate_ratio",  # share of parameter tensors with cosine ≥ τ
    "mean_cosine",  # mean gradient cosine g over the parameters
)
SUMMARY = ("gate_ratio", "unit_gate_ratio", "mean_cosine")


class SweepOptions(Strict):
    """The sweep: one θA + θB run per rate."""

    rates: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        default_factory=lambda: [0.0, 0.2, 0.5, 0.8], min_length=1
    )  # symmetric flip probabilities
    epochs: int = Field(8, ge=1)  # per rate, method.gal.warmup_epochs included
    max_samples: int | None = Field(480, ge=2)  # stratified subsample of the train split (None = all)

    @field_validator("rates")
    @classmethod
    def _unique(cls, v: list[float]) -> list[float]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate rates in {v}")
        return v


def sweep(params, sweep_opts: SweepOptions, ingested_dir: Path) -> pl.DataFrame:
    """Run the sweep; one row per optimiser step, columns `COLUMNS`.

    Args:
        params: validated gradclean `Params` (`train`, `noise`, `seed`, `method.gal` apply).
        sweep_opts: rates, epochs and subsample size.
        ingested_dir: the ingest stage's output folder (`train.parquet`, `test.parquet`).

    Raises:
        ConfigError: `--epochs` leaves no step after GAL's warm-up.
        DataError: the subsample gives no pair of class-matched batches after the warm-up.
    """
    from pipeline.data.sources import subsample
    from pipeline.io import read_table
    from pipeline.methods import REGISTRY
    from pipeline.noise import apply_noise
    from pipeline.runs.train import decode_splits, train_method
    from pipeline.schemas import INGESTED
    from pipeline.train import resolve_device

    gal = REGISTRY["gal"].options.model_validate(params.method.get("gal") or {})
    if sweep_opts.epochs <= gal.warmup_epochs:
        raise ConfigError(
            f"--epochs: {sweep_opts.epochs} leaves no step after GAL's warm-up "
            f"(method.gal.warmup_epochs: {gal.warmup_epochs})"
        )
    train_df, names = read_table(ingested_dir / "train.parquet", INGESTED)
    test_df, _ = read_table(ingested_dir / "test.parquet", INGESTED)
    k = len(names)
    train_df = subsample(train_df, sweep_opts.max_samples, params.seed)
    cfg = params.train.model_copy(update={"epochs": sweep_opts.epochs})
    run_params = params.model_copy(update={"train": cfg})
    opts = {**(params.method.get("gal") or {}), "third_net": False, "update": "all"}
    device = resolve_device(cfg.device)
    frames = []
    for rate in sweep_opts.rates:
        noise = params.noise.model_copy(update={"kind": "symmetric", "rate": rate, "estimate": False})
        noisy = apply_noise(train_df, k, noise, params.seed)
        train, test = decode_splits(
            train_df,
            noisy["given_label"].to_numpy(),
            test_df,
            cfg,
            device,
            noisy["true_label"].to_numpy(),
            ingested_dir / "test.parquet",
        )
        _, _, res = train_method("gal", opts, run_params, train, test, k, device, None)
        steps = pl.from_dicts(res.steps, infer_schema_length=None)
        last = steps.filter(pl.col("epoch") == sweep_opts.epochs)
        if last["gate_ratio"].drop_nulls().is_empty():
            raise DataError(
                f"{ingested_dir}: {len(train)} training samples give no pair of class-matched batches of "
                f"train.batch_size {cfg.batch_size} after the warm-up; raise --max-samples or lower "
                "train.batch_size"
            )
        realised = float(noisy["is_noisy"].mean())
        frames.append(steps.with_columns(noise_rate=pl.lit(rate), realised_rate=pl.lit(realised)))
        print(
            f"noise {rate:.2f} (realised {realised:.3f}): last-epoch gate ratio "
            f"{last['gate_ratio'].mean():.4f}, θA+θB test_acc {res.log[-1]['test_acc']:.4f}"
        )
    return pl.concat([f.select(COLUMNS) for f in frames])


def summary(table: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Last-epoch means per rate: {"0.2": {"realised_rate", "gate_ratio", "unit_gate_ratio",
    "mean_cosine"}, ...}, rates ascending."""
    out: dict[str, dict[str, float]] = {}
    for rate in sorted(set(table["noise_rate"].to_list())):
        t = table.filter(pl.col("noise_rate") == rate)
        last = t.filter(pl.col("epoch") == t["epoch"].max())
        out[f"{rate:g}"] = {"realised_rate": float(t["realised_rate"][0])} | {
            c: float(last[c].mean()) for c in SUMMARY
        }
    return out


def figure(table: pl.DataFrame) -> bytes:
    """The three panels of Figure 1 per noise rate, per step (thin) and smoothed over an epoch, as PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("gate_ratio", "share of parameter scalars with g ≥ τ"),
        ("unit_gate_ratio", "share of parameter tensors with g ≥ τ"),
        ("mean_cosine", "mean gradient cosine g"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
    for i, rate in enumerate(sorted(set(table["noise_rate"].to_list()))):
        t = table.filter(pl.col("noise_rate") == rate).sort("step")
        post = t.filter(pl.col("gate_ratio").is_not_nan())
        window = max(int(post.group_by("epoch").len()["len"].median() or 1), 1) if post.height else 1
        for ax, (col, title) in zip(axes, panels, strict=True):
            ax.plot(post["step"], post[col], color=f"C{i}", alpha=0.25, lw=0.7)
            ax.plot(
                post["step"],
                post[col].rolling_mean(window, min_samples=1),
                color=f"C{i}",
                label=f"{rate:.0%}",
            )
            ax.set_title(title, fontsize=10)
        if i == 0 and post.height:
            for ax in axes:
                ax.axvspan(0, post["step"][0], color="0.9", zorder=0)
                ax.set_xlabel("step (grey: warm-up on one network)")
    axes[0].set_yscale("log")
    axes[0].legend(title="noise", fontsize=8)
    fig.suptitle("GAL Figure 1: gradient agreement of θA and θB on class-matched batches", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--ingested", type=Path, default=Path("data/ingested"))
    ap.add_argument("--out", type=Path, default=Path("experiments/results/gal_figure1"))
    ap.add_argument("--rates", type=float, nargs="+", default=None, help="symmetric noise rates")
    ap.add_argument("--epochs", type=int, default=None, help="per rate, GAL's warm-up included (8)")
    ap.add_argument(
        "--max-samples",
        type=lambda s: None if s == "all" else int(s),
        default=480,
        help="stratified subsample of the train split, or 'all' (480)",
    )
    a = ap.parse_args(argv)
    from pipeline.params import load_params

    given = {"rates": a.rates, "epochs": a.epochs}
    try:
        opts = SweepOptions.model_validate(
            {k: v for k, v in given.items() if v is not None} | {"max_samples": a.max_samples}
        )
    except ValidationError as e:
        print(f"gradclean: error: {_format(e, 'options')}", file=sys.stderr)
        return 2
    try:
        table = sweep(load_params(a.params), opts, a.ingested)
        with staged_outputs() as out:  # all three files, or none
            out.write_csv(a.out / "agreement.csv", table)
            out.write_json(a.out / "summary.json", summary(table))
            out.write_bytes(a.out / "figure1.png", figure(table))
    except GradcleanError as e:
        print(f"gradclean: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}/agreement.csv, summary.json, figure1.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
