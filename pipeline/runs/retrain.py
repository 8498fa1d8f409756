"""Stage retrain: CE on the cleaned labels.

The stage script calls the `run_*` function here; it writes through `staged_outputs()`, so nothing
appears unless it all succeeded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from pipeline.config import Params
from pipeline.errors import DataError
from pipeline.io import read_table, staged_outputs
from pipeline.runs.ingest import require_two_classes
from pipeline.runs.train import load_training_data, train_method
from pipeline.schemas import CLEANED
from pipeline.train import resolve_device

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
