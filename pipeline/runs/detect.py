"""Stage detect@<name>: a registered detector on the embeddings, written as a score table.

The stage script calls the `run_*` function here; it writes through `staged_outputs()`, so nothing
appears unless it all succeeded.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.config import Params, validate_section
from pipeline.errors import DataError
from pipeline.io import read_json, read_table, staged_outputs
from pipeline.registry import score_schema
from pipeline.schemas import INGESTED, NOISY, OOF_PROBS
from pipeline.validation import check_values


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
    schema = score_schema(name)
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
