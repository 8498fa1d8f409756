"""Stage CLIs on bad input: exit code 2, a one-line error naming the file/row/key, and no output left behind.

Every test writes its params file and outputs under tmp_path and calls the stage's `main(argv)` in-process.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import Cifar, Manifest, save_png, tiny_image, write_manifest

from pipeline.data.images import encode_png
from pipeline.errors import ValidationFailed
from pipeline.io import read_table, write_table
from pipeline.schemas import INGESTED, NOISY
from pipeline.validation import validate
from stages import clean as clean_stage
from stages import ingest as ingest_stage
from stages import noise as noise_stage

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def write_params(tmp_path: Path, changes: dict | None = None, name: str = "params.yaml") -> Path:
    """The repo's params.yaml with `{"a.b.c": value}` changes applied (value None under a new key adds it)."""
    raw = copy.deepcopy(BASE)
    raw["data"]["max_per_split"] = 60
    for key, value in (changes or {}).items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def ingest(params: Path, out: Path) -> int:
    return ingest_stage.main(["--params", str(params), "--out", str(out)])


def noise(params: Path, ingested: Path, out_dir: Path) -> int:
    return noise_stage.main(
        [
            "--params",
            str(params),
            "--ingested",
            str(ingested),
            "--out",
            str(out_dir / "train.parquet"),
            "--report",
            str(out_dir / "noise_report.json"),
            "--oof",
            str(out_dir / "oof_probs.parquet"),
        ]
    )


def fails(capsys, rc: int, *needles: str) -> str:
    """Assert exit code 2 and one 'gradclean: error:' message containing every needle; return it."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("gradclean: error: "), err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
    return err


def assert_ingest_wrote_nothing(out: Path) -> None:
    assert not (out / "train.parquet").exists() and not (out / "test.parquet").exists()
    assert files_under(out) == []  # no temp files either


# ---------------------------------------------------------------------------------------------- params
@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"data.source": "foo"}, ["data.source", "'foo'"]),
        ({"bogus": 1}, ["bogus: unknown key"]),
        ({"data.rooot": "x"}, ["data.rooot: unknown key"]),
        ({"train.augment.vflip": True}, ["train.augment.vflip: unknown key"]),
        ({"train.epochs": "ten"}, ["train.epochs", "'ten'"]),
    ],
    ids=["unknown-source", "unknown-top-key", "unknown-data-key", "unknown-nested-key", "epochs-not-int"],
)
def test_ingest_bad_params(tmp_path: Path, capsys, changes: dict, needles: list[str]) -> None:
    params = write_params(tmp_path, changes)
    out = tmp_path / "ingested"
    fails(capsys, ingest(params, out), str(params), *needles)
    assert_ingest_wrote_nothing(out)


def test_noise_rate_out_of_range(tmp_path: Path, capsys) -> None:
    params = write_params(tmp_path, {"noise.rate": 1.5})
    out = tmp_path / "noisy"
    fails(capsys, noise(params, tmp_path / "ingested", out), str(params), "noise.rate", "1.5")
    assert files_under(out) == []


def test_unknown_method(tmp_path: Path, capsys) -> None:
    params = write_params(tmp_path, {"methods": ["ce", "nope"]})
    out = tmp_path / "cleaned"
    rc = clean_stage.main(
        [
            "--params",
            str(params),
            "--scores-dir",
            str(tmp_path / "scores"),
            "--out",
            str(out / "labels.parquet"),
            "--csv",
            str(out / "labels.csv"),
        ]
    )
    fails(capsys, rc, str(params), "methods", "unknown method 'nope'")
    assert files_under(out) == []


def test_missing_params_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ingested"
    fails(capsys, ingest(tmp_path / "absent.yaml", out), "absent.yaml", "not found")
    assert_ingest_wrote_nothing(out)


# ------------------------------------------------------------------------------------------- manifests
def _manifest_params(tmp_path: Path, csv: Path, **extra) -> Path:
    return write_params(
        tmp_path,
        {
            "data.source": "manifest",
            "data.root": str(csv),
            "data.manifest_root": str(csv.parent),  # the images' folder (dvc.yaml watches it)
            **{f"data.{k}": v for k, v in extra.items()},
        },
    )


def test_manifest_unknown_class(tmp_path: Path, capsys, manifest: Manifest) -> None:
    rows = list(manifest.rows)
    rows.insert(3, ("imgs/bird_0.png", "cat", "train"))  # CSV line 5
    csv = write_manifest(manifest.root / "bad_class.csv", rows)
    params = _manifest_params(tmp_path, csv, classes=["bird", "plane"])
    out = tmp_path / "ingested"
    fails(capsys, ingest(params, out), str(csv), "row 5", "'cat'", "not a known class")
    assert_ingest_wrote_nothing(out)


def test_manifest_missing_image(tmp_path: Path, capsys, manifest: Manifest) -> None:
    rows = list(manifest.rows)
    rows.insert(2, ("imgs/gone.png", "bird", "train"))  # CSV line 4
    csv = write_manifest(manifest.root / "missing.csv", rows)
    out = tmp_path / "ingested"
    fails(
        capsys, ingest(_manifest_params(tmp_path, csv), out), str(csv), "row 4", "imgs/gone.png", "not found"
    )
    assert_ingest_wrote_nothing(out)


@pytest.mark.parametrize("bad", ["../outside.png", "imgs/../../outside.png", "ABS"])
def test_manifest_path_escaping_root(tmp_path: Path, capsys, manifest: Manifest, bad: str) -> None:
    outside = manifest.root.parent / "outside.png"
    save_png(outside, tiny_image(1, size=10))  # exists, so only the escape can be the error
    bad = str(outside) if bad == "ABS" else bad
    rows = list(manifest.rows)
    rows.insert(1, (bad, "plane", "train"))  # CSV line 3
    csv = write_manifest(manifest.root / "escape.csv", rows)
    out = tmp_path / "ingested"
    err = fails(capsys, ingest(_manifest_params(tmp_path, csv), out), str(csv), "row 3", repr(bad))
    assert "escapes the root" in err or "must be relative" in err
    assert_ingest_wrote_nothing(out)


def test_failed_rerun_keeps_earlier_good_output(tmp_path: Path, capsys, manifest: Manifest) -> None:
    out = tmp_path / "ingested"
    assert ingest(_manifest_params(tmp_path, manifest.csv), out) == 0
    before = {p: p.read_bytes() for p in files_under(out)}
    assert sorted(p.name for p in before) == ["test.parquet", "train.parquet"]
    rows = list(manifest.rows)
    rows.append(("imgs/gone.png", "bird", "train"))
    bad = write_manifest(manifest.root / "bad.csv", rows)
    fails(capsys, ingest(_manifest_params(tmp_path, bad, classes=None), out), str(bad), "imgs/gone.png")
    after = {p: p.read_bytes() for p in files_under(out)}
    assert after == before  # same files, byte-identical, no temp files


# ----------------------------------------------------------------------------------------- image folders
def test_image_folder_corrupt_image_named(tmp_path: Path, capsys, image_folder: Path) -> None:
    (image_folder / "dog" / "01.png").write_bytes(b"this is not a png")
    params = write_params(tmp_path, {"data.source": "imagefolder", "data.root": str(image_folder)})
    out = tmp_path / "ingested"
    err = fails(capsys, ingest(params, out), "image bytes decode")
    # the rule names the sample id and the file (relative to data.root), so a user can find it
    assert "sample_id 5" in err and "dog/01.png" in err
    assert_ingest_wrote_nothing(out)


def test_image_folder_empty_test_split(tmp_path: Path, capsys, image_folder_split: Path) -> None:
    for f in (image_folder_split / "test").rglob("*.png"):
        f.unlink()  # test/<class>/ folders stay, with no images in them
    params = write_params(tmp_path, {"data.source": "imagefolder", "data.root": str(image_folder_split)})
    out = tmp_path / "ingested"
    fails(capsys, ingest(params, out), str(image_folder_split), "test split is empty")
    assert_ingest_wrote_nothing(out)


# ---------------------------------------------------------------------------------------------- CIFAR-N
def test_cifar_n_label_file_wrong_length(tmp_path: Path, capsys, cifar10: Cifar) -> None:
    labels = tmp_path / "short.npy"
    np.save(labels, cifar10.train_y[:-1].astype(np.int64))
    params = write_params(
        tmp_path,
        {
            "data.source": "cifar10",
            "data.root": str(cifar10.root),
            "data.noisy_labels": str(labels),
            "noise.kind": "real",
        },
    )
    out = tmp_path / "ingested"
    fails(capsys, ingest(params, out), str(labels), "19 labels", "20 images")
    assert_ingest_wrote_nothing(out)


# ------------------------------------------------------------------------------------------- noise stage
def _ingested_with_duplicate(path: Path) -> None:
    png = encode_png(tiny_image(0, size=4))
    frame = pl.DataFrame(
        {
            "sample_id": pl.Series([0, 1, 2, 2, 4, 5], dtype=pl.Int64),
            "label": pl.Series([0, 1, 2, 0, 1, 2], dtype=pl.Int32),
            "image": pl.Series([png] * 6, dtype=pl.Binary),
            "source_path": pl.Series([None] * 6, dtype=pl.String),
            "noisy_label": pl.Series([None] * 6, dtype=pl.Int32),
        }
    )
    write_table(path, frame, INGESTED, ["a", "b", "c"])  # the writer's schema check does not test uniqueness


def test_noise_stage_duplicate_sample_ids(tmp_path: Path, capsys) -> None:
    ingested = tmp_path / "ingested"
    _ingested_with_duplicate(ingested / "train.parquet")
    out = tmp_path / "noisy"
    fails(
        capsys,
        noise(write_params(tmp_path), ingested, out),
        str(ingested / "train.parquet"),
        "sample_id 2",
        "more than once",
    )
    assert files_under(out) == []


def test_validation_also_catches_duplicate_ids() -> None:
    noisy = pl.DataFrame(
        {
            "sample_id": pl.Series([0, 1, 1], dtype=pl.Int64),
            "given_label": pl.Series([0, 1, 2], dtype=pl.Int32),
            "true_label": pl.Series([0, 1, 2], dtype=pl.Int32),
            "is_noisy": [False, False, False],
        }
    )
    with pytest.raises(
        ValidationFailed, match=r"(?s)noisy/train\.parquet.*unique on 'sample_id'.*sample_id 1, 1"
    ):
        validate(noisy, NOISY, 3, "noisy/train.parquet")


def test_noise_stage_missing_input(tmp_path: Path, capsys) -> None:
    out = tmp_path / "noisy"
    fails(
        capsys, noise(write_params(tmp_path), tmp_path / "nowhere", out), "nowhere/train.parquet", "not found"
    )
    assert files_under(out) == []


# ------------------------------------------------------------------------------------------- good path
def test_digits_ingest_and_noise_produce_valid_tables(tmp_path: Path, capsys) -> None:
    params = write_params(tmp_path, {"noise.rate": 0.3, "train.progress": False})
    ingested, noisy_dir = tmp_path / "data" / "ingested", tmp_path / "data" / "noisy"
    assert ingest(params, ingested) == 0
    assert noise(params, ingested, noisy_dir) == 0
    assert capsys.readouterr().err == ""
    train, names = read_table(ingested / "train.parquet", INGESTED)
    test, test_names = read_table(ingested / "test.parquet", INGESTED)
    assert names == test_names == [str(i) for i in range(10)]
    assert train.height == test.height == 60
    assert not set(train["sample_id"]) & set(test["sample_id"])
    noisy, noisy_names = read_table(noisy_dir / "train.parquet", NOISY)
    assert noisy_names == names
    assert noisy["sample_id"].sort().equals(train["sample_id"].sort())
    j = noisy.join(train.select("sample_id", "label"), on="sample_id")
    assert (j["true_label"] == j["label"]).all()
    assert (j["is_noisy"] == (j["given_label"] != j["true_label"])).all()
    report = json.loads((noisy_dir / "noise_report.json").read_text())
    assert report["kind"] == "symmetric" and report["requested_rate"] == 0.3
    assert report["realised_rate"] == pytest.approx(j["is_noisy"].mean())
    assert sorted(p.name for p in files_under(tmp_path / "data")) == [
        "noise_report.json",
        "oof_probs.parquet",
        "test.parquet",
        "train.parquet",
        "train.parquet",
    ]
