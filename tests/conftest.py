"""Shared fixtures: tiny datasets written in the real on-disk formats under tmp_path.

Every fixture writes a few images only, so the whole unit-test set stays fast. The helpers are plain
functions too (`write_cifar10`, ...) so a test can write a variant (a bad batch, another size) itself.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_TRAIN_PER_BATCH = 4
CIFAR10_TEST = 6
CIFAR100_TRAIN = 12
CIFAR100_TEST = 5
FOLDER_CLASSES = ["cat", "dog", "fish"]


@dataclass
class Cifar:
    """What a CIFAR fixture wrote: the root to pass as data.root, and the arrays in sample_id order."""

    root: Path
    folder: Path
    train_x: np.ndarray  # (n, 32, 32, 3) uint8, HWC
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    names: list[str]


def cifar_rows(n: int, seed: int) -> np.ndarray:
    """n random CIFAR rows: uint8 (n, 3072), channel-major (R plane, G plane, B plane) as in the files."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def rows_to_hwc(rows: np.ndarray) -> np.ndarray:
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def dump_pickle(path: Path, obj: object, protocol: int = 2) -> None:
    """Pickle like the official files (protocol 2 by default; the batches were written by Python 2)."""
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar10(
    root: Path,
    per_batch: list[int] | int = CIFAR10_TRAIN_PER_BATCH,
    n_test: int = CIFAR10_TEST,
    protocol: int = 2,
) -> Cifar:
    """Write `root/cifar-10-batches-py/` with data_batch_1..5, test_batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [per_batch] * 5 if isinstance(per_batch, int) else list(per_batch)
    xs, ys, start = [], [], 0
    for b, n in enumerate(sizes, start=1):
        x = cifar_rows(n, seed=b)
        y = [(start + i) % 10 for i in range(n)]  # every class appears across the 5 batches
        start += n
        dump_pickle(
            folder / f"data_batch_{b}",
            {
                b"batch_label": f"training batch {b} of 5".encode(),
                b"labels": y,
                b"data": x,
                b"filenames": [f"img{b}_{i}.png".encode() for i in range(n)],
            },
            protocol,
        )
        xs.append(x)
        ys += y
    tx = cifar_rows(n_test, seed=99)
    ty = [(3 * i) % 10 for i in range(n_test)]
    dump_pickle(
        folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": ty, b"data": tx}, protocol
    )
    dump_pickle(
        folder / "batches.meta",
        {
            b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_cases_per_batch": sizes[0],
            b"num_vis": 3072,
        },
        protocol,
    )
    return Cifar(
        root,
        folder,
        rows_to_hwc(np.concatenate(xs)),
        np.asarray(ys),
        rows_to_hwc(tx),
        np.asarray(ty),
        list(CIFAR10_NAMES),
    )


def write_cifar100(root: Path, n_train: int = CIFAR100_TRAIN, n_test: int = CIFAR100_TEST) -> Cifar:
    """Write `root/cifar-100-python/` with train, test and meta (fine and coarse labels)."""
    from pipeline.noise.inject import CIFAR100_COARSE

    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"fine{i:02d}" for i in range(100)]
    x, tx = cifar_rows(n_train, 7), cifar_rows(n_test, 8)
    y = [(i * 9) % 100 for i in range(n_train)]
    ty = [(i * 13 + 1) % 100 for i in range(n_test)]
    for fname, rows, labels in (("train", x, y), ("test", tx, ty)):
        dump_pickle(
            folder / fname,
            {
                b"filenames": [b"f.png"] * len(labels),
                b"batch_label": fname.encode(),
                b"fine_labels": labels,
                b"coarse_labels": [int(CIFAR100_COARSE[v]) for v in labels],
                b"data": rows,
            },
        )
    dump_pickle(
        folder / "meta",
        {
            b"fine_label_names": [n.encode() for n in names],
            b"coarse_label_names": [f"coarse{i:02d}".encode() for i in range(20)],
        },
    )
    return Cifar(root, folder, rows_to_hwc(x), np.asarray(y), rows_to_hwc(tx), np.asarray(ty), names)


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def tiny_image(seed: int, size: int = 8, gray: bool = False) -> np.ndarray:
    shape = (size, size) if gray else (size, size, 3)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def cifar10(tmp_path: Path) -> Cifar:
    """CIFAR-10 python batches: 4 images per training batch (20 in all), 6 test images."""
    return write_cifar10(tmp_path / "cifar")


@pytest.fixture
def cifar100(tmp_path: Path) -> Cifar:
    """CIFAR-100 python files: 12 training and 5 test images."""
    return write_cifar100(tmp_path / "cifar100")


@dataclass
class CifarN:
    pt: Path
    npy: Path
    clean: np.ndarray
    worse: np.ndarray
    aggre: np.ndarray


@pytest.fixture
def cifar10n(tmp_path: Path, cifar10: Cifar) -> CifarN:
    """CIFAR-10N label files for the `cifar10` fixture: a torch.save-d dict (.pt) and a bare .npy."""
    clean = cifar10.train_y.astype(np.int64)
    worse = (clean + (np.arange(len(clean)) % 3 == 0)) % 10  # every third label wrong
    aggre = clean.copy()
    aggre[1] = (aggre[1] + 5) % 10
    pt = tmp_path / "CIFAR-10_human.pt"
    torch.save(
        {"clean_label": clean, "worse_label": worse, "aggre_label": aggre, "random_label1": worse.copy()}, pt
    )
    npy = tmp_path / "cifar10n_worse.npy"
    np.save(npy, worse)
    return CifarN(pt, npy, clean, worse, aggre)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """`root/<class>/*.png`: 3 classes x 4 RGB 8x8 images (split by data.test_fraction)."""
    root = tmp_path / "folder"
    for ci, c in enumerate(FOLDER_CLASSES):
        for j in range(4):
            save_png(root / c / f"{j:02d}.png", tiny_image(10 * ci + j))
    return root


@pytest.fixture
def image_folder_split(tmp_path: Path) -> Path:
    """`root/{train,test}/<class>/*.png`: 3 training and 1 test grayscale 8x8 image per class."""
    root = tmp_path / "folder_split"
    for ci, c in enumerate(FOLDER_CLASSES):
        for j in range(3):
            save_png(root / "train" / c / f"{j}.png", tiny_image(100 + 10 * ci + j, gray=True))
        save_png(root / "test" / c / "0.png", tiny_image(200 + ci, gray=True))
    return root


@dataclass
class Manifest:
    csv: Path
    root: Path
    rows: list[tuple[str, str, str]]  # (path, label, split) as written


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    """A CSV manifest `path,label,split` with class-name labels; 8 images, 6 train and 2 test."""
    root = tmp_path / "manifest"
    rows = []
    for i in range(8):
        cls = ["bird", "plane"][i % 2]
        rel = f"imgs/{cls}_{i}.png"
        save_png(root / rel, tiny_image(300 + i, size=10))
        rows.append((rel, cls, "test" if i >= 6 else "train"))
    csv = root / "manifest.csv"
    write_manifest(csv, rows)
    return Manifest(csv, root, rows)


def write_manifest(path: Path, rows: list[tuple], header: str = "path,label,split") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------ fault counts (issue 7)
FAULTS_SEEN = pytest.StashKey[list]()


def pytest_configure(config) -> None:
    config.stash[FAULTS_SEEN] = []
    worker = getattr(config, "workerinput", None)
    if worker is None and "GRADCLEAN_E2E_DIR" not in os.environ:  # the session's first process
        import tempfile

        os.environ["GRADCLEAN_E2E_DIR"] = tempfile.mkdtemp(prefix="gradclean-e2e-")
        config.stash[E2E_OWNER] = Path(os.environ["GRADCLEAN_E2E_DIR"])
    if worker is None:
        # One torch thread in every test process: the pytest-xdist workers (`-n auto` in pyproject.toml) and
        # the stage subprocesses tests start inherit this before they load torch. The suite's networks are
        # too small for a second intra-op thread to help (a behaviour test takes as long on one thread as
        # on two), so the cores go to parallel workers instead; and every machine computes with the same
        # thread count, whatever its core count (several tests compare numbers that move with it).
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)


E2E_OWNER = pytest.StashKey[Path]()


@pytest.fixture
def faults_seen(request) -> list:
    """The run's fault log: tests append (stage, fault, survived) and flip survived once every check held."""
    return request.config.stash[FAULTS_SEEN]


def pytest_sessionfinish(session) -> None:
    """pytest-xdist worker: hand this worker's fault log to the controller, which prints the totals."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["faults_seen"] = json.dumps(session.config.stash.get(FAULTS_SEEN, []))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist controller: collect a finished worker's fault log."""
    seen = getattr(node, "workeroutput", {}).get("faults_seen")
    if seen:
        node.config.stash[FAULTS_SEEN].extend(tuple(x) for x in json.loads(seen))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    seen = config.stash.get(FAULTS_SEEN, [])
    if not seen:
        return
    stages: dict[str, list[bool]] = {}
    for stage, _, ok in seen:
        stages.setdefault(stage, []).append(ok)
    per_stage = ", ".join(f"{s} {sum(v)}/{len(v)}" for s, v in stages.items())
    terminalreporter.write_line(
        f"fault injection: {len(seen)} bad inputs tried, {sum(ok for *_, ok in seen)} faults survived "
        f"(clear error, no output written, earlier outputs intact) -- {per_stage}"
    )


# ------------------------------------------------------------------------------------ the fast subset
# Modules whose tests train networks (or run stages that do): marked `train`, so `-m "not train"` is a quick
# subset (CONTRIBUTING.md). The full suite is the README's command.
TRAINING_MODULES = {
    "test_clean_policy",
    "test_distributed",
    "test_e2e",
    "test_embed_stages",
    "test_gal",
    "test_golden",
    "test_gradsim",
    "test_gss",
    "test_jocor_coteaching_cl",
    "test_pretrained",
    "test_reliability",
    "test_stream",
    "test_train",
    "test_weights",
}


def pytest_itemcollected(item) -> None:
    if item.path.stem in TRAINING_MODULES:
        item.add_marker(pytest.mark.train)
    if item.path.name == "test_e2e.py":  # here, not below: xdist reads the group before the hook below runs
        item.add_marker(pytest.mark.xdist_group("e2e"))


# ------------------------------------------------------------------- e2e run overlapping the other tests
@pytest.hookimpl(trylast=True)  # after `-m` / `-k` deselection: no background run for deselected e2e tests
def pytest_collection_modifyitems(session, config, items) -> None:
    """Start the e2e tests' `dvc repro` now, in the background (see `e2e_run.py`), and order the e2e tests
    (one xdist worker, `pytest_itemcollected`: they share one repo) so the run costs no idle core.

    The run has the lowest CPU priority, so it advances while a test process waits. Under xdist the e2e
    tests go first: their worker waits while the run uses its core, then runs them, and the other worker's
    tests fill the end of the session. Left last, they were alone at the end (~80 s on one core). In one
    process they go last: the run uses the second core while the other tests run.
    """
    e2e = [i for i in items if i.path.name == "test_e2e.py"]
    if not e2e:
        return
    rest = [i for i in items if i.path.name != "test_e2e.py"]
    items[:] = e2e + rest if hasattr(config, "workerinput") else rest + e2e
    if config.option.collectonly:  # lists the tests, runs none: no run to start
        return
    from e2e_run import claim_and_start

    claim_and_start()


def pytest_unconfigure(config) -> None:
    owned = config.stash.get(E2E_OWNER, None)
    if owned is not None:
        from e2e_run import stop_run

        stop_run(owned)
        os.environ.pop("GRADCLEAN_E2E_DIR", None)
