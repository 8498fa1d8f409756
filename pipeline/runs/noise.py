"""Stage noise: inject (or pass through) label noise and estimate it from out-of-fold probabilities.

The stage script calls the `run_*` function here; it writes through `staged_outputs()`, so nothing
appears unless it all succeeded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from pipeline.config import Params, validate_section
from pipeline.data.tensors import load_split
from pipeline.errors import ConfigError
from pipeline.io import read_table, staged_outputs
from pipeline.noise import apply_noise, noise_report
from pipeline.runs.ingest import require_two_classes
from pipeline.schemas import INGESTED, NOISY, OOF_PROBS
from pipeline.train import resolve_device
from pipeline.validation import validate


def run_noise(
    params: Params,
    ingested_dir: Path,
    out_table: Path,
    out_report: Path,
    out_oof: Path,
    embeddings: Path | None = None,
) -> None:
    """Inject (or pass through) label noise, estimate it when `noise.estimate`; write table, report, OOF.

    The estimate's out-of-fold probabilities come from the linear probe on `embeddings` (the `embed` stage's
    table; `noise.estimate_from: probe`, or `auto` with embeddings) or from K-fold CE models trained here
    (`folds`, or `auto` without embeddings).
    """
    train, names = read_table(ingested_dir / "train.parquet", INGESTED)
    k = len(names)
    require_two_classes(train["label"], names, str(ingested_dir / "train.parquet"))
    noisy = apply_noise(train, k, params.noise, params.seed)
    validate(noisy, NOISY, k, str(out_table))
    report = noise_report(noisy, k, params.noise, names)
    oof = None
    if params.noise.estimate:
        from pipeline.noise.estimate import estimate_noise, model_warning

        given = noisy["given_label"].to_numpy()
        source = params.noise.estimate_from
        if source == "probe" or (source == "auto" and embeddings is not None):
            oof, held, how = _probe_estimate(params, embeddings, ingested_dir, train, given, k)
        else:
            oof, held, how = _fold_estimate(params, train, given, k)
        est = estimate_noise(given, oof, num_classes=k)
        est["per_class_noise_rate"] = dict(zip(names, est["per_class_noise_rate"], strict=True))
        acc = float(np.mean(held))
        report["estimate"] = {
            **how,
            "held_out_accuracy": acc,
            "held_out_accuracy_per_fold": held,
            "warning": model_warning(acc, est["rate"], params.noise.min_model_accuracy),
            **est,
        }
        if report["estimate"]["warning"]:
            print(f"noise: warning: {report['estimate']['warning']}")
    probs = (
        pl.Series(oof).cast(pl.List(pl.Float32))
        if oof is not None
        else pl.Series([None] * train.height, dtype=pl.List(pl.Float32))
    )
    oof_frame = pl.DataFrame({"sample_id": train["sample_id"], "probs": probs})
    with staged_outputs() as out:
        out.write_table(out_table, noisy, NOISY, names)
        out.write_json(out_report, report)
        out.write_table(out_oof, oof_frame, OOF_PROBS, names)
    real, est_rate = report["realised_rate"], (report["estimate"] or {}).get("rate")
    print(
        f"noise: {params.noise.kind}, requested {report['requested_rate']}, realised "
        f"{'unknown' if real is None else f'{real:.4f}'}, estimated "
        f"{'off' if est_rate is None else f'{est_rate:.4f}'} over {noisy.height} samples"
    )


def _probe_estimate(
    params: Params,
    embeddings: Path | None,
    ingested_dir: Path,
    train: pl.DataFrame,
    given: np.ndarray,
    k: int,
) -> tuple[np.ndarray, list[float], dict]:
    """Out-of-fold probe probabilities on the embeddings (options from `detector.probe`)."""
    from pipeline.detectors.probe import ProbeOptions, fit_fingerprint, probe_oof
    from pipeline.embed import load_features

    if embeddings is None:
        raise ConfigError("noise.estimate_from: probe needs the embed stage's table (--embeddings)")
    test, _ = read_table(ingested_dir / "test.parquet", INGESTED)
    feats = load_features(embeddings, train["sample_id"].to_numpy(), test["sample_id"].to_numpy())
    opts = validate_section(ProbeOptions, params.detector.get("probe"), "detector.probe")
    oof, held, c = probe_oof(
        feats.train,
        given,
        num_classes=k,
        folds=opts.folds,
        C=opts.C,
        seed=params.seed,
        max_iter=opts.max_iter,
        C_grid=tuple(opts.C_grid),
        blas_threads=opts.blas_threads,
    )
    how = {
        "method": "confident joint (cleanlab) on out-of-fold linear-probe probabilities of "
        f"{feats.model.get('backbone', 'the embedding model')} features",
        "from": "probe",
        "folds": opts.folds,
        "C": c,
        "fingerprint": fit_fingerprint(feats.train, given, opts, params.seed),  # detect@probe reuses the fit
    }
    return oof, held, how


def _fold_estimate(
    params: Params, train: pl.DataFrame, given: np.ndarray, k: int
) -> tuple[np.ndarray, list[float], dict]:
    """Out-of-fold probabilities of K-fold CE models, each early-stopped on its held-out fold."""
    from pipeline.noise.estimate import fold_estimate
    from pipeline.params import check_backbones

    check_backbones(params)  # the stage skips it up front: the probe estimate builds no network
    device = resolve_device(params.train.device)
    cfg = params.train
    data = load_split(train, given, cfg.stored_size, cfg.channels, device, workers=cfg.workers)
    oof, held, epochs = fold_estimate(
        data,
        params.train,
        num_classes=k,
        folds=params.noise.estimate_folds,
        epochs=params.noise.estimate_epochs,
        patience=params.noise.estimate_patience,
        seed=params.seed,
        device=device,
    )
    how = {
        "method": "confident joint (cleanlab) on out-of-fold CE probabilities",
        "from": "folds",
        "folds": params.noise.estimate_folds,
        "epochs": epochs,
    }
    return oof, held, how
