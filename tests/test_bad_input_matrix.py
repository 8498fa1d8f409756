"""The bad-input matrix: every stage, fed each fault that can reach it, fails cleanly.

A good workspace is built once (every stage run on a small digits subset, laid out as the repo's dvc.yaml
lays it out). Each case copies it, plants one fault, and runs one stage's CLI `main(argv)` from inside the
copy, as `dvc repro` would. It must:

- exit with code 2 and print one `gradclean: error:` message naming the file, row or key;
- leave every earlier output of that stage byte-identical (the good run's outputs are in place), and no
  temporary file behind.

One parametrised test per stage; the faults that reach a stage are listed beside its test. Each case that
holds is counted, and the totals are printed at the end of the test run (see `conftest.py`).
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import save_png, tiny_image, write_cifar10, write_manifest
from PIL import Image

from experiments import gal_figure1
from stages import clean, evaluate, ingest, noise, retrain, train

# One xdist worker for the whole module: its module-scoped workspace fixture is built once, not per worker.
pytestmark = pytest.mark.xdist_group("test_bad_input_matrix")

REPO = Path(__file__).resolve().parents[1]

STAGES = {
    "ingest": (ingest.main, [], ["data/ingested"]),
    "noise": (noise.main, [], ["data/noisy"]),
    "train": (train.main, ["ce"], ["scores/ce.parquet", "logs/ce.csv", "logs/steps/ce.csv", "checkpoints"]),
    "gal_figure1": (  # the GAL Figure-1 experiment (experiments/), on the ingested tables
        gal_figure1.main,
        ["--rates", "0.5", "--epochs", "2", "--max-samples", "all", "--out", "experiments/out"],
        ["experiments/out"],
    ),
    "clean": (clean.main, [], ["cleaned"]),
    "retrain": (retrain.main, [], ["reports/retrain.json", "logs/retrain.csv", "checkpoints/retrain.pt"]),
    "evaluate": (evaluate.main, [], ["reports/metrics.json", "reports/report.html", "reports/plots"]),
}
"""stage -> (CLI main, extra argv, its outputs under the workspace, files or folders)."""


def workspace_params() -> dict:
    raw = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    raw["data"]["max_per_split"] = 60
    raw["noise"]["estimate"] = False
    raw["train"].update(
        epochs=2,
        batch_size=16,
        progress=False,
        model_kwargs={"channels": [8, 16, 16, 16], "layers": [1, 1, 1, 1]},
    )
    raw["methods"] = raw["clean"]["methods"] = ["ce"]
    raw["detectors"] = []  # the embed and detect stages have their own bad-input tests (test_embed_stages.py)
    raw["method"]["gal"]["warmup_epochs"] = 1
    raw["evaluate"]["gallery_size"] = 4
    # 2 epochs of CE call nearly every label wrong, and with no estimate (noise.estimate: false) nothing
    # caps the share: retrain would get no rows, which it now refuses. Cap it as a user would.
    raw["clean"]["max_share"] = 0.5
    return raw


def write_yaml(path: Path, raw: dict) -> None:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def good_workspace(tmp_path_factory) -> Path:
    """Every stage run once, in order, on 60 + 60 digits: the earlier good outputs the faults must spare."""
    ws = tmp_path_factory.mktemp("good_ws")
    write_yaml(ws / "params.yaml", workspace_params())
    old = os.getcwd()
    os.chdir(ws)
    try:
        for stage, (main, extra, _) in STAGES.items():
            assert main([*extra, "--params", "params.yaml"]) == 0, stage
    finally:
        os.chdir(old)
    return ws


# ------------------------------------------------------------------------------------------- fault tools
def edit_params(**changes) -> Callable[[Path], None]:
    """A fault that sets dotted params keys (`data__max_per_split=...` means data.max_per_split)."""

    def apply(ws: Path) -> None:
        raw = yaml.safe_load((ws / "params.yaml").read_text())
        for key, value in changes.items():
            node = raw
            *parents, last = key.split("__")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        write_yaml(ws / "params.yaml", raw)

    return apply


def edit_table(rel: str, change: Callable[[pl.DataFrame], pl.DataFrame]) -> Callable[[Path], None]:
    """A fault that rewrites a Parquet table (keeping its class-name metadata) through `change`."""

    def apply(ws: Path) -> None:
        path = ws / rel
        meta = pq.read_schema(path).metadata
        table = change(pl.read_parquet(path)).to_arrow()
        pq.write_table(table.replace_schema_metadata(meta), path)

    return apply


def replace_bytes(rel: str, data: bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        path = ws / rel
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)

    return apply


def delete(rel: str) -> Callable[[Path], None]:
    return lambda ws: (ws / rel).unlink()


def both(*faults: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        for f in faults:
            f(ws)

    return apply


def set_row(column: str, row: int, value) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def change(df: pl.DataFrame) -> pl.DataFrame:
        values = df[column].to_list()
        values[row] = value
        return df.with_columns(pl.Series(column, values, dtype=df[column].dtype, strict=False))

    return change


def recast(column: str, values: Callable[[pl.Series], pl.Series]) -> Callable[[pl.DataFrame], pl.DataFrame]:
    return lambda df: df.with_columns(values(df[column]).alias(column))


def keep_only(df: pl.DataFrame, keep: pl.Expr) -> pl.DataFrame:
    """A cleaned table that keeps (unchanged) the rows where `keep` holds and drops the rest."""
    return df.with_columns(
        pl.when(keep).then(pl.lit("keep")).otherwise(pl.lit("drop")).alias("action"),
        pl.when(keep)
        .then(pl.col("given_label"))
        .otherwise(None)
        .cast(df["cleaned_label"].dtype)
        .alias("cleaned_label"),
        pl.when(keep).then(pl.col("given_class")).otherwise(None).alias("cleaned_class"),
    )


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def set_image(row: int, data: bytes) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """Replace one ingested image's bytes (its source_path names it in the error)."""
    return lambda df: df.with_columns(
        pl.Series("image", [data if i == row else b for i, b in enumerate(df["image"])], dtype=pl.Binary),
        pl.Series(
            "source_path",
            [f"planted/row{row}.png" if i == row else p for i, p in enumerate(df["source_path"])],
            dtype=pl.String,
        ),
    )


# Manifest sources for the ingest stage: 8 PNGs of two classes under ws/src, rows `path,label,split`.
def manifest_source(
    rows: Callable[[list[list[str]]], list[list[str]]] = lambda r: r,
    files: Callable[[Path], None] = lambda src: None,
    **data_params,
) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        src = ws / "src"
        base = []
        for i in range(8):
            cls = ["bird", "plane"][i % 2]
            save_png(src / "imgs" / f"{cls}_{i}.png", tiny_image(300 + i, size=10))
            base.append([f"imgs/{cls}_{i}.png", cls, "test" if i >= 6 else "train"])
        files(src)
        write_manifest(src / "manifest.csv", rows(base))
        edit_params(
            data__source="manifest",
            data__root=str(src / "manifest.csv"),
            data__manifest_root=str(src),  # the images' folder (dvc.yaml watches it)
            data__max_per_split=None,
            **{f"data__{k}": v for k, v in data_params.items()},
        )(ws)

    return apply


def cifar_source(change: Callable[[Path], None], **data_params) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        folder = write_cifar10(ws / "cifar").folder
        change(folder)
        edit_params(
            data__source="cifar10",
            data__root=str(ws / "cifar"),
            data__max_per_split=None,
            **{f"data__{k}": v for k, v in data_params.items()},
        )(ws)

    return apply


def cifar_batch(name: str, key: bytes, value: Callable[[object], object]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        d = pickle.loads((folder / name).read_bytes())
        d[key] = value(d[key])
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))

    return change


def noisy_label_file(labels: np.ndarray) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        cifar_source(lambda folder: None)(ws)
        np.save(ws / "cifar_n.npy", labels)
        edit_params(data__noisy_labels=str(ws / "cifar_n.npy"), noise__kind="real")(ws)

    return apply


def symlink_out(src: Path) -> None:
    outside = src.parent / "outside.png"
    save_png(outside, tiny_image(1, size=10))
    (src / "imgs" / "bird_0.png").unlink()
    (src / "imgs" / "bird_0.png").symlink_to(outside)


def tamper_gray(src: Path) -> None:
    save_png(src / "imgs" / "bird_2.png", tiny_image(2, size=10, gray=True))


def malicious_pickle(folder: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (folder / "data_batch_3").write_bytes(pickle.dumps(Evil(), protocol=2))


GRAY = tiny_image(5, size=8, gray=True)
RGB = tiny_image(5, size=8)
PLANTED = "planted/row3.png"


@dataclass(frozen=True)
class Fault:
    id: str
    apply: Callable[[Path], None]
    needles: tuple[str, ...]


def F(id: str, apply: Callable[[Path], None], *needles: str) -> Fault:
    return Fault(id, apply, needles)


# ------------------------------------------------------------------------------------------------ faults
INGEST = [
    F(
        "corrupt-image",
        manifest_source(files=lambda s: (s / "imgs/plane_3.png").write_bytes(b"\x89PNG junk")),
        "imgs/plane_3.png",
    ),
    F(
        "truncated-png",
        manifest_source(
            files=lambda s: (s / "imgs/plane_3.png").write_bytes((s / "imgs/plane_3.png").read_bytes()[:60])
        ),
        "imgs/plane_3.png",
    ),
    F(
        "truncated-jpeg",
        manifest_source(
            rows=lambda r: [[p.replace("bird_2.png", "bird_2.jpg"), c, s] for p, c, s in r],
            files=lambda s: (s / "imgs/bird_2.jpg").write_bytes(jpeg(tiny_image(2, size=64))[:400]),
        ),
        "imgs/bird_2.jpg",
    ),
    F(
        "missing-file",
        manifest_source(files=lambda s: (s / "imgs/bird_4.png").unlink()),
        "row 6",
        "bird_4.png",
        "not found",
    ),
    F(
        "wrong-image-size-cifar",
        cifar_source(cifar_batch("data_batch_2", b"data", lambda x: x[:, :3000])),
        "data_batch_2",
        "3072",
    ),
    F(
        "label-string-not-a-class",
        manifest_source(
            rows=lambda r: r[:3] + [[r[3][0], "horse", r[3][2]]] + r[4:], classes=["bird", "plane"]
        ),
        "row 5",
        "'horse'",
    ),
    F(
        "negative-label",
        manifest_source(
            rows=lambda r: [[p, str(i % 2) if i != 2 else "-1", s] for i, (p, c, s) in enumerate(r)]
        ),
        "row 4",
        "'-1'",
    ),
    F(
        "out-of-range-label-cifar",
        cifar_source(cifar_batch("data_batch_1", b"labels", lambda y: [*y[:-1], 10])),
        "data_batch_1",
        "label 10",
    ),
    F("out-of-range-label-file", noisy_label_file(np.full(20, 12, dtype=np.int64)), "cifar_n.npy", "12"),
    F(
        "nan-label",
        manifest_source(rows=lambda r: r[:1] + [[r[1][0], "NaN", r[1][2]]] + r[2:]),
        "row 3",
        "missing label",
    ),
    F("nan-label-file", noisy_label_file(np.full(20, np.nan)), "cifar_n.npy", "integer"),
    F(
        "duplicate-id",
        manifest_source(rows=lambda r: r + [[r[0][0], "bird", "train"]]),
        "row 10",
        "imgs/bird_0.png",
        "repeats row 2",
    ),
    F("empty-dataset", manifest_source(rows=lambda r: []), "manifest.csv", "no rows"),
    F(
        "single-class",
        manifest_source(rows=lambda r: [[p, "bird", s] for p, c, s in r]),
        "one class",
        "'bird'",
    ),
    F("label-file-wrong-length", noisy_label_file(np.zeros(19, dtype=np.int64)), "cifar_n.npy", "19 labels"),
    F(
        "label-file-outside-root",  # good labels, but dvc.yaml watches data.root only
        noisy_label_file(np.arange(20, dtype=np.int64) % 10),  # the fixture's own labels
        "cifar_n.npy",
        "outside data.root",
    ),
    F(
        "dotdot-path",
        manifest_source(rows=lambda r: [["../outside.png", "bird", "train"], *r[1:]]),
        "row 2",
        "escapes the root",
    ),
    F(
        "absolute-path",
        manifest_source(rows=lambda r: [["/etc/hostname", "bird", "train"], *r[1:]]),
        "row 2",
        "must be relative",
    ),
    F("symlink-escape", manifest_source(files=symlink_out), "row 2", "escapes the root"),
    F("unsafe-pickle", cifar_source(malicious_pickle), "data_batch_3", "refused"),
    F("param-wrong-type", edit_params(data__max_per_split="many"), "data.max_per_split", "'many'"),
    F("param-unknown-key", edit_params(data__colour="rgb"), "data.colour: unknown key"),
    F(
        "same-file-spelled-twice",
        manifest_source(rows=lambda r: [*r, ["./" + r[0][0], "plane", "test"]]),
        "row 10: the same file as",
        "row 2",
    ),
    F(
        "numbers-spelled-two-ways",
        manifest_source(
            rows=lambda r: [[p, ["0", "1", "0.0", "1.0"][i % 4], s] for i, (p, _, s) in enumerate(r)]
        ),
        "label '0.0' is the number '0'",
    ),
    F(
        "class-index-gaps",
        manifest_source(rows=lambda r: [[p, ["0", "7"][i % 2], s] for i, (p, _, s) in enumerate(r)]),
        "6 of them have no rows",
    ),
    F(
        "sixteen-bit-png",
        manifest_source(
            files=lambda s: Image.fromarray(np.full((10, 10), 60000, dtype=np.uint16)).save(
                s / "imgs/plane_3.png"
            )
        ),
        "imgs/plane_3.png",
        "decode as an image",
    ),
    F("repeated-class-name", edit_params(data__classes=["a", "a"]), "data.classes", "listed more than once"),
    F("negative-seed", edit_params(seed=-1), "seed", "greater than or equal to 0"),
    F("huge-seed", edit_params(seed=2**70), "seed", "less than 4294967296"),
    F("negative-split-seed", edit_params(data__split_seed=-1), "data.split_seed"),
    F("boolean-for-a-number", edit_params(data__max_per_split=True), "data.max_per_split", "is a boolean"),
    F(
        "noisy-labels-without-real-noise",
        edit_params(data__noisy_labels="labels.npy"),
        "data.noisy_labels is set but noise.kind is 'symmetric'",
    ),
    F(
        "duplicate-yaml-key",
        lambda ws: (ws / "params.yaml").write_text((ws / "params.yaml").read_text() + "seed: 3\n"),
        "params.yaml",
        "key 'seed' given twice",
    ),
    F(
        "empty-params-file",
        lambda ws: (ws / "params.yaml").write_text(""),
        "params.yaml",
        "the file is empty",
    ),
]

NOISE = [
    F("missing-file", delete("data/ingested/train.parquet"), "data/ingested/train.parquet", "not found"),
    F(
        "corrupt-parquet",
        replace_bytes("data/ingested/train.parquet", b"PAR1 not really"),
        "train.parquet",
        "not a readable Parquet",
    ),
    F(
        "truncated-parquet",
        replace_bytes("data/ingested/train.parquet", lambda b: b[: len(b) // 2]),
        "train.parquet",
        "not a readable Parquet",
    ),
    F(
        "corrupt-image",
        both(
            edit_table("data/ingested/train.parquet", set_image(3, b"\x89PNG junk")),
            edit_params(noise__estimate=True),
        ),
        PLANTED,
        "cannot decode",
    ),
    F(
        "truncated-png",
        both(
            edit_table("data/ingested/train.parquet", set_image(3, png(GRAY)[:40])),
            edit_params(noise__estimate=True),
        ),
        PLANTED,
        "cannot decode",
    ),
    F(
        "gray-mixed-with-rgb",
        both(
            edit_table("data/ingested/train.parquet", set_image(3, png(RGB))),
            edit_params(noise__estimate=True),
        ),
        PLANTED,
        "colour image among grayscale",
        "train.channels",
    ),
    F(
        "label-out-of-range",
        edit_table("data/ingested/train.parquet", set_row("label", 3, 10)),
        "train.parquet",
        "'label' above 9",
    ),
    F(
        "negative-label",
        edit_table("data/ingested/train.parquet", set_row("label", 3, -1)),
        "train.parquet",
        "'label' below 0",
    ),
    F(
        "label-as-string",
        edit_table(
            "data/ingested/train.parquet", recast("label", lambda s: s.cast(pl.String).replace("3", "three"))
        ),
        "train.parquet",
        "column 'label'",
    ),
    F(
        "nan-label",
        edit_table(
            "data/ingested/train.parquet",
            recast("label", lambda s: s.cast(pl.Float64).set(s == 3, float("nan"))),
        ),
        "train.parquet",
        "'label'",
    ),
    F(
        "duplicate-id",
        edit_table("data/ingested/train.parquet", lambda df: pl.concat([df, df.head(1)])),
        "train.parquet",
        "more than once",
    ),
    F(
        "empty-table",
        edit_table("data/ingested/train.parquet", lambda df: df.head(0)),
        "train.parquet",
        "is empty",
    ),
    F(
        "single-class",
        edit_table("data/ingested/train.parquet", recast("label", lambda s: s * 0)),
        "train.parquet",
        "one class",
    ),
    F("param-wrong-type", edit_params(noise__rate="high"), "noise.rate", "'high'"),
    F("param-unknown-key", edit_params(noise__ratee=0.3), "noise.ratee: unknown key"),
]

TRAIN = [
    F("missing-noisy", delete("data/noisy/train.parquet"), "data/noisy/train.parquet", "not found"),
    F(
        "truncated-parquet",
        replace_bytes("data/noisy/train.parquet", lambda b: b[: len(b) // 2]),
        "noisy/train.parquet",
        "not a readable Parquet",
    ),
    F(
        "label-file-wrong-length",
        edit_table("data/noisy/train.parquet", lambda df: df.head(df.height - 1)),
        "noisy/train.parquet",
        "sample ids do not match",
    ),
    F(
        "given-label-out-of-range",
        edit_table("data/noisy/train.parquet", set_row("given_label", 0, 10)),
        "noisy/train.parquet",
        "'given_label' above 9",
    ),
    F(
        "label-as-string",
        edit_table(
            "data/noisy/train.parquet",
            recast("given_label", lambda s: s.cast(pl.String).replace("4", "four")),
        ),
        "noisy/train.parquet",
        "column 'given_label'",
    ),
    F(
        "duplicate-id",
        edit_table("data/noisy/train.parquet", lambda df: pl.concat([df, df.tail(1)])),
        "noisy/train.parquet",
        "more than once",
    ),
    F(
        "empty-table",
        edit_table("data/noisy/train.parquet", lambda df: df.head(0)),
        "noisy/train.parquet",
        "is empty",
    ),
    F(
        "nan-probabilities",
        edit_table(
            "data/noisy/oof_probs.parquet",
            recast("probs", lambda s: pl.Series([[float("nan")] * 10] * len(s), dtype=pl.List(pl.Float32))),
        ),
        "oof_probs.parquet",
        "summing to 1",
    ),
    F(
        "corrupt-json",
        replace_bytes("data/noisy/noise_report.json", b"{not json"),
        "noise_report.json",
        "not valid JSON",
    ),
    F(
        "corrupt-image",
        edit_table("data/ingested/train.parquet", set_image(3, b"GIF89a junk")),
        PLANTED,
        "cannot decode",
    ),
    F(
        "gray-mixed-with-rgb",
        edit_table("data/ingested/test.parquet", set_image(3, png(RGB))),
        PLANTED,
        "colour image among grayscale",
    ),
    F("param-wrong-type", edit_params(train__epochs="ten"), "train.epochs", "'ten'"),
    F("epochs-true", edit_params(train__epochs=True), "train.epochs", "is a boolean"),
    F("bad-milestones", edit_params(train__milestones=[5, -3, 100]), "train.milestones", "[5, -3, 100]"),
    F("device-mps-missing", edit_params(train__device="mps"), "train.device", "'mps'", "not available"),
    F("device-meta", edit_params(train__device="meta"), "train.device", "'meta'"),
    F("lr-inf", edit_params(train__lr=float("inf")), "train.lr", "finite"),
    F(
        "loss-blows-up",
        edit_params(train__lr=1e30, train__momentum=0.0),
        "train@ce: the training loss is not finite at epoch 1",
        "train.lr",
    ),
    F("param-unknown-key", edit_params(train__lrr=0.1), "train.lrr: unknown key"),
    F("method-option-wrong-type", edit_params(method__ce__nets="two"), "method.ce", "nets"),
]

GAL_FIGURE1 = [
    F("missing-file", delete("data/ingested/test.parquet"), "data/ingested/test.parquet", "not found"),
    F(
        "corrupt-image",
        edit_table("data/ingested/train.parquet", set_image(3, b"junk")),
        PLANTED,
        "cannot decode",
    ),
    F(
        "label-out-of-range",
        edit_table("data/ingested/train.parquet", set_row("label", 5, 12)),
        "train.parquet",
        "'label' above 9",
    ),
    F("param-wrong-type", edit_params(method__gal__tau="high"), "method.gal", "tau"),
    F("param-unknown-key", edit_params(method__gal__steps=3), "method.gal", "steps: unknown key"),
]

CLEAN = [
    F("missing-scores", delete("scores/ce.parquet"), "scores/ce.parquet", "not found"),
    F(
        "truncated-parquet",
        replace_bytes("scores/ce.parquet", lambda b: b[:100]),
        "scores/ce.parquet",
        "not a readable Parquet",
    ),
    F(
        "nan-noise-score",
        edit_table("scores/ce.parquet", set_row("noise_score", 7, float("nan"))),
        "scores/ce.parquet",
        "'noise_score' is null or NaN",
    ),
    F(
        "confidence-out-of-range",
        edit_table("scores/ce.parquet", set_row("confidence", 7, 1.5)),
        "scores/ce.parquet",
        "'confidence' above 1",
    ),
    F(
        "probs-not-summing-to-1",
        edit_table("scores/ce.parquet", recast("probs", lambda s: s.list.eval(pl.element() * 2))),
        "scores/ce.parquet",
        "summing to 1",
    ),
    F(
        "pseudo-label-negative",
        edit_table("scores/ce.parquet", set_row("pseudo_label", 7, -1)),
        "scores/ce.parquet",
        "'pseudo_label' below 0",
    ),
    F(
        "duplicate-id",
        edit_table("scores/ce.parquet", lambda df: pl.concat([df, df.head(2)])),
        "scores/ce.parquet",
        "more than once",
    ),
    F("empty-table", edit_table("scores/ce.parquet", lambda df: df.head(0)), "scores/ce.parquet", "is empty"),
    F("param-wrong-type", edit_params(clean__relabel_confidence="high"), "clean.relabel_confidence"),
    F("param-unknown-key", edit_params(clean__vote="all"), "clean.vote: unknown key"),
]

RETRAIN = [
    F("missing-cleaned", delete("cleaned/labels.parquet"), "cleaned/labels.parquet", "not found"),
    F(
        "label-file-wrong-length",
        edit_table("cleaned/labels.parquet", lambda df: df.tail(df.height - 2)),
        "cleaned/labels.parquet",
        "does not cover",
    ),
    F(
        "unknown-action",
        edit_table("cleaned/labels.parquet", set_row("action", 0, "delete")),
        "cleaned/labels.parquet",
        "'action' not in",
    ),
    F(
        "cleaned-label-out-of-range",
        edit_table(
            "cleaned/labels.parquet",
            lambda df: set_row("cleaned_label", 0, 11)(set_row("action", 0, "relabel")(df)),
        ),
        "cleaned/labels.parquet",
        "'cleaned_label' above 9",
    ),
    F(
        "duplicate-id",
        edit_table("cleaned/labels.parquet", lambda df: pl.concat([df, df.head(1)])),
        "cleaned/labels.parquet",
        "more than once",
    ),
    F(
        "corrupt-parquet",
        replace_bytes("cleaned/labels.parquet", b"garbage"),
        "cleaned/labels.parquet",
        "not a readable Parquet",
    ),
    F(
        "every-row-dropped",
        edit_table("cleaned/labels.parquet", lambda df: keep_only(df, pl.lit(False))),
        "cleaned/labels.parquet",
        "dropped every training row",
    ),
    F(
        "kept-rows-one-class",
        edit_table("cleaned/labels.parquet", lambda df: keep_only(df, pl.col("given_label") == 3)),
        "cleaned/labels.parquet (the kept rows)",
        "one class",
    ),
    F("param-wrong-type", edit_params(train__batch_size=[64]), "train.batch_size"),
    F("param-unknown-key", edit_params(retrain=True), "retrain: unknown key"),
]

EVALUATE = [
    F("missing-log", delete("logs/ce.csv"), "logs/ce.csv", "not found"),
    F("corrupt-log", replace_bytes("logs/ce.csv", b"\x00\xff\xfe garbage\n\x01"), "logs/ce.csv"),
    F("log-without-columns", replace_bytes("logs/ce.csv", b"a,b\n1,2\n"), "logs/ce.csv", "lacks column"),
    F(
        "corrupt-json",
        replace_bytes("reports/retrain.json", b"\xff\xfe"),
        "reports/retrain.json",
        "not valid JSON",
    ),
    F("missing-noise-report", delete("data/noisy/noise_report.json"), "noise_report.json", "not found"),
    F(
        "nan-scores",
        edit_table("scores/ce.parquet", set_row("confidence", 2, float("nan"))),
        "scores/ce.parquet",
        "'confidence' is null or NaN",
    ),
    F(
        "relabel-without-change",
        edit_table(
            "cleaned/labels.parquet",
            lambda df: df.with_columns(
                pl.lit("relabel").alias("action"), pl.col("given_label").alias("cleaned_label")
            ),
        ),
        "cleaned/labels.parquet",
        "relabel implies",
    ),
    F("param-wrong-type", edit_params(evaluate__gallery_size="many"), "evaluate.gallery_size"),
    F("param-unknown-key", edit_params(evaluate__figures=True), "evaluate.figures: unknown key"),
]


# ------------------------------------------------------------------------------------------------ runner
def digest(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under the given files/folders (missing ones are simply absent)."""
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()) if p.exists() else []
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def run_fault(stage: str, fault: Fault, good: Path, tmp_path: Path, capsys, faults_seen: list) -> None:
    main, extra, outs = STAGES[stage]
    ws = tmp_path / "ws"
    shutil.copytree(good, ws, symlinks=True)
    fault.apply(ws)
    before = digest([ws / o for o in outs])
    assert before, f"{stage}: the good workspace has no outputs to protect"
    faults_seen.append((stage, fault.id, False))
    old = os.getcwd()
    os.chdir(ws)
    try:
        rc = main([*extra, "--params", "params.yaml"])
    finally:
        os.chdir(old)
    err = capsys.readouterr().err
    assert rc == 2, f"{stage}/{fault.id}: exit {rc}, stderr {err!r}"
    assert err.startswith("gradclean: error: "), err
    for needle in fault.needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert digest([ws / o for o in outs]) == before, f"{stage}/{fault.id}: an earlier output changed"
    assert not (ws / "pwned").exists()
    faults_seen[-1] = (stage, fault.id, True)


def cases(faults: list[Fault]):
    return pytest.mark.parametrize("fault", faults, ids=[f.id for f in faults])


@cases(INGEST)
def test_ingest(fault, good_workspace, tmp_path, capsys, faults_seen):
    run_fault("ingest", fault, good_workspace, tmp_path, capsys, faults_seen)


@cases(NOISE)
def test_noise(fault, good_workspace, tmp_path, capsys, faults_seen):
    run_fault("noise", fault, good_workspace, tmp_path, capsys, faults_seen)


@cases(TRAIN)
def test_train(fault, good_workspace, tmp_path, capsys, faults_seen):
    run_fault("train", fault, good_workspace, tmp_path, capsys, faults_seen)


@cases(GAL_FIGURE1)
def test_gal_figure1(fault, good_workspace, tmp_path, capsys, faults_seen):
    run_fault("gal_figure1", fault, good_workspace, tmp_path, capsys, faults_seen)


@cases(CLEAN)
def test_clean(fault, good_workspace, tmp_path, capsys, faults_seen):
    run_fault("clean", fault, good_workspace, tmp_path, capsys, faults_seen)


@cases(RETRAIN)
def test_retrain(fault, good_workspace, tmp_path, capsys, faults_seen):
    run_fault("retrain", fault, good_workspace, tmp_path, capsys, faults_seen)


@cases(EVALUATE)
def test_evaluate(fault, good_workspace, tmp_path, capsys, faults_seen):
    run_fault("evaluate", fault, good_workspace, tmp_path, capsys, faults_seen)


def test_good_workspace_is_complete(good_workspace):
    """Guard: the faults are planted over a workspace where every stage did write its outputs."""
    for stage, (_, _, outs) in STAGES.items():
        for o in outs:
            assert (good_workspace / o).exists(), f"{stage}: {o} missing"
    assert torch.load(good_workspace / "checkpoints" / "ce.pt", weights_only=True)
