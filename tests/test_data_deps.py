"""dvc.yaml watches the dataset: a changed byte under `data.root` (an image folder, a manifest, a CIFAR-N
label file inside the CIFAR root) makes the ingest stage out of date, so `dvc repro` re-runs it and all it
feeds.

The repo's own dvc.yaml runs in a scratch copy. Instead of running ingest (seconds per source), the test
records the stage as done (`dvc commit`, which hashes its deps into dvc.lock as a finished run would), then
changes one input and asks `dvc status ingest`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import save_png, tiny_image, write_cifar10, write_manifest
from e2e_run import ROOT, copy_repo, sh


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict]:
    dst = tmp_path_factory.mktemp("deps_repo")
    return dst, copy_repo(dst)


def _done_then_status(repo: tuple[Path, dict], data: dict, change) -> str:
    """Point params at `data`, record ingest as run, apply `change`, return `dvc status ingest`."""
    root, env = repo
    params = yaml.safe_load((ROOT / "params.yaml").read_text())  # the shipped params, this test's data
    params["data"].update(data)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "data/ingested").mkdir(parents=True, exist_ok=True)
    (root / "data/ingested/train.parquet").write_bytes(b"stand-in for the stage's output")
    sh(["dvc", "commit", "--force", "ingest"], root, env)
    before = sh(["dvc", "status", "ingest"], root, env).stdout
    assert "changed" not in before, before
    change()
    return sh(["dvc", "status", "ingest"], root, env).stdout


def test_an_overwritten_image_in_a_folder_reruns_ingest(repo, tmp_path):
    folder = tmp_path / "images"
    for i in range(4):
        save_png(folder / "train" / ["cat", "dog"][i % 2] / f"{i}.png", tiny_image(i))
        save_png(folder / "test" / ["cat", "dog"][i % 2] / f"{i}.png", tiny_image(10 + i))
    out = _done_then_status(
        repo,
        {"source": "imagefolder", "root": str(folder)},
        lambda: save_png(folder / "train" / "cat" / "0.png", tiny_image(99)),
    )
    assert "changed deps" in out and str(folder) in out, out


def test_a_relabelled_manifest_row_reruns_ingest(repo, tmp_path):
    for i in range(4):
        save_png(tmp_path / f"{i}.png", tiny_image(i))
    rows = [(f"{i}.png", ["cat", "dog"][i % 2]) for i in range(4)]
    path = write_manifest(tmp_path / "manifest.csv", rows, header="path,label")
    out = _done_then_status(
        repo,
        {"source": "manifest", "root": str(path)},
        lambda: write_manifest(path, [("0.png", "dog"), *rows[1:]], header="path,label"),
    )
    assert "changed deps" in out and "manifest.csv" in out, out


def test_an_overwritten_manifest_image_reruns_ingest(repo, tmp_path):
    images = tmp_path / "images"
    for i in range(4):
        save_png(images / f"{i}.png", tiny_image(i))
    rows = [(f"{i}.png", ["cat", "dog"][i % 2]) for i in range(4)]
    path = write_manifest(tmp_path / "lists" / "manifest.csv", rows, header="path,label")
    out = _done_then_status(
        repo,
        {"source": "manifest", "root": str(path), "manifest_root": str(images)},
        lambda: save_png(images / "2.png", tiny_image(77)),  # same name, new bytes, manifest unchanged
    )
    assert "changed deps" in out and str(images) in out and "manifest.csv" not in out, out


def test_a_changed_cifar_n_label_file_reruns_ingest(repo, tmp_path):
    cifar = write_cifar10(tmp_path / "cifar")
    labels = cifar.root / "CIFAR-10_human.npy"
    np.save(labels, cifar.train_y.astype(np.int64))
    flipped = cifar.train_y.astype(np.int64).copy()
    flipped[0] = (flipped[0] + 1) % 10
    out = _done_then_status(
        repo,
        {"source": "cifar10", "root": str(cifar.root), "noisy_labels": str(labels)},
        lambda: np.save(labels, flipped),
    )
    assert "changed deps" in out and str(cifar.root) in out, out
