"""One function per pipeline stage. Stage scripts parse argv and params, then call exactly one of these.

Every function writes its outputs through `staged_outputs()`, so nothing appears unless it all succeeded.
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
from pipeline.data.memory import ImageData, load_split
from pipeline.data.sources import ingest, require_watched, subsample
from pipeline.distributed import Dist, device_for, from_env, process_group
from pipeline.errors import ConfigError, DataError
from pipeline.grad_similarity import grad_similarity
from pipeline.io import read_csv, read_json, read_table, staged_outputs
from pipeline.methods import REGISTRY, scores_frame
from pipeline.noise import apply_noise, noise_report
from pipeline.schemas import CLEANED, INGESTED, NOISY, OOF_PROBS, POOL_HISTORY, SCORES
from pipeline.train import FitResult, TrainContext, fit, resolve_device
from pipeline.validation import check_values, validate


# ----------------------------------------------------------------------------------------------- ingest
def require_two_classes(labels: pl.Series, names: list[str], where: str) -> None:
    """A training split whose labels cover a single class has nothing to clean: refuse it by name."""
    present = labels.unique().to_list()
    if len(present) < 2:
        shown = ", ".join(repr(names[v]) if 0 <= v < len(names) else str(v) for v in present)
        raise DataError(
            f"{where}: every training label is one class ({shown}); label cleaning needs at least 2"
        )


def run_ingest(params: Params, out_dir: Path) -> None:
    """Load `params.data`, validate both splits with Great Expectations, write {train,test}.parquet.

    Inputs that dvc.yaml's `data.root` dependency does not cover are refused (`require_watched`), after the
    data themselves are checked."""
    data = ingest(params.data)
    require_watched(params.data)
    k = len(data.class_names)
    seen: dict[int, str] = {}
    for split, frame in (("train", data.train), ("test", data.test)):
        where = f"{params.data.source} source ({params.data.root or 'embedded'}), {split} split"
        if frame.height == 0:
            raise DataError(f"{where}: the {split} split is empty")
        if split == "train":
            require_two_classes(frame["label"], data.class_names, where)
        for sid in frame["sample_id"].to_list():
            if sid in seen:
                raise DataError(f"{where}: sample_id {sid} also appears in the {seen[sid]} split")
            seen[sid] = split
        validate(frame, INGESTED, k, where)
    with staged_outputs() as out:
        for split, frame in (("train", data.train), ("test", data.test)):
            out.write_table(out_dir / f"{split}.parquet", frame, INGESTED, data.class_names)
    print(f"ingest: {data.source}: {data.train.height} train / {data.test.height} test images, {k} classes")


# ------------------------------------------------------------------------------------------------ noise
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
        C_grid=tuple(opts.C_grid),
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


# ---------------------------------------------------------------------------------------------- weights
def run_weights(out: Path) -> None:
    """Convert the packaged EfficientNet-Lite0 ImageNet weights into a timm-format file at `out`."""
    from pipeline.weights import convert_lite0

    digest = convert_lite0(out)
    print(f"weights: wrote {out} (timm efficientnet_lite0, sha256 {digest[:16]}…)")


# ------------------------------------------------------------------------------------------------ embed
def _stored_images(frame: pl.DataFrame, size: int | None, where: str) -> torch.Tensor:
    """(N, 3, s, s) uint8 of an INGESTED frame (streamed rows read from their files), s = `size` or the
    first image's own width."""
    from pipeline.data.images import decode_images, open_image

    blobs = frame["image"].to_list()
    if "file" in frame.columns:
        blobs = [
            b if b is not None else Path(f).read_bytes() for b, f in zip(blobs, frame["file"], strict=True)
        ]
    if size is None:
        size = open_image(blobs[0], where).size[0] if blobs else 1
    names = [p or f"sample_id {i}" for p, i in zip(frame["source_path"], frame["sample_id"], strict=True)]
    return torch.from_numpy(decode_images(blobs, size, 3, names))


def run_embed(params: Params, ingested_dir: Path, out: Path) -> None:
    """One pass of the frozen pretrained `embed.backbone` over both ingested splits -> EMBEDDINGS table."""
    from pipeline.embed import embed_images
    from pipeline.models import create_pretrained, resolve_pretrained
    from pipeline.schemas import EMBEDDING_MODEL_KEY, EMBEDDINGS
    from pipeline.weights import sha256_of

    cfg = params.embed
    if cfg.pretrained is False:
        raise ConfigError(
            "embed.pretrained: false gives features of a random network; name a weights file or true"
        )
    pre = resolve_pretrained(cfg.backbone, cfg.pretrained, "embed.pretrained")
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        model = create_pretrained(cfg.backbone, cfg.pretrained, "embed.pretrained", num_classes=0, in_chans=3)
    model = model.eval().to(device).to(memory_format=torch.channels_last)
    frames, t0 = [], time.perf_counter()
    for split in ("train", "test"):
        table, _ = read_table(ingested_dir / f"{split}.parquet", INGESTED)
        images = _stored_images(table, cfg.load_size, str(ingested_dir / f"{split}.parquet"))
        feats = embed_images(
            model, images, mean=pre.mean, std=pre.std, size=cfg.image_size, batch_size=cfg.batch_size,
            device=device, flip=cfg.flip, desc=f"embed {split}",
        )  # fmt: skip
        frames.append(
            pl.DataFrame(
                {
                    "sample_id": table["sample_id"],
                    "split": pl.Series([split] * table.height, dtype=pl.String),
                    "embedding": pl.Series(feats).cast(pl.List(pl.Float32)),
                }
            )
        )
    seconds = time.perf_counter() - t0
    frame = pl.concat(frames)
    model_info = {
        "backbone": cfg.backbone,
        "weights": pre.source,
        "weights_sha256": sha256_of(pre.source) if pre.source != "hub" else None,
        "image_size": cfg.image_size,
        "flip": cfg.flip,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "dim": int(len(frame["embedding"][0])),
    }
    with staged_outputs() as outs:
        outs.write_table(
            out, frame, EMBEDDINGS, metadata={EMBEDDING_MODEL_KEY: json.dumps(model_info).encode()}
        )
    print(
        f"embed: {cfg.backbone} at {cfg.image_size} px, {frame.height} images, {model_info['dim']}-d, "
        f"{seconds:.1f}s ({frame.height / max(seconds, 1e-9):.1f} images/s)"
    )


# ----------------------------------------------------------------------------------------------- detect
def run_detect(
    params: Params,
    name: str,
    ingested_dir: Path,
    noisy_path: Path,
    embeddings: Path,
    scores_out: Path,
    log_out: Path,
    oof_path: Path | None = None,
    noise_report: Path | None = None,
) -> None:
    """Run embedding detector `name` on the training split's features; write its score table and a
    one-row log (test accuracy of its classifier, flagged share, seconds).

    `oof_path` and `noise_report` (the noise stage's out-of-fold probabilities and report) are handed to
    the detector, which may reuse a fit the noise stage already made."""
    from pipeline.detectors import DETECTORS, DetectorInput
    from pipeline.embed import load_features
    from pipeline.methods.base import score_table

    if name not in DETECTORS:
        raise DataError(f"unknown detector '{name}' (known: {sorted(DETECTORS)})")
    spec = DETECTORS[name]
    opts = validate_section(spec.options, params.detector.get(name), f"detector.{name}")
    train, names = read_table(ingested_dir / "train.parquet", INGESTED)
    test, _ = read_table(ingested_dir / "test.parquet", INGESTED)
    noisy, _ = read_table(noisy_path, NOISY)
    joined = train.select("sample_id").join(noisy, on="sample_id", how="left", maintain_order="left")
    if joined["given_label"].null_count() or noisy.height != train.height:
        raise DataError(
            f"{noisy_path}: sample ids do not match {ingested_dir / 'train.parquet'} (re-run the noise stage)"
        )
    ids, given = joined["sample_id"].to_numpy(), joined["given_label"].to_numpy().astype(np.int64)
    feats = load_features(embeddings, ids, test["sample_id"].to_numpy())
    oof, record = None, None
    if oof_path is not None and noise_report is not None:
        record = read_json(noise_report).get("estimate")
        oof_frame, _ = read_table(oof_path, OOF_PROBS)
        aligned = joined.select("sample_id").join(
            oof_frame, on="sample_id", how="left", maintain_order="left"
        )
        if record and not aligned["probs"].null_count():
            oof = np.stack(aligned["probs"].to_list()).astype(np.float32)
    t0 = time.perf_counter()
    res = spec.detect(
        opts,
        DetectorInput(feats.train, given, feats.test, len(names), params.seed, oof=oof, oof_record=record),
    )
    seconds = time.perf_counter() - t0
    scores = score_table(
        name, ids, given, res.probs, noise_score=res.noise_score, flagged=res.flagged,
        flag_threshold=params.train.flag_threshold, extra=res.extra,
    )  # fmt: skip
    schema = SCORES.with_extra(spec.columns)
    check_values(scores, schema, len(names), str(scores_out), rows=len(ids))
    test_acc = float((res.test_probs.argmax(1) == test["label"].to_numpy()).mean())
    flagged = scores["is_flagged"].to_numpy()
    truth = None if joined["true_label"].null_count() else joined["true_label"].to_numpy()
    precision = float("nan") if truth is None else float((truth == given)[~flagged].mean())
    log = {
        "epoch": 1,
        "train_loss": float("nan"),
        "train_acc": float((res.probs.argmax(1) == given).mean()),
        "test_acc": test_acc,
        "kept_fraction": float(1.0 - flagged.mean()),
        "label_precision": precision,
        "lr": float("nan"),
        "seconds": seconds,
        **res.log,
    }
    with staged_outputs() as out:
        out.write_table(scores_out, scores, schema, names)
        out.write_csv(log_out, pl.DataFrame([log]))
    print(
        f"detect@{name}: {int(flagged.sum())} flagged of {len(ids)}, test_acc {test_acc:.4f}, {seconds:.1f}s"
        + ("" if truth is None else f", label precision of the unflagged {precision:.4f}")
    )


# ------------------------------------------------------------------------------------------------ train
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
        sim = grad_similarity(
            method.networks(),
            ctx.train,
            ctx,
            k=params.train.similarity_top_k,
            seed=params.seed + SIMILARITY_SEED,
        )
        sim_seconds = time.perf_counter() - t0
        scores = scores_frame(name, ctx, output, params.train.flag_threshold, sim)
        check_values(scores, SCORES, len(names), str(scores_out), rows=len(train))
        history = output.history
        if history is not None:
            check_values(history, POOL_HISTORY, len(names), str(history_out))
        else:
            history = POOL_HISTORY.arrow_schema().empty_table()
        with staged_outputs() as out:
            out.write_table(scores_out, scores, SCORES, names)
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


# -------------------------------------------------------------------------------------------- gal agreement
AGREEMENT_COLUMNS = [
    "noise_rate",
    "realised_rate",
    "step",
    "epoch",
    "loss",
    "agreement_ratio",
    "gate_ratio",
    "unit_gate_ratio",
    "mean_cosine",
]


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


# ------------------------------------------------------------------------------------------------ clean
def run_clean(
    params: Params,
    scores_dir: Path,
    out_parquet: Path,
    out_csv: Path,
    noise_report: Path | None = None,
    ingested_dir: Path | None = None,
    out_manifest: Path | None = None,
) -> None:
    """Apply the cleaning policy over `clean.methods` and write the cleaned label file (+ CSV twin).

    `noise_report` (the noise stage's JSON) gives the estimated rate that `clean.max_share: auto` caps at.
    `ingested_dir` adds each sample's identity in the source (`source_path`, `source_file`,
    `source_index`), and `out_manifest` (needs it) writes the cleaned dataset in the manifest layout
    (`path,label,split,source_index`): kept and relabelled training rows with their cleaned class, every
    test row with its label, dropped rows left out.
    """
    from pipeline.clean import clean_labels

    scores, names = {}, None
    for m in params.clean.methods:
        scores[m], names = read_table(scores_dir / f"{m}.parquet", SCORES)
    share = params.clean.max_share
    if share == "auto":
        est = (read_json(noise_report).get("estimate") or {}) if noise_report is not None else {}
        share = est.get("rate")
    cleaned = clean_labels(
        scores,
        names,
        relabel_confidence=params.clean.relabel_confidence,
        drop_noise_score=params.clean.drop_noise_score,
        agreement=params.clean.agreement,
        max_share=share,
    )
    cleaned, manifest = _with_source_identity(cleaned, params, ingested_dir, names)
    if out_manifest is not None and manifest is None:
        raise ConfigError(
            "clean: --manifest needs --ingested (the source paths come from the ingested tables)"
        )
    validate(cleaned, CLEANED, len(names), str(out_parquet), rows=scores[params.clean.methods[0]].height)
    with staged_outputs() as out:
        out.write_table(out_parquet, cleaned, CLEANED, names)
        out.write_csv(out_csv, cleaned)
        if out_manifest is not None:
            out.write_csv(out_manifest, manifest)
    counts = dict(cleaned["action"].value_counts().iter_rows())
    cap = "no cap" if share is None else f"cap {share:.3f} of the rows"
    print(
        f"clean: {counts.get('keep', 0)} keep, {counts.get('relabel', 0)} relabel, "
        f"{counts.get('drop', 0)} drop (methods: {', '.join(params.clean.methods)}; "
        f"agreement {params.clean.agreement}, {cap})"
    )


def _with_source_identity(
    cleaned: pl.DataFrame, params: Params, ingested_dir: Path | None, names: list[str]
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The cleaned table with source_path / source_file / source_index, and the cleaned manifest (both
    unchanged / None without `ingested_dir`)."""
    from pipeline.data.sources import file_root

    if ingested_dir is None:
        return cleaned, None
    root = file_root(params.data)

    def identity(frame: pl.DataFrame) -> pl.DataFrame:
        rel = frame["source_path"].to_list()
        files = frame["file"].to_list() if "file" in frame.columns else [None] * frame.height
        resolved = [
            f
            if f is not None
            else (str((root / r).resolve()) if r is not None and root is not None else None)
            for r, f in zip(rel, files, strict=True)
        ]
        return pl.DataFrame(
            {
                "sample_id": frame["sample_id"],
                "source_path": pl.Series(rel, dtype=pl.String),
                "source_file": pl.Series(resolved, dtype=pl.String),
                "source_index": pl.Series(
                    [None if r is not None else i for r, i in zip(rel, frame["sample_id"], strict=True)],
                    dtype=pl.Int64,
                ),
            }
        )

    train, _ = read_table(ingested_dir / "train.parquet", INGESTED)
    test, _ = read_table(ingested_dir / "test.parquet", INGESTED)
    ids = identity(train)
    out = cleaned.join(ids, on="sample_id", how="left", maintain_order="left")
    if out.height != cleaned.height or ids.height != cleaned.height:
        raise DataError(
            f"{ingested_dir / 'train.parquet'}: {ids.height} training samples, the score tables hold "
            f"{cleaned.height} (re-run the stages after ingest)"
        )
    kept = out.filter(pl.col("action") != "drop")
    test_ids = identity(test).with_columns(
        pl.Series("label", [names[v] for v in test["label"]], dtype=pl.String)
    )
    manifest = pl.concat(
        [
            kept.select(
                pl.col("source_path").alias("path"),
                pl.col("cleaned_class").alias("label"),
                pl.lit("train").alias("split"),
                "source_index",
            ),
            test_ids.select(
                pl.col("source_path").alias("path"), "label", pl.lit("test").alias("split"), "source_index"
            ),
        ]
    )
    return out, manifest


# ---------------------------------------------------------------------------------------------- retrain
RETRAIN_WARN_SHARE = 0.25  # retrain warns when fewer than this share of the rows survive cleaning


def run_retrain(
    params: Params,
    ingested_dir: Path,
    noisy_path: Path,
    cleaned_path: Path,
    summary_out: Path,
    log_out: Path,
    checkpoint: Path | None,
) -> None:
    """Train a fresh CE model on the cleaned labels (dropped rows removed); record its test accuracy."""
    device = resolve_device(params.train.device)
    train, test, names = load_training_data(ingested_dir, noisy_path, params.train, device)
    cleaned, _ = read_table(cleaned_path, CLEANED)
    order = pl.DataFrame({"sample_id": train.sample_ids}).join(
        cleaned, on="sample_id", how="left", maintain_order="left"
    )
    if order["action"].null_count():
        raise DataError(f"{cleaned_path}: does not cover every training sample (re-run clean)")
    keep = np.flatnonzero(order["action"].to_numpy() != "drop")
    if len(keep) == 0:
        raise DataError(
            f"{cleaned_path}: cleaning dropped every training row; nothing to retrain on (loosen clean.* "
            "or check the voting methods' scores)"
        )
    kept_labels = order["cleaned_label"].to_numpy()[keep].astype(np.int64)
    require_two_classes(pl.Series(kept_labels), names, f"{cleaned_path} (the kept rows)")
    if len(keep) < RETRAIN_WARN_SHARE * len(order):
        print(
            f"retrain: warning: only {len(keep)} of {len(order)} rows ({len(keep) / len(order):.0%}) survive "
            "cleaning; the retrained model sees little data"
        )
    sub = train.subset(keep)
    sub.labels = torch.as_tensor(kept_labels, device=device)
    _, _, res = train_method("ce", {}, params, sub, test, len(names), device, checkpoint)
    summary = {
        "train_samples": len(sub),
        "dropped": int(train.labels.numel() - len(sub)),
        "test_acc_last": res.log[-1]["test_acc"],
        "test_acc_best": max(r["test_acc"] for r in res.log),
        "label_precision": res.log[-1]["label_precision"] if sub.true_labels is not None else None,
        "seconds": res.seconds,
    }
    with staged_outputs() as out:
        out.write_json(summary_out, summary)
        out.write_csv(log_out, pl.DataFrame(res.log))
    print(f"retrain: CE on {len(sub)} cleaned samples: test_acc {summary['test_acc_last']:.4f}")


# --------------------------------------------------------------------------------------------- evaluate
def _header_only(path: Path) -> bool:
    """A CSV holding its header line alone (the sweep skipped with `gal_agreement.rates: []`)."""
    return path.is_file() and len(path.read_bytes().strip().splitlines()) == 1


def run_evaluate(
    params: Params,
    ingested_dir: Path,
    noisy_path: Path,
    noise_report_path: Path,
    scores_dir: Path,
    logs_dir: Path,
    cleaned_path: Path,
    retrain_path: Path,
    metrics_out: Path,
    plots_dir: Path,
    report_out: Path,
    agreement_path: Path | None = None,
    datalab_path: Path | None = None,
    summary_out: Path | None = None,
    retrain_log: Path | None = None,
) -> None:
    """Compute metrics, write DVC metrics/plots and the HTML report.

    `retrain_log` is the retrain stage's epoch log (its test-accuracy curve in the report; skipped when None).

    `metrics_out` gets every figure; `summary_out` (when given) the headline ones that `dvc metrics show`
    prints (`pipeline.evaluate.headline`).

    `agreement_path` is the `gal_agreement` stage's table (GAL's Figure 1), `datalab_path` the `datalab`
    stage's near duplicates and outliers; each skipped when None.
    """
    from pipeline.evaluate import collect_metrics, headline, pr_curve
    from pipeline.report import render_report

    noisy, names = read_table(noisy_path, NOISY)
    scores = {m: read_table(scores_dir / f"{m}.parquet", SCORES)[0] for m in params.scored}
    logs = {
        m: read_csv(logs_dir / f"{m}.csv", ("epoch", "test_acc"), f"training log of train@{m}")
        for m in params.scored
    }
    cleaned, _ = read_table(cleaned_path, CLEANED)
    retrain = read_json(retrain_path)
    report = read_json(noise_report_path)
    agreement = None
    if agreement_path is not None and not _header_only(agreement_path):  # rates: [] writes no rows
        agreement = read_csv(agreement_path, AGREEMENT_COLUMNS, "GAL agreement table (gal_agreement stage)")
    metrics = collect_metrics(noisy, scores, logs, cleaned, retrain, report, params, agreement)
    curves = {m: pr_curve(noisy, s) for m, s in scores.items()}
    train_images, _ = read_table(ingested_dir / "train.parquet", INGESTED)
    sections = []
    if datalab_path is not None:
        from pipeline.datalab import report_section, summarise
        from pipeline.schemas import DATALAB

        issues, _ = read_table(datalab_path, DATALAB)
        metrics["data_issues"] = summarise(issues)
        test_images, _ = read_table(ingested_dir / "test.parquet", INGESTED)
        labels = dict(
            zip(noisy["sample_id"].to_list(), (names[g] for g in noisy["given_label"]), strict=True)
        )
        labels.update(
            zip(test_images["sample_id"].to_list(), (names[g] for g in test_images["label"]), strict=True)
        )
        both = pl.concat([train_images, test_images], how="diagonal_relaxed")
        sections.append(report_section(issues, both, labels, params.evaluate.gallery_size))
    html = render_report(
        metrics=metrics,
        noisy=noisy,
        scores=scores,
        logs=logs,
        cleaned=cleaned,
        retrain_log=read_csv(retrain_log, ("epoch", "test_acc"), "retrain log") if retrain_log else None,
        report=report,
        class_names=names,
        images=train_images,
        params=params,
        agreement=agreement,
        sections=tuple(sections),
    )
    with staged_outputs() as out:
        out.write_json(metrics_out, metrics)
        if summary_out is not None:
            out.write_json(summary_out, headline(metrics))
        for m, curve in curves.items():
            if curve is not None:
                out.write_csv(plots_dir / f"{m}.csv", curve)
        out.write_text(report_out, html)
    print(f"evaluate: wrote {metrics_out}, {report_out}")
