"""Stage train@<method>: one registry method on the noisy labels, and the training helpers the noise,
retrain stage (and the experiments) share.

The stage script calls the `run_*` function here; it writes through `staged_outputs()`, so nothing
appears unless it all succeeded.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

from pipeline.config import Params, TrainParams, validate_section
from pipeline.data.tensors import ImageData, load_split
from pipeline.distributed import Dist, device_for, from_env, process_group
from pipeline.errors import ConfigError, DataError
from pipeline.gradient_cosine import grad_similarity_scores
from pipeline.io import read_json, read_table, staged_outputs
from pipeline.methods import REGISTRY, scores_frame
from pipeline.registry import score_schema
from pipeline.schemas import INGESTED, NOISY, OOF_PROBS, POOL_HISTORY
from pipeline.train import FitResult, TrainContext, fit, resolve_device
from pipeline.validation import check_values

SIMILARITY_SEED = 7919  # offset of the grad_similarity pass's shuffle seed from params.seed


def _train_fingerprint(cfg: TrainParams, extra: dict, labels: np.ndarray, seed: int) -> str:
    body = cfg.model_dump(exclude={"resume", "progress", "compile"})
    h = hashlib.sha256(json.dumps([body, extra, seed], sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()[:16]


def load_training_data(
    ingested_dir: Path,
    noisy_path: Path,
    cfg: TrainParams,
    device: torch.device,
) -> tuple[ImageData, ImageData, list[str]]:
    """Train split with given labels (and truth when known) and test split, decoded into memory."""
    train, names = read_table(ingested_dir / "train.parquet", INGESTED)
    test, _ = read_table(ingested_dir / "test.parquet", INGESTED)
    noisy, _ = read_table(noisy_path, NOISY)
    keep = ["sample_id", "image", "source_path"] + (["file"] if "file" in train.columns else [])
    joined = train.select(keep).join(noisy, on="sample_id", how="left")
    if joined["given_label"].null_count() or noisy.height != train.height:
        raise DataError(
            f"{noisy_path}: sample ids do not match {ingested_dir / 'train.parquet'} (re-run the noise stage)"
        )
    truth = None if joined["true_label"].null_count() else joined["true_label"].to_numpy()
    tr, te = decode_splits(
        joined, joined["given_label"].to_numpy(), test, cfg, device, truth, ingested_dir / "test.parquet"
    )
    return tr, te, names


def decode_splits(
    train: pl.DataFrame,
    given: np.ndarray,
    test: pl.DataFrame,
    cfg: TrainParams,
    device: torch.device,
    truth: np.ndarray | None,
    test_path: Path,
) -> tuple[ImageData, ImageData]:
    """Decode both splits at `train.image_size` with `train.channels`; their channel counts must agree."""
    tr = load_split(train, given, cfg.stored_size, cfg.channels, device, truth, cfg.workers)
    te = load_split(
        test, test["label"].to_numpy(), cfg.stored_size, cfg.channels, device, workers=cfg.workers
    )
    if te.images.shape[1] != tr.images.shape[1]:
        raise DataError(
            f"{test_path}: the test images have {te.images.shape[1]} channel(s), the training images "
            f"{tr.images.shape[1]}; set train.channels to 1 or 3 to convert both"
        )
    return tr, te


def train_method(
    name: str,
    options: dict | None,
    params: Params,
    train: ImageData,
    test: ImageData,
    num_classes: int,
    device: torch.device,
    checkpoint: Path | None,
    *,
    noise_rate: float | None = None,
    oof_probs: torch.Tensor | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    dist: Dist | None = None,
) -> tuple[object, TrainContext, FitResult]:
    """Build method `name` from its options and train it under the epoch driver.

    `noise_rate` is the estimated rate (what `forget_rate: auto` means) and `oof_probs` (N, K) the
    out-of-fold probabilities of noise estimation; both None when noise estimation is off. `on_epoch` gets
    each epoch's log row before that epoch's checkpoint is written (see `pipeline.train.fit`). `dist` is
    this process's place in a torchrun job (None = one process).
    """
    spec = REGISTRY[name]
    opts = validate_section(spec.options, options, f"method.{name}")
    ctx = TrainContext(
        train,
        test,
        params.train,
        num_classes,
        train.images.shape[1],
        device,
        params.seed,
        noise_rate=noise_rate,
        oof_probs=oof_probs,
        dist=dist or Dist(),
    )
    method = spec.build(opts, ctx)
    fp = _train_fingerprint(
        params.train,
        {"method": name, **opts.model_dump(), "noise_rate": noise_rate},
        train.labels.cpu().numpy(),
        params.seed,
    )
    res = fit(
        method,
        ctx,
        name=name,
        epochs=params.train.epochs,
        checkpoint=checkpoint,
        fingerprint=fp,
        resume=params.train.resume,
        on_epoch=on_epoch,
    )
    return method, ctx, res


def load_estimate(
    report_path: Path,
    oof_path: Path,
    train: ImageData,
    device: torch.device,
) -> tuple[float | None, torch.Tensor | None]:
    """The estimated noise rate and the out-of-fold probabilities aligned with `train` (None when off)."""
    est = (read_json(report_path).get("estimate") or {}).get("rate")
    oof, _ = read_table(oof_path, OOF_PROBS)
    if oof["probs"].null_count():
        return est, None
    aligned = pl.DataFrame({"sample_id": train.sample_ids}).join(
        oof, on="sample_id", how="left", maintain_order="left"
    )
    if aligned["probs"].null_count():
        raise DataError(f"{oof_path}: does not cover every training sample (re-run the noise stage)")
    probs = np.stack(aligned["probs"].to_list()).astype(np.float32)
    return est, torch.as_tensor(probs, device=device)


def run_train(
    params: Params,
    name: str,
    ingested_dir: Path,
    noisy_path: Path,
    scores_out: Path,
    log_out: Path,
    checkpoint: Path | None,
    steps_out: Path,
    history_out: Path,
    *,
    noise_report: Path | None = None,
    oof_path: Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> None:
    """Train one registry method on the noisy labels; write its score table, epoch log, step log and
    pool-history table (GSS with `history: true`; a table with no rows otherwise).

    The noise estimate is read from the noise stage's `noise_report` and `oof_path` (the stage passes both
    as flags; a library caller that leaves them out gets the noise stage's file names beside `noisy_path`).
    Under `torchrun --nproc-per-node N` the N ranks train together (`pipeline.distributed`) and rank 0
    alone writes.
    """
    if name not in REGISTRY:
        raise DataError(f"unknown method '{name}' (known: {sorted(REGISTRY)})")
    dist = from_env()
    if dist.active and params.train.batch_size < 2 * dist.world:
        raise ConfigError(
            f"train.batch_size: {params.train.batch_size} is too small for {dist.world} ranks "
            "(each rank needs at least 2 rows of every batch)"
        )
    device = device_for(dist, resolve_device(params.train.device))
    with process_group(dist, device):
        train, test, names = load_training_data(ingested_dir, noisy_path, params.train, device)
        rate, oof = load_estimate(
            noise_report or noisy_path.parent / "noise_report.json",
            oof_path or noisy_path.parent / "oof_probs.parquet",
            train,
            device,
        )
        method, ctx, res = train_method(
            name,
            params.method.get(name),
            params,
            train,
            test,
            len(names),
            device,
            checkpoint,
            noise_rate=rate,
            oof_probs=oof,
            on_epoch=on_epoch,
            dist=dist,
        )
        output = method.export()  # every rank: its eval passes are sharded and gathered
        if not dist.is_main:
            return
        t0 = time.perf_counter()
        sim = grad_similarity_scores(
            method.networks(),
            ctx.train,
            ctx,
            k=params.train.similarity_top_k,
            seed=params.seed + SIMILARITY_SEED,
        )
        sim_seconds = time.perf_counter() - t0
        scores = scores_frame(name, ctx, output, params.train.flag_threshold, sim)
        schema = score_schema(name)
        check_values(scores, schema, len(names), str(scores_out), rows=len(train))
        history = output.history
        if history is not None:
            check_values(history, POOL_HISTORY, len(names), str(history_out))
        else:
            history = POOL_HISTORY.arrow_schema().empty_table()
        with staged_outputs() as out:
            out.write_table(scores_out, scores, schema, names)
            out.write_table(history_out, history, POOL_HISTORY, names)
            out.write_csv(log_out, pl.DataFrame(res.log))
            out.write_csv(steps_out, pl.from_dicts(res.steps, infer_schema_length=None))
        last, best = res.log[-1]["test_acc"], max(r["test_acc"] for r in res.log)
        share = sim_seconds / max(res.seconds, 1e-9)
        print(
            f"train@{name}: test_acc {last:.4f} (best {best:.4f}), "
            f"{int(scores['is_flagged'].sum())} flagged, {res.seconds:.1f}s; "
            f"grad_similarity pass {sim_seconds:.2f}s ({share:.1%} of training)"
        )
