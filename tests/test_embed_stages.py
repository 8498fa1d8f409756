"""The weights -> embed -> noise (probe estimate) -> detect -> clean stages as `dvc repro` runs them, and
their refusals by name (weights that do not fit, a missing weights file, embeddings that do not match)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.clean import propose
from stages import clean, detect, embed, ingest, noise, weights

# One xdist worker for the whole module: its module-scoped workspace fixture is built once, not per worker.
pytestmark = pytest.mark.xdist_group("test_embed_stages")

RAW = {
    "data": {"source": "digits", "max_per_split": 120},
    "noise": {"rate": 0.4, "estimate_from": "probe"},
    "embed": {"image_size": 32, "batch_size": 128, "flip": False},
    "methods": ["ce"],
    "detectors": ["knn", "probe"],
    "detector": {"probe": {"folds": 3, "C_grid": [1.0, 10.0]}, "knn": {"k": 10}},
    "clean": {"methods": ["knn", "probe"], "agreement": "all", "max_share": "auto"},
}


def _run(main, args: list[str], params: Path) -> int:
    return main([*args, "--params", str(params)])


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("embed_ws")
    (root / "params.yaml").write_text(yaml.safe_dump(RAW))
    p = root / "params.yaml"
    w = root / "models/efficientnet_lite0.safetensors"
    assert _run(weights.main, ["--out", str(w)], p) == 0
    raw = {**RAW, "embed": {**RAW["embed"], "pretrained": str(w)}}
    p.write_text(yaml.safe_dump(raw))
    assert _run(ingest.main, ["--out", str(root / "ing")], p) == 0
    assert _run(embed.main, ["--ingested", str(root / "ing"), "--out", str(root / "emb.parquet")], p) == 0
    noisy = ["--out", str(root / "noisy/train.parquet"), "--report", str(root / "noisy/report.json")]
    noisy += ["--oof", str(root / "noisy/oof.parquet"), "--embeddings", str(root / "emb.parquet")]
    assert _run(noise.main, ["--ingested", str(root / "ing"), *noisy], p) == 0
    for d in ("knn", "probe"):
        args = [d, "--ingested", str(root / "ing"), "--noisy", str(root / "noisy/train.parquet")]
        args += ["--embeddings", str(root / "emb.parquet"), "--scores-dir", str(root / "scores")]
        assert _run(detect.main, [*args, "--logs-dir", str(root / "logs")], p) == 0
    args = ["--scores-dir", str(root / "scores"), "--out", str(root / "cleaned.parquet")]
    args += ["--csv", str(root / "cleaned.csv"), "--noise-report", str(root / "noisy/report.json")]
    assert _run(clean.main, args, p) == 0
    return root


def test_embeddings_table_records_model_and_checksum(ws):
    frame = pl.read_parquet(ws / "emb.parquet")
    assert frame.height == 240 and set(frame["split"]) == {"train", "test"}
    assert frame["embedding"].list.len().unique().to_list() == [1280]
    meta = json.loads(pq.read_schema(ws / "emb.parquet").metadata[b"gradclean.embedding_model"])
    assert meta["backbone"] == "efficientnet_lite0" and len(meta["weights_sha256"]) == 64
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["image_size"] == 32


def test_probe_estimate_and_its_report(ws):
    est = json.loads((ws / "noisy/report.json").read_text())["estimate"]
    assert est["from"] == "probe" and est["C"] in (1.0, 10.0) and 0 <= est["held_out_accuracy"] <= 1
    assert len(est["held_out_accuracy_per_fold"]) == 3 and 0 < est["rate"] < 1


def test_cleaning_changes_at_most_the_estimated_share(ws):
    rate = json.loads((ws / "noisy/report.json").read_text())["estimate"]["rate"]
    cleaned = pl.read_parquet(ws / "cleaned.parquet")
    changed = (cleaned["action"] != "keep").sum()
    assert 0 < changed <= rate * cleaned.height + 1e-9
    wrong = []
    for d in ("knn", "probe"):
        s = pl.read_parquet(ws / f"scores/{d}.parquet").sort("sample_id")
        args = [s[c].to_numpy() for c in ("given_label", "pseudo_label", "confidence", "noise_score")]
        wrong.append(propose(*args, relabel_confidence=0.8, drop_noise_score=0.5) != 0)
    acted = (cleaned.sort("sample_id")["action"] != "keep").to_numpy()
    assert not (acted & ~(wrong[0] & wrong[1])).any()  # agreement: all
    disputed = cleaned.sort("sample_id").filter(pl.Series(wrong[0] ^ wrong[1]))
    assert (disputed["action"] == "keep").all() and disputed["reason"].str.contains("disagree").all()
    log = pl.read_csv(ws / "logs/probe.csv")
    assert log.height == 1 and 0 <= log["test_acc"][0] <= 1


def _refused(capsys, main, args, params, *patterns) -> str:
    assert _run(main, args, params) == 2
    err = capsys.readouterr().err
    assert err.count("gradclean: error:") == 1, err
    for pat in patterns:
        assert pat in err, err
    return err


def test_weights_that_do_not_fit_the_backbone_name_the_first_bad_key(ws, tmp_path, capsys):
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["embed"]["backbone"] = "resnet18"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "emb.parquet"
    _refused(capsys, embed.main, ["--ingested", str(ws / "ing"), "--out", str(out)], tmp_path / "p.yaml",
             "embed.pretrained", "unexpected key 'blocks.")  # fmt: skip
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_missing_weights_file_is_refused(ws, tmp_path, capsys):
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["embed"]["pretrained"] = str(tmp_path / "gone.safetensors")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    args = ["--ingested", str(ws / "ing"), "--out", str(tmp_path / "e.parquet")]
    _refused(capsys, embed.main, args, tmp_path / "p.yaml", "embed.pretrained: weights file",
             "gone.safetensors' not found")  # fmt: skip


def test_embeddings_that_do_not_match_the_ingested_ids_are_refused(ws, tmp_path, capsys):
    frame = pl.read_parquet(ws / "emb.parquet")
    bad = tmp_path / "emb.parquet"
    pq.write_table(frame.filter(pl.col("sample_id") != frame["sample_id"][3]).to_arrow(), bad)
    scores = tmp_path / "scores"
    shutil.copytree(ws / "scores", scores)
    before = (scores / "knn.parquet").read_bytes()
    args = ["knn", "--ingested", str(ws / "ing"), "--noisy", str(ws / "noisy/train.parquet")]
    args += ["--embeddings", str(bad), "--scores-dir", str(scores), "--logs-dir", str(tmp_path / "logs")]
    missing = f"sample_id {frame['sample_id'][3]} missing"
    _refused(capsys, detect.main, args, ws / "params.yaml",
             "embeddings do not match the ingested train split", missing)  # fmt: skip
    assert (scores / "knn.parquet").read_bytes() == before and not (tmp_path / "logs").exists()


def _probe_again(ws: Path, out: Path, params: Path) -> pl.DataFrame:
    args = ["probe", "--ingested", str(ws / "ing"), "--noisy", str(ws / "noisy/train.parquet")]
    args += ["--embeddings", str(ws / "emb.parquet"), "--scores-dir", str(out), "--logs-dir", str(out)]
    args += ["--oof", str(ws / "noisy/oof.parquet"), "--noise-report", str(ws / "noisy/report.json")]
    assert _run(detect.main, args, params) == 0
    return pl.read_csv(out / "probe.csv")


def test_probe_detector_reuses_the_noise_stages_identical_fit(ws, tmp_path):
    log = _probe_again(ws, tmp_path / "a", ws / "params.yaml")
    assert log["reused_oof"][0] == 1.0
    fresh = pl.read_parquet(ws / "scores/probe.parquet")
    assert pl.read_parquet(tmp_path / "a/probe.parquet").equals(fresh)  # the same table as a fresh fit
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["detector"]["probe"]["C_grid"] = [1.0]  # another fit: the record's fingerprint no longer matches
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    assert _probe_again(ws, tmp_path / "b", tmp_path / "p.yaml")["reused_oof"][0] == 0.0
