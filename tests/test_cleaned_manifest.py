"""The cleaned file names each sample's source, and the cleaned manifest round-trips: clean -> manifest ->
ingest again gives the same images with the cleaned labels, dropped rows left out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import save_png, write_manifest

from stages import clean, ingest, noise, train

RAW = {
    "data": {"source": "manifest", "root": "src/manifest.csv"},
    "noise": {"kind": "symmetric", "rate": 0.4, "estimate": False},
    "train": {
        "epochs": 1, "batch_size": 16, "image_size": 8, "progress": False,
        "model_kwargs": {"channels": [8, 8, 8, 8], "layers": [1, 1, 1, 1]},
    },
    "methods": ["ce"],
    "detectors": [],
    "clean": {"methods": ["ce"], "max_share": 0.3},
}  # fmt: skip


def _images(src: Path) -> list[list[str]]:
    rows = []
    rng = np.random.default_rng(0)
    for i in range(48):
        cls = ["cat", "dog"][i % 2]
        shade = 40 if cls == "cat" else 200
        img = np.clip(shade + rng.normal(0, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
        save_png(src / "imgs" / f"{cls}_{i}.png", img)
        rows.append([f"imgs/{cls}_{i}.png", cls, "test" if i >= 40 else "train"])
    return rows


@pytest.fixture(scope="module")
def cleaned_ws(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("cleaned_ws")
    write_manifest(ws / "src/manifest.csv", _images(ws / "src"))
    (ws / "params.yaml").write_text(yaml.safe_dump(RAW))
    old = os.getcwd()
    os.chdir(ws)
    try:
        assert ingest.main(["--params", "params.yaml"]) == 0
        assert noise.main(["--params", "params.yaml"]) == 0
        assert train.main(["ce", "--params", "params.yaml"]) == 0
        args = [
            "--ingested",
            "data/ingested",
            "--manifest",
            "cleaned/manifest.csv",
            "--params",
            "params.yaml",
        ]
        assert clean.main(args) == 0
    finally:
        os.chdir(old)
    return ws


def test_cleaned_file_names_each_samples_source(cleaned_ws):
    cleaned = pl.read_parquet(cleaned_ws / "cleaned/labels.parquet")
    ingested = pl.read_parquet(cleaned_ws / "data/ingested/train.parquet").select("sample_id", "source_path")
    joined = cleaned.join(ingested, on="sample_id", suffix="_ingested")
    assert (joined["source_path"] == joined["source_path_ingested"]).all()
    for rel, full in cleaned.select("source_path", "source_file").iter_rows():
        assert Path(full).is_absolute() and Path(full) == (cleaned_ws / "src" / rel).resolve()
    assert cleaned["source_index"].null_count() == cleaned.height  # files, not positions
    assert (
        pl.read_csv(cleaned_ws / "cleaned/labels.csv")["source_path"].to_list()
        == cleaned["source_path"].to_list()
    )


def test_cleaned_manifest_round_trips_through_ingest(cleaned_ws, tmp_path):
    cleaned = pl.read_parquet(cleaned_ws / "cleaned/labels.parquet")
    assert (cleaned["action"] != "keep").any()  # the test means something only if cleaning changed rows
    manifest = pl.read_csv(cleaned_ws / "cleaned/manifest.csv")
    assert manifest.columns == ["path", "label", "split", "source_index"]
    raw = {**RAW, "data": {"source": "manifest", "root": str(cleaned_ws / "cleaned/manifest.csv"),
                           "manifest_root": str(cleaned_ws / "src"), "classes": ["cat", "dog"]}}  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert ingest.main(["--out", str(tmp_path / "again"), "--params", str(tmp_path / "params.yaml")]) == 0
    again = pl.read_parquet(tmp_path / "again/train.parquet")
    first = pl.read_parquet(cleaned_ws / "data/ingested/train.parquet")
    kept = cleaned.filter(pl.col("action") != "drop").join(first.select("sample_id", "image"), on="sample_id")
    assert again.height == kept.height
    by_path = again.join(kept, on="source_path", suffix="_first")
    assert by_path.height == kept.height and (by_path["image"] == by_path["image_first"]).all()
    assert (by_path["label"] == by_path["cleaned_label"]).all()
    test_again = pl.read_parquet(tmp_path / "again/test.parquet")
    test_first = pl.read_parquet(cleaned_ws / "data/ingested/test.parquet")
    assert sorted(test_again["source_path"]) == sorted(test_first["source_path"])
