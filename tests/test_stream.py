"""Streaming (`data.stream: true`): a generated folder of a few hundred JPEGs, read per batch from disk.

Every registered method trains on it through the train stage's own function; for CE the streamed run's score
table must be byte-identical to the run on the same folder ingested into memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from pipeline.data.stream import StreamedImages
from pipeline.data.tensors import ImageData
from pipeline.errors import DataError
from pipeline.io import read_table
from pipeline.methods import REGISTRY
from pipeline.params import parse_params
from pipeline.run import load_training_data, run_ingest, run_noise, run_train
from pipeline.schemas import INGESTED, SCORES

CLASSES = ["ant", "bee", "wasp"]
# One xdist worker for the whole module: its module-scoped workspace fixture is built once, not per worker.
pytestmark = pytest.mark.xdist_group("test_stream")
PER_CLASS = 80  # 240 JPEGs


def write_jpeg_folder(root: Path) -> Path:
    """`root/<class>/*.jpg`: class c is a noisy image of brightness ~60 + 60c, 20 x 20 px (resized to 12)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for j in range(PER_CLASS):
            a = (rng.integers(0, 70, (20, 20, 3)) + 60 * c).astype(np.uint8)
            a[:, : 4 + 5 * c] = 255 - a[:, : 4 + 5 * c]  # a class-dependent stripe
            Image.fromarray(a).save(root / name / f"{j:03d}.jpg", quality=85)
    return root


def raw_params(root: Path, stream: bool, workers: int = 0) -> dict:
    return {
        "seed": 0,
        "data": {"source": "imagefolder", "root": str(root), "stream": stream},
        "noise": {"rate": 0.3, "estimate": True, "estimate_folds": 2, "estimate_epochs": 1},
        "train": {
            "model_kwargs": {"channels": [8, 16, 16, 16], "layers": [1, 1, 1, 1]},
            "image_size": 12,
            "epochs": 2,
            "batch_size": 32,
            "augment": {"hflip": True, "pad_crop": 1},
            "progress": False,
            "workers": workers,
        },
        "methods": sorted(REGISTRY),
        "method": {
            "gal": {"warmup_epochs": 1},
            "dividemix": {"warmup_epochs": 1, "rampup_epochs": 1},
            "gss": {"dividemix": {"warmup_epochs": 1, "rampup_epochs": 1}},
            "gradsim": {"average_epochs": 1},
        },
        "clean": {"methods": ["ce"]},
    }


def prepare(root: Path, out: Path, stream: bool, workers: int = 0):
    params = parse_params(raw_params(root, stream, workers))
    run_ingest(params, out / "ingested")
    noisy = out / "noisy"
    run_noise(
        params,
        out / "ingested",
        noisy / "train.parquet",
        noisy / "noise_report.json",
        noisy / "oof_probs.parquet",
    )
    return params


def train(params, name: str, out: Path) -> Path:
    scores = out / "scores" / f"{name}.parquet"
    run_train(
        params,
        name,
        out / "ingested",
        out / "noisy" / "train.parquet",
        scores,
        out / "logs" / f"{name}.csv",
        None,
        out / "steps" / f"{name}.csv",
        out / "history" / f"{name}.parquet",
    )
    return scores


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_jpeg_folder(tmp_path_factory.mktemp("jpegs") / "folder")


@pytest.fixture(scope="module")
def streamed(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("streamed")
    return prepare(folder, out, stream=True, workers=2), out


def test_streamed_ingest_keeps_paths_not_bytes(streamed, folder):
    _, out = streamed
    frame, names = read_table(out / "ingested" / "train.parquet", INGESTED)
    assert names == CLASSES
    assert frame["image"].null_count() == frame.height
    assert all(Path(f).is_file() and Path(f).is_relative_to(folder) for f in frame["file"])
    params = parse_params(raw_params(folder, True, 2))
    tr, te, _ = load_training_data(
        out / "ingested", out / "noisy" / "train.parquet", params.train, torch.device("cpu")
    )
    assert isinstance(tr.images, StreamedImages) and tr.images.shape == (len(tr), 3, 12, 12)
    batch = tr.images[torch.tensor([5, 0, 5])]
    assert batch.dtype == torch.uint8 and batch.shape == (3, 3, 12, 12)
    assert torch.equal(batch[0], batch[2])
    sub = tr.subset(np.array([0, 5]))
    assert isinstance(sub, ImageData) and isinstance(sub.images, StreamedImages)
    assert torch.equal(sub.images[torch.tensor([1])][0], batch[0])  # a lazy view reads the same file


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_trains_on_streamed_jpegs(name, streamed):
    params, out = streamed
    scores, names = read_table(train(params, name, out), SCORES)
    assert names == CLASSES and scores.height == 3 * PER_CLASS - 48  # the 20% test split is held out
    log = pl.read_csv(out / "logs" / f"{name}.csv")
    assert log.height == 2 and log["test_acc"].is_finite().all()


def test_streamed_scores_equal_in_memory_scores_byte_for_byte(folder, streamed, tmp_path):
    params, out = streamed
    in_memory = prepare(folder, tmp_path, stream=False)
    a = train(in_memory, "ce", tmp_path).read_bytes()
    b = train(params, "ce", out).read_bytes()
    assert a == b


def test_a_truncated_file_met_mid_training_is_named(folder, tmp_path):
    files = sorted((folder / "bee").glob("*.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(files[0].read_bytes()[:200])
    images = StreamedImages([str(files[1]), str(bad)], 12, 3, torch.device("cpu"))
    with pytest.raises(DataError, match=r"bad\.jpg: cannot decode image"):
        images[torch.tensor([0, 1])]
