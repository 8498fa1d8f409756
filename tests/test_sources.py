"""Dataset sources through `pipeline.data.sources.ingest`: real on-disk formats, good and bad input."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import (
    CIFAR10_NAMES,
    FOLDER_CLASSES,
    Cifar,
    CifarN,
    Manifest,
    cifar_rows,
    dump_pickle,
    save_png,
    tiny_image,
    write_cifar10,
    write_manifest,
)
from PIL import Image

from pipeline.config import DataParams
from pipeline.data.images import decode_images
from pipeline.data.sources import ingest
from pipeline.errors import DataError
from pipeline.schemas import INGESTED


def _decode(frame: pl.DataFrame, size: int, channels: int | str = "auto") -> np.ndarray:
    names = [str(i) for i in frame["sample_id"].to_list()]
    return decode_images(frame["image"].to_list(), size, channels, names)


def _check_contract(out) -> None:
    """Both splits satisfy the INGESTED schema and sample ids are unique across splits."""
    for frame in (out.train, out.test):
        INGESTED.check(frame.to_arrow(), "test")
        assert frame["sample_id"].is_unique().all()
    ids = set(out.train["sample_id"].to_list())
    assert not ids & set(out.test["sample_id"].to_list())


# ---------------------------------------------------------------------------------------------- CIFAR
def test_cifar10_rows_labels_names_and_pixels(cifar10: Cifar) -> None:
    out = ingest(DataParams(source="cifar10", root=str(cifar10.root)))
    _check_contract(out)
    assert out.class_names == CIFAR10_NAMES
    assert out.train.height == 20 and out.test.height == 6
    assert out.train["sample_id"].to_list() == list(range(20))
    assert out.test["sample_id"].to_list() == list(range(20, 26))
    assert out.train["label"].to_list() == cifar10.train_y.tolist()
    assert sorted(set(out.train["label"].to_list())) == list(range(10))
    assert out.test["label"].to_list() == cifar10.test_y.tolist()
    assert out.train["noisy_label"].null_count() == 20
    x = _decode(out.train, 32, 3)
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, cifar10.train_x.transpose(0, 3, 1, 2))  # lossless, batch order kept
    np.testing.assert_array_equal(_decode(out.test, 32, 3), cifar10.test_x.transpose(0, 3, 1, 2))
    assert _decode(out.train, 16, "auto").shape == (20, 3, 16, 16)


def test_cifar10_ids_stable_across_runs(cifar10: Cifar) -> None:
    p = DataParams(source="cifar10", root=str(cifar10.root))
    a, b = ingest(p), ingest(p)
    assert a.train.equals(b.train) and a.test.equals(b.test)


def test_cifar10_root_may_be_the_batch_folder_itself(cifar10: Cifar) -> None:
    out = ingest(DataParams(source="cifar10", root=str(cifar10.folder)))
    assert out.train.height == 20


@pytest.mark.parametrize("sizes", [[1, 2, 3, 4, 5], [7, 1, 1, 1, 10], [3, 0, 2, 0, 1]])
def test_cifar10_any_number_of_images_per_batch(tmp_path: Path, sizes: list[int]) -> None:
    c = write_cifar10(tmp_path, per_batch=sizes, n_test=3)
    out = ingest(DataParams(source="cifar10", root=str(tmp_path)))
    assert out.train.height == sum(sizes) and out.test.height == 3
    assert out.train["label"].to_list() == c.train_y.tolist()
    np.testing.assert_array_equal(_decode(out.train, 32, 3), c.train_x.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar10_batches_written_with_any_pickle_protocol(tmp_path: Path, protocol: int) -> None:
    c = write_cifar10(tmp_path, per_batch=[2, 0, 1, 1, 2], n_test=2, protocol=protocol)
    out = ingest(DataParams(source="cifar10", root=str(tmp_path)))
    assert out.train["label"].to_list() == c.train_y.tolist()
    np.testing.assert_array_equal(_decode(out.train, 32, 3), c.train_x.transpose(0, 3, 1, 2))


def test_cifar10_numpy_label_arrays(cifar10: Cifar) -> None:
    d = {b"labels": np.array([9, 8, 7], dtype=np.int64), b"data": cifar_rows(3, 5)}
    dump_pickle(cifar10.folder / "data_batch_1", d, protocol=4)
    out = ingest(DataParams(source="cifar10", root=str(cifar10.root)))
    assert out.train.height == 19 and out.train["label"].to_list()[:3] == [9, 8, 7]


def test_cifar10_max_per_split_is_stratified_and_ordered(cifar10: Cifar) -> None:
    out = ingest(DataParams(source="cifar10", root=str(cifar10.root), max_per_split=10))
    assert out.train.height == 10 and out.test.height == 6
    assert sorted(out.train["label"].to_list()) == list(range(10))  # 2 per class -> 1 per class kept
    ids = out.train["sample_id"].to_list()
    assert ids == sorted(ids) and set(ids) <= set(range(20))
    for sid, label in zip(ids, out.train["label"].to_list(), strict=True):
        assert label == cifar10.train_y[sid]  # ids keep pointing at the same images
    again = ingest(DataParams(source="cifar10", root=str(cifar10.root), max_per_split=10))
    assert again.train["sample_id"].to_list() == ids


@pytest.mark.parametrize("n", [1, 5, 11, 15, 19, 20, 50])
def test_cifar10_max_per_split_any_size(cifar10: Cifar, n: int) -> None:
    out = ingest(DataParams(source="cifar10", root=str(cifar10.root), max_per_split=n))
    assert out.train.height == min(n, 20) and out.test.height == min(n, 6)
    assert out.train["sample_id"].is_unique().all()


def test_cifar100_fine_labels_and_names(cifar100: Cifar) -> None:
    out = ingest(DataParams(source="cifar100", root=str(cifar100.root)))
    _check_contract(out)
    assert len(out.class_names) == 100 and out.class_names[:2] == ["fine00", "fine01"]
    assert out.train.height == 12 and out.test.height == 5
    assert out.train["label"].to_list() == cifar100.train_y.tolist()
    assert out.test["label"].to_list() == cifar100.test_y.tolist()
    np.testing.assert_array_equal(_decode(out.test, 32, 3), cifar100.test_x.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("key", ["worse_label", "aggre_label"])
def test_cifar10n_pt_labels_land_in_noisy_label(cifar10: Cifar, cifar10n: CifarN, key: str) -> None:
    out = ingest(
        DataParams(
            source="cifar10", root=str(cifar10.root), noisy_labels=str(cifar10n.pt), noisy_label_key=key
        )
    )
    assert out.train["noisy_label"].to_list() == getattr(cifar10n, key.removesuffix("_label")).tolist()
    assert out.train["label"].to_list() == cifar10n.clean.tolist()
    assert out.test["noisy_label"].null_count() == out.test.height


def test_cifar10n_npy_labels(cifar10: Cifar, cifar10n: CifarN) -> None:
    out = ingest(DataParams(source="cifar10", root=str(cifar10.root), noisy_labels=str(cifar10n.npy)))
    assert out.train["noisy_label"].to_list() == cifar10n.worse.tolist()


# ------------------------------------------------------------------------------------ CIFAR bad input
def test_cifar_missing_root_names_expected_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="batches.meta"):
        ingest(DataParams(source="cifar10", root=str(tmp_path / "nowhere")))


def test_cifar_missing_batch_names_file(cifar10: Cifar) -> None:
    (cifar10.folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root)))


@pytest.mark.parametrize(
    "data",
    [
        cifar_rows(4, 0).astype(np.float32),  # wrong dtype
        cifar_rows(4, 0)[:, :1024],  # wrong width
        cifar_rows(4, 0).reshape(4, 3, 32, 32),  # wrong rank
    ],
    ids=["float32", "width1024", "4d"],
)
def test_cifar_wrong_data_shape_or_dtype(cifar10: Cifar, data: np.ndarray) -> None:
    dump_pickle(
        cifar10.folder / "data_batch_2", {b"batch_label": b"x", b"labels": [0, 1, 2, 3], b"data": data}
    )
    with pytest.raises(DataError, match=r"data_batch_2.*b'data'"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root)))


def test_cifar_label_count_mismatch(cifar10: Cifar) -> None:
    dump_pickle(cifar10.folder / "data_batch_4", {b"labels": [0, 1, 2], b"data": cifar_rows(4, 0)})
    with pytest.raises(DataError, match=r"data_batch_4.*3 labels for 4 images"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root)))


def test_cifar_missing_key(cifar10: Cifar) -> None:
    dump_pickle(cifar10.folder / "test_batch", {b"data": cifar_rows(2, 0), b"fine_labels": [0, 1]})
    with pytest.raises(DataError, match=r"test_batch.*b'labels'"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root)))


def test_cifar_label_out_of_range_names_row(cifar10: Cifar) -> None:
    dump_pickle(cifar10.folder / "data_batch_5", {b"labels": [0, 1, 10, 3], b"data": cifar_rows(4, 0)})
    with pytest.raises(DataError, match=r"data_batch_5: label 10 at row 2"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root)))


def test_cifar100_label_out_of_range(cifar100: Cifar) -> None:
    dump_pickle(cifar100.folder / "test", {b"fine_labels": [0, -1], b"data": cifar_rows(2, 0)})
    with pytest.raises(DataError, match=r"test: label -1 at row 1"):
        ingest(DataParams(source="cifar100", root=str(cifar100.root)))


def test_cifar_meta_with_wrong_number_of_names(cifar10: Cifar) -> None:
    dump_pickle(cifar10.folder / "batches.meta", {b"label_names": [b"a", b"b"]})
    with pytest.raises(DataError, match=r"batches.meta.*2 class names"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root)))


def test_cifar_pickles_with_python3_str_keys_read_like_the_official_ones(cifar10: Cifar) -> None:
    """A batches.meta / data batch re-pickled by Python 3 has str keys; it reads exactly like the original."""
    before = ingest(DataParams(source="cifar10", root=str(cifar10.root)))
    for name in ("batches.meta", "data_batch_2"):
        path = cifar10.folder / name
        d = pickle.loads(path.read_bytes(), encoding="bytes")
        dump_pickle(path, {k.decode(): v for k, v in d.items()}, protocol=4)
    after = ingest(DataParams(source="cifar10", root=str(cifar10.root)))
    assert after.class_names == before.class_names == cifar10.names
    assert after.train.equals(before.train) and after.test.equals(before.test)


def test_cifar_download_without_a_network_names_the_setting(tmp_path: Path, monkeypatch) -> None:
    import urllib.error

    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match=r"data.download: cannot fetch cifar10 .*no network\? Put the python"):
        ingest(DataParams(source="cifar10", root=str(tmp_path), download=True))


def test_cifar_truncated_pickle(cifar10: Cifar) -> None:
    path = cifar10.folder / "data_batch_1"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_1"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root)))


class _Evil:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.mark.parametrize("victim", ["data_batch_1", "test_batch", "batches.meta"])
def test_malicious_pickle_is_refused_and_not_run(cifar10: Cifar, tmp_path: Path, victim: str) -> None:
    marker = tmp_path / "PWNED"
    payload = {b"labels": [0], b"data": _Evil(f"touch {marker}")}
    (cifar10.folder / victim).write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match=rf"{victim}.*(refused|not allowed)"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root)))
    assert not marker.exists()


def test_malicious_cifar100_pickle_is_refused(cifar100: Cifar, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED100"
    (cifar100.folder / "train").write_bytes(pickle.dumps(_Evil(f"touch {marker}")))
    with pytest.raises(DataError, match="refused"):
        ingest(DataParams(source="cifar100", root=str(cifar100.root)))
    assert not marker.exists()


# -------------------------------------------------------------------------------- CIFAR-N bad input
def test_cifar_n_missing_label_file(cifar10: Cifar, tmp_path: Path) -> None:
    missing = tmp_path / "no_such.pt"
    with pytest.raises(DataError, match="no_such.pt"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root), noisy_labels=str(missing)))


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_cifar_n_wrong_length(cifar10: Cifar, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"short{suffix}"
    labels = np.arange(19) % 10
    if suffix == ".npy":
        np.save(path, labels)
    else:
        torch.save({"worse_label": labels}, path)
    with pytest.raises(DataError, match=rf"short\{suffix}.*19 labels.*20 images"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root), noisy_labels=str(path)))


def test_cifar_n_clean_label_disagrees(cifar10: Cifar, cifar10n: CifarN, tmp_path: Path) -> None:
    clean = cifar10n.clean.copy()
    clean[7] = (clean[7] + 1) % 10
    path = tmp_path / "other.pt"
    torch.save({"clean_label": clean, "worse_label": cifar10n.worse}, path)
    with pytest.raises(DataError, match=r"other.pt: clean_label disagrees .* row 7"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root), noisy_labels=str(path)))


def test_cifar_n_label_out_of_range(cifar10: Cifar, tmp_path: Path) -> None:
    labels = np.zeros(20, dtype=np.int64)
    labels[4] = 10
    path = tmp_path / "bad.npy"
    np.save(path, labels)
    with pytest.raises(DataError, match=r"bad.npy: label 10 at row 4"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root), noisy_labels=str(path)))


def test_cifar_n_unknown_key_lists_keys(cifar10: Cifar, cifar10n: CifarN) -> None:
    with pytest.raises(DataError, match=r"no key 'random_label9'.*aggre_label"):
        ingest(
            DataParams(
                source="cifar10",
                root=str(cifar10.root),
                noisy_labels=str(cifar10n.pt),
                noisy_label_key="random_label9",
            )
        )


def test_cifar_n_float_labels_rejected(cifar10: Cifar, tmp_path: Path) -> None:
    path = tmp_path / "float.npy"
    np.save(path, np.zeros(20, dtype=np.float32))
    with pytest.raises(DataError, match=r"float.npy.*1-D integer"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root), noisy_labels=str(path)))


def test_cifar_n_pt_with_code_is_refused(cifar10: Cifar, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED_PT"
    path = tmp_path / "evil.pt"
    torch.save({"worse_label": _Evil(f"touch {marker}")}, path)
    with pytest.raises(DataError, match="evil.pt"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root), noisy_labels=str(path)))
    assert not marker.exists()


def test_cifar_n_pickled_npy_is_refused(cifar10: Cifar, tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="objects.npy"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root), noisy_labels=str(path)))


def test_cifar_n_wrong_suffix(cifar10: Cifar, tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(DataError, match=r"labels.csv.*\.pt or \.npy"):
        ingest(DataParams(source="cifar10", root=str(cifar10.root), noisy_labels=str(path)))


# --------------------------------------------------------------------------------------- image folder
def test_image_folder_split_by_fraction(image_folder: Path) -> None:
    p = DataParams(source="imagefolder", root=str(image_folder), test_fraction=0.25)
    out = ingest(p)
    _check_contract(out)
    assert out.class_names == FOLDER_CLASSES
    assert out.train.height == 9 and out.test.height == 3
    assert sorted(out.test["label"].to_list()) == [0, 1, 2]  # stratified
    all_ids = sorted(out.train["sample_id"].to_list() + out.test["sample_id"].to_list())
    assert all_ids == list(range(12))
    for frame in (out.train, out.test):
        for path, label in zip(frame["source_path"].to_list(), frame["label"].to_list(), strict=True):
            assert path.split(os.sep)[0] == FOLDER_CLASSES[label]
            assert (image_folder / path).is_file()
    x = _decode(out.train, 8)
    assert x.shape == (9, 3, 8, 8)
    first = out.train.row(0, named=True)
    expected = np.asarray(__import__("PIL.Image").Image.open(image_folder / first["source_path"]))
    np.testing.assert_array_equal(x[0], expected.transpose(2, 0, 1))
    again = ingest(p)
    assert again.train.equals(out.train) and again.test.equals(out.test)


def test_image_folder_presplit_grayscale(image_folder_split: Path) -> None:
    out = ingest(DataParams(source="imagefolder", root=str(image_folder_split)))
    _check_contract(out)
    assert out.class_names == FOLDER_CLASSES
    assert out.train["sample_id"].to_list() == list(range(9))
    assert out.test["sample_id"].to_list() == [9, 10, 11]
    assert out.train["label"].to_list() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert out.test["label"].to_list() == [0, 1, 2]
    assert all(p.startswith("train") for p in out.train["source_path"].to_list())
    assert _decode(out.train, 8).shape == (9, 1, 8, 8)  # auto channels: all grayscale
    assert _decode(out.test, 12, 3).shape == (3, 3, 12, 12)


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5, 0.8, 0.9])
def test_image_folder_any_test_fraction(image_folder: Path, fraction: float) -> None:
    out = ingest(DataParams(source="imagefolder", root=str(image_folder), test_fraction=fraction))
    assert out.train.height + out.test.height == 12 and out.train.height > 0 and out.test.height > 0


def test_image_folder_test_fraction_leaving_no_train_split(image_folder: Path) -> None:
    with pytest.raises(DataError, match=r"data.test_fraction 0.95 leaves no train split"):
        ingest(DataParams(source="imagefolder", root=str(image_folder), test_fraction=0.95))


def test_image_folder_max_per_split(image_folder: Path) -> None:
    out = ingest(DataParams(source="imagefolder", root=str(image_folder), test_fraction=0.5, max_per_split=3))
    assert out.train.height == 3 and out.test.height == 3
    assert sorted(out.train["label"].to_list()) == [0, 1, 2]


def test_image_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope"):
        ingest(DataParams(source="imagefolder", root=str(tmp_path / "nope")))


def test_image_folder_without_classes(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    save_png(tmp_path / "flat" / "a.png", tiny_image(0))
    with pytest.raises(DataError, match="no class sub-folders"):
        ingest(DataParams(source="imagefolder", root=str(tmp_path / "flat")))


def test_image_folder_empty_test_split(image_folder_split: Path) -> None:
    for f in (image_folder_split / "test").rglob("*.png"):
        f.unlink()
    with pytest.raises(DataError, match="test split is empty"):
        ingest(DataParams(source="imagefolder", root=str(image_folder_split)))


def test_image_folder_unknown_test_class(image_folder_split: Path) -> None:
    save_png(image_folder_split / "test" / "zebra" / "0.png", tiny_image(1, gray=True))
    with pytest.raises(DataError, match="zebra"):
        ingest(DataParams(source="imagefolder", root=str(image_folder_split)))


def test_image_folder_corrupt_png_named_on_decode(image_folder: Path) -> None:
    bad = image_folder / "dog" / "00.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    out = ingest(DataParams(source="imagefolder", root=str(image_folder), test_fraction=0.25))
    frame = pl.concat([out.train, out.test])
    with pytest.raises(DataError, match=r"dog.00\.png: cannot decode image"):
        decode_images(frame["image"].to_list(), 8, "auto", frame["source_path"].to_list())


def test_image_folder_truncated_png_named_on_decode(image_folder: Path) -> None:
    f = image_folder / "cat" / "01.png"
    f.write_bytes(f.read_bytes()[:-30])
    with pytest.raises(DataError, match=r"cat.01\.png"):
        decode_images([f.read_bytes()], 8, 3, [str(f)])


def test_image_folder_symlink_escaping_root(image_folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    save_png(outside, tiny_image(5))
    (image_folder / "cat" / "zz_link.png").symlink_to(outside)
    with pytest.raises(DataError, match=r"zz_link.png.*escapes the root"):
        ingest(DataParams(source="imagefolder", root=str(image_folder)))


# ------------------------------------------------------------------------------------------- manifest
def test_manifest_with_split_column(manifest: Manifest) -> None:
    out = ingest(DataParams(source="manifest", root=str(manifest.csv)))
    _check_contract(out)
    assert out.class_names == ["bird", "plane"]
    assert out.train["sample_id"].to_list() == [0, 1, 2, 3, 4, 5]  # manifest row order
    assert out.test["sample_id"].to_list() == [6, 7]
    assert out.train["label"].to_list() == [0, 1, 0, 1, 0, 1]
    assert out.train["source_path"].to_list() == [r[0] for r in manifest.rows[:6]]
    x = _decode(out.train, 10)
    assert x.shape == (6, 3, 10, 10)
    np.testing.assert_array_equal(x[3], tiny_image(303, size=10).transpose(2, 0, 1))


def test_manifest_images_beside_it_under_another_root_name_the_key_to_set(
    manifest: Manifest, tmp_path: Path
) -> None:
    (tmp_path / "inputs").mkdir()  # the shipped data.manifest_root, which holds no images
    with pytest.raises(DataError, match=r"row 2: image file .* not found; .*set data.manifest_root: "):
        ingest(DataParams(source="manifest", root=str(manifest.csv), manifest_root=str(tmp_path / "inputs")))


def test_manifest_given_class_order(manifest: Manifest) -> None:
    out = ingest(DataParams(source="manifest", root=str(manifest.csv), classes=["plane", "bird", "car"]))
    assert out.class_names == ["plane", "bird", "car"]
    assert out.train["label"].to_list() == [1, 0, 1, 0, 1, 0]


def test_manifest_without_split_and_with_manifest_root(manifest: Manifest, tmp_path: Path) -> None:
    csv = write_manifest(
        tmp_path / "elsewhere" / "m.csv", [r[:2] for r in manifest.rows], header="path,label"
    )
    p = DataParams(source="manifest", root=str(csv), manifest_root=str(manifest.root), test_fraction=0.25)
    out = ingest(p)
    assert out.train.height == 6 and out.test.height == 2
    assert sorted(out.test["label"].to_list()) == [0, 1]
    assert sorted(out.train["sample_id"].to_list() + out.test["sample_id"].to_list()) == list(range(8))
    assert ingest(p).test.equals(out.test)


def test_manifest_integer_labels(manifest: Manifest, tmp_path: Path) -> None:
    rows = [(r[0], i % 3, r[2]) for i, r in enumerate(manifest.rows)]
    out = ingest(DataParams(source="manifest", root=str(write_manifest(manifest.root / "int.csv", rows))))
    assert out.class_names == ["0", "1", "2"]
    assert out.train["label"].to_list() == [0, 1, 2, 0, 1, 2]


def test_manifest_parquet(manifest: Manifest) -> None:
    pq = manifest.root / "m.parquet"
    pl.DataFrame(
        {
            "path": [r[0] for r in manifest.rows],
            "label": [r[1] for r in manifest.rows],
            "split": [r[2] for r in manifest.rows],
        }
    ).write_parquet(pq)
    out = ingest(DataParams(source="manifest", root=str(pq)))
    assert out.train.height == 6 and out.test.height == 2


def test_manifest_unknown_class_names_row(manifest: Manifest) -> None:
    rows = list(manifest.rows)
    rows[4] = (rows[4][0], "zebra", "train")
    csv = write_manifest(manifest.root / "bad.csv", rows)
    with pytest.raises(DataError, match=r"bad.csv: row 6: label 'zebra' is not a known class"):
        ingest(DataParams(source="manifest", root=str(csv), classes=["bird", "plane"]))


def test_manifest_empty_label(manifest: Manifest) -> None:
    rows = list(manifest.rows)
    rows[1] = (rows[1][0], "", "train")
    with pytest.raises(DataError, match=r"row 3: empty label"):
        ingest(DataParams(source="manifest", root=str(write_manifest(manifest.root / "e.csv", rows))))


def test_manifest_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent.csv: manifest file not found"):
        ingest(DataParams(source="manifest", root=str(tmp_path / "absent.csv")))


def test_manifest_missing_columns(tmp_path: Path) -> None:
    csv = write_manifest(tmp_path / "cols.csv", [("a.png", "x")], header="file,label")
    with pytest.raises(DataError, match=r"cols.csv: manifest needs columns 'path' and 'label'"):
        ingest(DataParams(source="manifest", root=str(csv)))


def test_manifest_missing_image_names_row(manifest: Manifest) -> None:
    rows = list(manifest.rows)
    rows[2] = ("imgs/missing.png", "bird", "train")
    with pytest.raises(DataError, match=r"row 4: image file .*missing.png not found"):
        ingest(DataParams(source="manifest", root=str(write_manifest(manifest.root / "m2.csv", rows))))


def test_manifest_dotdot_path_refused(manifest: Manifest, tmp_path: Path) -> None:
    save_png(tmp_path / "outside.png", tiny_image(1))  # exists, so only the escape can fail it
    rows = list(manifest.rows)
    rows[0] = ("../outside.png", "bird", "train")
    with pytest.raises(DataError, match=r"row 2: path '\.\./outside.png' escapes the root"):
        ingest(DataParams(source="manifest", root=str(write_manifest(manifest.root / "dd.csv", rows))))


def test_manifest_inner_dotdot_escape_refused(manifest: Manifest, tmp_path: Path) -> None:
    save_png(tmp_path / "outside.png", tiny_image(1))
    rows = list(manifest.rows)
    rows[7] = ("imgs/../../outside.png", "plane", "test")
    with pytest.raises(DataError, match=r"row 9: .*escapes the root"):
        ingest(DataParams(source="manifest", root=str(write_manifest(manifest.root / "dd2.csv", rows))))


def test_manifest_absolute_path_refused(manifest: Manifest, tmp_path: Path) -> None:
    outside = tmp_path / "abs.png"
    save_png(outside, tiny_image(2))
    rows = list(manifest.rows)
    rows[1] = (str(outside), "plane", "train")
    with pytest.raises(DataError, match=r"row 3: path .*abs.png' must be relative"):
        ingest(DataParams(source="manifest", root=str(write_manifest(manifest.root / "abs.csv", rows))))


def test_manifest_symlink_escaping_root_refused(manifest: Manifest, tmp_path: Path) -> None:
    outside = tmp_path / "target.png"
    save_png(outside, tiny_image(3))
    (manifest.root / "imgs" / "link.png").symlink_to(outside)
    rows = list(manifest.rows)
    rows[0] = ("imgs/link.png", "bird", "train")
    with pytest.raises(DataError, match=r"row 2: path 'imgs/link.png' escapes the root"):
        ingest(DataParams(source="manifest", root=str(write_manifest(manifest.root / "ln.csv", rows))))


def test_manifest_symlink_inside_root_allowed(manifest: Manifest) -> None:
    (manifest.root / "imgs" / "alias.png").symlink_to(manifest.root / "imgs" / "bird_0.png")
    rows = list(manifest.rows)
    rows[0] = ("imgs/alias.png", "bird", "train")
    out = ingest(DataParams(source="manifest", root=str(write_manifest(manifest.root / "ok.csv", rows))))
    assert out.train["source_path"][0] == "imgs/alias.png"


def test_manifest_empty_split(manifest: Manifest) -> None:
    rows = [(r[0], r[1], "train") for r in manifest.rows]
    with pytest.raises(DataError, match=r"all_train.csv: the test split is empty"):
        ingest(DataParams(source="manifest", root=str(write_manifest(manifest.root / "all_train.csv", rows))))


def test_manifest_bad_split_value(manifest: Manifest) -> None:
    rows = list(manifest.rows)
    rows[5] = (rows[5][0], rows[5][1], "val")
    with pytest.raises(DataError, match=r"row 7: split 'val'"):
        ingest(DataParams(source="manifest", root=str(write_manifest(manifest.root / "sp.csv", rows))))


def test_manifest_no_rows(tmp_path: Path) -> None:
    csv = write_manifest(tmp_path / "empty.csv", [])
    with pytest.raises(DataError, match=r"empty.csv: manifest has no rows"):
        ingest(DataParams(source="manifest", root=str(csv)))


def test_manifest_corrupt_png_named_on_decode(manifest: Manifest) -> None:
    (manifest.root / "imgs" / "plane_3.png").write_bytes(b"not a png at all")
    out = ingest(DataParams(source="manifest", root=str(manifest.csv)))
    with pytest.raises(DataError, match=r"imgs/plane_3.png: cannot decode image"):
        decode_images(out.train["image"].to_list(), 10, "auto", out.train["source_path"].to_list())


# ------------------------------------------------------------------ inputs a user really has (issue 17)
def _png16(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 60000, dtype=np.uint16)).save(path)  # Pillow writes mode I;16


def test_sixteen_bit_png_and_float_tiff_are_refused_by_path(image_folder: Path) -> None:
    _png16(image_folder / "cat" / "deep.png")
    assert Image.open(image_folder / "cat" / "deep.png").mode.startswith("I")
    out = ingest(DataParams(source="imagefolder", root=str(image_folder), test_fraction=0.25))
    frame = pl.concat([out.train, out.test])
    with pytest.raises(DataError, match=r"deep\.png: I(;16)? pixels \(16-bit or float\)"):
        decode_images(frame["image"].to_list(), 8, "auto", frame["source_path"].to_list())
    tif = image_folder / "dog" / "float.tif"
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(tif)
    with pytest.raises(DataError, match=r"float\.tif: F pixels"):
        decode_images([tif.read_bytes()], 8, 3, [str(tif)])


def test_decompression_bomb_is_refused_by_name(tmp_path: Path) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)  # 20 000 x 20 000 grey, claims 400 MP
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(DataError, match=r"bomb\.png: refused, too many pixels"):
        decode_images([bomb], 8, 1, ["bomb.png"])
    (tmp_path / "bomb.png").write_bytes(bomb)
    from pipeline.data.images import opens_as_image

    assert not opens_as_image(str(tmp_path / "bomb.png"))  # the streamed check: refused, not raised


def test_hidden_folders_are_skipped_and_empty_classes_refused(image_folder: Path) -> None:
    before = ingest(DataParams(source="imagefolder", root=str(image_folder), test_fraction=0.25))
    save_png(image_folder / ".git" / "x.png", tiny_image(1))
    save_png(image_folder / "cat" / ".ipynb_checkpoints" / "00-checkpoint.png", tiny_image(2))
    after = ingest(DataParams(source="imagefolder", root=str(image_folder), test_fraction=0.25))
    assert after.class_names == before.class_names == FOLDER_CLASSES
    assert after.train.equals(before.train) and after.test.equals(before.test)
    (image_folder / "emu").mkdir()
    with pytest.raises(DataError, match=r"emu: class folder 'emu' holds no image files"):
        ingest(DataParams(source="imagefolder", root=str(image_folder), test_fraction=0.25))


def test_a_val_folder_beside_train_and_test_is_refused(image_folder_split: Path) -> None:
    save_png(image_folder_split / "val" / "cat" / "0.png", tiny_image(3, gray=True))
    with pytest.raises(DataError, match=r"val: only train/ and test/ are read"):
        ingest(DataParams(source="imagefolder", root=str(image_folder_split)))


def test_a_class_folder_linking_back_up_the_tree_is_refused(image_folder: Path) -> None:
    (image_folder / "loop").symlink_to("..", target_is_directory=True)
    (image_folder / "loop2").symlink_to(".", target_is_directory=True)
    with pytest.raises(DataError, match=r"the same file as"):
        ingest(DataParams(source="imagefolder", root=str(image_folder), test_fraction=0.25))


def test_a_file_linked_to_itself_is_refused_by_name(image_folder: Path) -> None:
    (image_folder / "cat" / "self.png").symlink_to("self.png")
    with pytest.raises(DataError, match=r"self\.png.*cannot be resolved|self\.png.*not found"):
        ingest(DataParams(source="imagefolder", root=str(image_folder), test_fraction=0.25))


@pytest.mark.parametrize("spelling", ["./imgs/{f}", "imgs//{f}", "imgs/../imgs/{f}"])
def test_one_file_spelled_two_ways_in_a_manifest_is_refused(manifest: Manifest, spelling: str) -> None:
    first = manifest.rows[0][0]
    again = spelling.format(f=Path(first).name)
    rows = [*manifest.rows, (again, manifest.rows[1][1], "test")]
    write_manifest(manifest.csv, rows)
    with pytest.raises(DataError, match=rf"row {len(rows) + 1}: the same file as .*row 2"):
        ingest(DataParams(source="manifest", root=str(manifest.csv)))


def test_manifest_numbers_spelled_two_ways_and_index_gaps_are_refused(manifest: Manifest) -> None:
    spelled = [(p, ["0", "1", "0.0", "1.0"][i % 4], s) for i, (p, _, s) in enumerate(manifest.rows)]
    write_manifest(manifest.csv, spelled)
    with pytest.raises(DataError, match=r"row 4: label '0.0' is the number '0' of row 2 spelled another way"):
        ingest(DataParams(source="manifest", root=str(manifest.csv)))
    gaps = [(p, ["0", "7"][i % 2], s) for i, (p, _, s) in enumerate(manifest.rows)]
    write_manifest(manifest.csv, gaps)
    with pytest.raises(DataError, match=r"indices 0..7, but 6 of them have no rows \(1, 2, 3, 4, 5, 6\)"):
        ingest(DataParams(source="manifest", root=str(manifest.csv)))


def test_repeated_class_names_are_refused() -> None:
    from pipeline.errors import ConfigError
    from pipeline.params import parse_params

    with pytest.raises(ConfigError, match=r"data.classes: \['cat'\] listed more than once"):
        parse_params({"data": {"source": "manifest", "root": "m.csv", "classes": ["cat", "dog", "cat"]}})


def test_upper_case_parquet_suffix_is_read_as_parquet(manifest: Manifest) -> None:
    frame = pl.DataFrame(
        {"path": [r[0] for r in manifest.rows], "label": [r[1] for r in manifest.rows],
         "split": [r[2] for r in manifest.rows]}
    )  # fmt: skip
    upper = manifest.csv.with_name("manifest.PARQUET")
    frame.write_parquet(upper)
    out = ingest(DataParams(source="manifest", root=str(upper)))
    ref = ingest(DataParams(source="manifest", root=str(manifest.csv)))
    assert out.train["image"].equals(ref.train["image"]) and out.class_names == ref.class_names
