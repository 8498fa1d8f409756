"""Kill and resume, and determinism, for every registered method through the train stage's own function.

For each method: a subprocess trains with `resume: true` and SIGKILLs itself right after epoch 2's log row,
before epoch 2's checkpoint is written (so the checkpoint on disk is epoch 1's); the stage is then re-run
with `resume: true` and must write a score table byte-identical to an uninterrupted run's. Two uninterrupted
runs with the same params and seed must also give byte-identical score tables.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ingest_and_noise

from pipeline.methods import REGISTRY
from pipeline.params import parse_params
from pipeline.run import run_train

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
KILL_AT = 2  # the subprocess dies after epoch 2's log row, before epoch 2's checkpoint


def tiny_raw(resume: bool) -> dict:
    return {
        "seed": 0,
        "data": {"source": "digits", "max_per_split": 96},
        "noise": {"rate": 0.4, "estimate": True, "estimate_folds": 2, "estimate_epochs": 1},
        "train": {
            "model_kwargs": {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1]},
            "image_size": 8,
            "epochs": EPOCHS,
            "batch_size": 32,
            "augment": {"pad_crop": 1},
            "progress": False,
            "resume": resume,
        },
        "methods": sorted(REGISTRY),
        "method": {
            "gal": {"warmup_epochs": 1},
            "dividemix": {"warmup_epochs": 1, "rampup_epochs": 1},
            "gradsim": {"average_epochs": 2},
        },
        "clean": {"methods": ["ce"]},
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliability")
    ingest_and_noise(parse_params(tiny_raw(False)), root / "ingested", root / "noisy")
    return root


def _train(name: str, data: Path, out: Path, resume: bool) -> Path:
    run_train(
        parse_params(tiny_raw(resume)),
        name,
        data / "ingested",
        data / "noisy" / "train.parquet",
        out / "scores.parquet",
        out / "log.csv",
        out / "ck.pt",
        out / "steps.csv",
        out / "history.parquet",
    )
    return out / "scores.parquet"


KILLER = """
import json, os, signal, sys
from pathlib import Path
from pipeline.params import parse_params
from pipeline.run import run_train

raw, name, data, out, kill_at = json.loads(sys.argv[1])
data, out = Path(data), Path(out)

def die(row):
    if row["epoch"] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

run_train(parse_params(raw), name, data / "ingested", data / "noisy" / "train.parquet",
          out / "scores.parquet", out / "log.csv", out / "ck.pt", out / "steps.csv", out / "history.parquet",
          on_epoch=die)
"""


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_sigkill_then_resume_matches_the_uninterrupted_run_byte_for_byte(name, data, tmp_path, faults_seen):
    faults_seen.append(("train (SIGKILL)", name, False))
    first = _train(name, data, tmp_path / "a", resume=False).read_bytes()
    again = _train(name, data, tmp_path / "b", resume=False).read_bytes()
    assert first == again, "same params and seed gave different score tables"

    killed = tmp_path / "killed"
    args = json.dumps([tiny_raw(True), name, str(data), str(killed), KILL_AT])
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (killed / "scores.parquet").exists()  # nothing half-written
    ck = torch.load(killed / "ck.pt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == KILL_AT - 1

    resumed = _train(name, data, killed, resume=True).read_bytes()
    assert resumed == first, f"{name}: resumed run differs from the uninterrupted one"
    faults_seen[-1] = ("train (SIGKILL)", name, True)


def test_cleaned_labels_are_byte_identical_across_runs(data, tmp_path):
    """Same score tables and params -> the same cleaned label file, byte for byte."""
    from pipeline.run import run_clean

    scores = tmp_path / "scores"
    for name in ("ce", "gradsim"):
        (scores / name).mkdir(parents=True)
        _train(name, data, scores / name, resume=False).rename(scores / f"{name}.parquet")
    raw = tiny_raw(False)
    raw["clean"]["methods"] = ["ce", "gradsim"]
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run / "labels.parquet"
        run_clean(parse_params(raw), scores, out, out.with_suffix(".csv"))
        outs.append((out.read_bytes(), out.with_suffix(".csv").read_bytes()))
    assert outs[0] == outs[1]
