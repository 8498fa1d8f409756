"""Golden numbers: every registered method, two epochs of the real `stages.train` on tiny digits, against the
figures pinned in `tests/golden/<method>.json` (per-epoch train loss and test accuracy, and summaries of the
score table) within a cross-CPU tolerance (below).

A change that shifts every method at once (the data order, the augmentation, the schedule, the scores)
passes the behaviour tests, which compare methods with CE or with themselves; it fails here. When a change
is meant to move the numbers, regenerate them and commit the new files with it:

    GRADCLEAN_UPDATE_GOLDEN=1 python -m pytest -q tests/test_golden.py

The same code gives the same figures bit for bit on one machine, but not across CPUs: the kernels torch
picks differ by instruction set. Measured between an Intel and an AMD EPYC host (torch 2.14.1, same code):
per-epoch train loss up to 5.2e-4 apart, score sums up to 1.6e-3 relative, one of 16 pseudo-labels of a
2-epoch model sitting on a tie flipped. The tolerances below sit a few times above that and far below what a
change of behaviour moves (a different seed, order or augmentation moves the loss by more than 1e-2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
import yaml
from helpers import ingest_and_noise

from pipeline.methods import REGISTRY
from pipeline.params import parse_params
from stages import train

GOLDEN = Path(__file__).with_name("golden")
UPDATE = os.environ.get("GRADCLEAN_UPDATE_GOLDEN") == "1"
ABS_TOL = 2e-3  # per-epoch figures (loss, accuracy)
REL_TOL = 5e-3  # sums over the score table
LABELS_AGREE = 15  # of the 16 pinned pseudo-labels

RAW = {
    "seed": 0,
    "data": {"source": "digits", "max_per_split": 80},
    "noise": {
        "rate": 0.4,
        "estimate": True,
        "estimate_from": "folds",
        "estimate_folds": 2,
        "estimate_epochs": 1,
    },
    "train": {
        "model_kwargs": {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1]},
        "image_size": 8,
        "epochs": 2,
        "batch_size": 32,
        "augment": {"pad_crop": 1},
        "progress": False,
    },
    "methods": sorted(REGISTRY),
    "method": {
        "gal": {"warmup_epochs": 1},
        "dividemix": {"warmup_epochs": 1, "rampup_epochs": 1},
        "gradsim": {"average_epochs": 1},
    },
    "clean": {"methods": ["ce"]},
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("golden")
    (root / "params.yaml").write_text(yaml.safe_dump(RAW))
    ingest_and_noise(parse_params(RAW), root / "data/ingested", root / "data/noisy")
    return root


def figures(root: Path, name: str) -> dict:
    """What is pinned: the epoch log's loss and test accuracy, and the score table's sums and counts."""
    log = pl.read_csv(root / f"logs/{name}.csv")
    scores = pl.read_parquet(root / f"scores/{name}.parquet")
    return {
        "train_loss": log["train_loss"].to_list(),
        "test_acc": log["test_acc"].to_list(),
        "noise_score_sum": float(scores["noise_score"].sum()),
        "confidence_sum": float(scores["confidence"].sum()),
        "grad_similarity_sum": float(scores["grad_similarity"].sum()),
        "flagged": int(scores["is_flagged"].sum()),
        "pseudo_label_head": scores.sort("sample_id")["pseudo_label"].head(16).to_list(),
    }


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_golden_numbers(name: str, workspace: Path, monkeypatch) -> None:
    monkeypatch.chdir(workspace)  # the stage's default paths, as dvc.yaml lays them out
    assert train.main([name, "--params", "params.yaml"]) == 0
    got = figures(workspace, name)
    path = GOLDEN / f"{name}.json"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=2) + "\n")
    assert path.is_file(), (
        f"{path} missing: run GRADCLEAN_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py"
    )
    want = json.loads(path.read_text())
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, list) and value and isinstance(value[0], float):
            assert got[key] == pytest.approx(value, abs=ABS_TOL), key
        elif isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=REL_TOL, abs=ABS_TOL), key
        elif key == "pseudo_label_head":
            assert sum(a == b for a, b in zip(got[key], value, strict=True)) >= LABELS_AGREE, key
        else:
            assert got[key] == value, key
