"""Dataset sources: each returns train and test tables in the `INGESTED` contract plus class names.

Sample ids are stable: they come from the source's own order (sklearn's index, CIFAR batch order, sorted
file paths, manifest row), so re-running ingest never renumbers samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.config import DataParams
from pipeline.data.images import encode_png
from pipeline.data.unpickle import load_pickle
from pipeline.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Ingested:
    """The result of a source: two INGESTED frames and the class names (index = label)."""

    train: pl.DataFrame
    test: pl.DataFrame
    class_names: list[str]
    source: str


def _frame(ids, labels, images, paths=None, noisy=None, files=None) -> pl.DataFrame:
    """An INGESTED frame; `files` (absolute paths, with `images` all None) makes it a streamed one."""
    n = len(ids)
    frame = pl.DataFrame(
        {
            "sample_id": pl.Series(np.asarray(ids, dtype=np.int64)),
            "label": pl.Series(np.asarray(labels, dtype=np.int32)),
            "image": pl.Series(list(images), dtype=pl.Binary),
            "source_path": pl.Series(paths if paths is not None else [None] * n, dtype=pl.String),
            "noisy_label": pl.Series(
                np.asarray(noisy, dtype=np.int32) if noisy is not None else [None] * n, dtype=pl.Int32
            ),
        }
    )
    return frame if files is None else frame.with_columns(pl.Series("file", files, dtype=pl.String))


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.bincount(labels)
    n_test = int(np.ceil(test_fraction * len(labels)))  # as sklearn rounds it
    if n_test >= len(labels):
        raise DataError(f"data.test_fraction {test_fraction} leaves no train split of {len(labels)} samples")
    # sklearn refuses to stratify when either side is smaller than the number of classes
    ok = min(n_test, len(labels) - n_test) >= int((counts > 0).sum())
    strat = labels if counts[counts > 0].min() >= 2 and ok else None
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=strat)
    return np.sort(tr), np.sort(te)


def subsample(df: pl.DataFrame, n: int | None, seed: int) -> pl.DataFrame:
    """Keep at most n rows, stratified by label, in sample_id order."""
    if n is None or df.height <= n:
        return df
    from sklearn.model_selection import train_test_split

    labels = df["label"].to_numpy()
    counts = np.bincount(labels)
    ok = min(n, df.height - n) >= len(counts[counts > 0])  # both sides need every class for sklearn
    strat = labels if counts[counts > 0].min() >= 2 and ok else None
    keep, _ = train_test_split(np.arange(df.height), train_size=n, random_state=seed, stratify=strat)
    return df[np.sort(keep)]


# --------------------------------------------------------------------------------------------- digits
def load_digits_source(p: DataParams) -> Ingested:
    """scikit-learn's 1797 8×8 handwritten digits (real scans, shipped with the package)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    labels = d.target.astype(np.int64)
    tr, te = _stratified_split(labels, p.test_fraction, p.split_seed)
    blobs = [encode_png(im) for im in images]
    make = lambda idx: _frame(idx, labels[idx], [blobs[i] for i in idx])  # noqa: E731
    return Ingested(make(tr), make(te), [str(i) for i in range(10)], "digits")


# ---------------------------------------------------------------------------------------------- CIFAR
_CIFAR = {
    "cifar10": dict(
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        meta="batches.meta",
        names=b"label_names",
        labels=b"labels",
        k=10,
    ),
    "cifar100": dict(
        folder="cifar-100-python",
        train=["train"],
        test=["test"],
        meta="meta",
        names=b"fine_label_names",
        labels=b"fine_labels",
        k=100,
    ),
}


def _cifar_dir(p: DataParams) -> Path:
    spec = _CIFAR[p.source]
    root = Path(p.root)
    for cand in (root / spec["folder"], root):
        if (cand / spec["meta"]).is_file():
            return cand
    if p.download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if p.source == "cifar10" else torchvision.datasets.CIFAR100
        try:
            cls(str(root), train=True, download=True)
        except OSError as e:  # URLError, socket errors, a refused connection: no network
            raise DataError(
                f"data.download: cannot fetch {p.source} ({e}); no network? Put the python batches in "
                f"{root / spec['folder']} and set data.download: false"
            ) from None
        return root / spec["folder"]
    raise DataError(
        f"{root}: no {p.source} python batches found (expected {root / spec['folder'] / spec['meta']}); "
        "set data.download: true to fetch them"
    )


def _bytes_keys(d: object) -> object:
    """A CIFAR pickle's dict with every key as bytes: the official files (pickled by Python 2) have bytes
    keys, the same dicts re-pickled by Python 3 have str keys; both are read alike (as torchvision's
    `encoding="latin1"` does)."""
    if not isinstance(d, dict):
        return d
    return {k.encode("latin1") if isinstance(k, str) else k: v for k, v in d.items()}


def _read_cifar_batches(folder: Path, files: list[str], spec: dict) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        path = folder / name
        d = _bytes_keys(load_pickle(path))
        if not isinstance(d, dict) or b"data" not in d or spec["labels"] not in d:
            raise DataError(f"{path}: not a CIFAR batch (needs keys b'data' and {spec['labels']!r})")
        x = np.asarray(d[b"data"])
        y = np.asarray(d[spec["labels"]])
        if y.size == 0:  # an empty list comes back as float64: a batch may hold no images
            y = y.astype(np.int64)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
            raise DataError(f"{path}: b'data' must be uint8 of shape (n, 3072), got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: {len(y)} labels for {len(x)} images")
        bad = np.flatnonzero((y < 0) | (y >= spec["k"]))
        if len(bad):
            raise DataError(
                f"{path}: label {int(y[bad[0]])} at row {int(bad[0])} is outside [0, {spec['k'] - 1}]"
            )
        xs.append(x)
        ys.append(y.astype(np.int64))
    return np.concatenate(xs).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.concatenate(ys)


def load_noisy_label_file(path: str | Path, key: str, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a CIFAR-N label file: (noisy labels, clean labels or None).

    `.pt` files are torch.load-ed with weights_only=True (a dict of arrays: `clean_label`, `worse_label`,
    `aggre_label`, `random_label1..3`, `noisy_label`, ...); `.npy` files hold the noisy labels alone.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    clean = None
    if path.suffix == ".npy":
        try:
            noisy = np.load(path, allow_pickle=False)
        except Exception as e:
            raise DataError(f"{path}: not a readable .npy array ({e})") from None
    elif path.suffix == ".pt":
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                obj = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as e:
            raise DataError(f"{path}: refused or unreadable label file ({type(e).__name__}: {e})") from None
        if not isinstance(obj, dict) or key not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise DataError(f"{path}: no key '{key}' (data.noisy_label_key); found {keys}")
        noisy = np.asarray(obj[key])
        clean = np.asarray(obj["clean_label"]) if "clean_label" in obj else None
    else:
        raise DataError(f"{path}: label file must be .pt or .npy")
    for arr, what in ((noisy, key), (clean, "clean_label")):
        if arr is None:
            continue
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"{path}: '{what}' must be a 1-D integer array, got {arr.dtype} {arr.shape}")
        if len(arr) != n:
            raise DataError(f"{path}: '{what}' has {len(arr)} labels but the training set has {n} images")
    return noisy.astype(np.int64), None if clean is None else clean.astype(np.int64)


def _numpy_safe_globals() -> list:
    out = [np.ndarray, np.dtype]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            m = __import__(mod, fromlist=["_reconstruct"])
            out.append(m._reconstruct)
        except (ImportError, AttributeError):
            pass
    out += [type(np.dtype(t)) for t in ("int64", "int32", "int16", "uint8", "float32", "float64")]
    return out


def load_cifar_source(p: DataParams) -> Ingested:
    """CIFAR-10/100 python batches (any number of images per file), optional CIFAR-N labels."""
    spec = _CIFAR[p.source]
    folder = _cifar_dir(p)
    meta = _bytes_keys(load_pickle(folder / spec["meta"]))
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[spec["names"]]]
    except (KeyError, TypeError):
        raise DataError(f"{folder / spec['meta']}: no {spec['names']!r} list of class names") from None
    if len(names) != spec["k"]:
        raise DataError(f"{folder / spec['meta']}: {len(names)} class names, expected {spec['k']}")
    xtr, ytr = _read_cifar_batches(folder, spec["train"], spec)
    xte, yte = _read_cifar_batches(folder, spec["test"], spec)
    noisy = None
    if p.noisy_labels:
        noisy, clean = load_noisy_label_file(p.noisy_labels, p.noisy_label_key, len(ytr))
        bad = np.flatnonzero((noisy < 0) | (noisy >= spec["k"]))
        if len(bad):
            raise DataError(
                f"{p.noisy_labels}: label {noisy[bad[0]]} at row {bad[0]} outside [0, {spec['k'] - 1}]"
            )
        if clean is not None and not np.array_equal(clean, ytr):
            row = int(np.flatnonzero(clean != ytr)[0])
            raise DataError(
                f"{p.noisy_labels}: clean_label disagrees with the CIFAR batches at row {row} "
                "(the label file does not belong to these images or their order)"
            )
    ntr = len(ytr)
    train = _frame(np.arange(ntr), ytr, [encode_png(x) for x in xtr], noisy=noisy)
    test = _frame(ntr + np.arange(len(yte)), yte, [encode_png(x) for x in xte])
    return Ingested(train, test, names, p.source)


# ------------------------------------------------------------------------------- folder and manifest
def resolve_under(root: Path, rel: str, where: str) -> Path:
    """Resolve `rel` under `root`; refuse absolute paths, `..` escapes and symlinks leading outside."""
    if not rel or Path(rel).is_absolute():
        raise DataError(f"{where}: path {rel!r} must be relative to {root}")
    try:
        full = (root / rel).resolve(strict=False)
    except (RuntimeError, OSError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise DataError(f"{where}: path {rel!r} cannot be resolved ({e})") from None
    if not full.is_relative_to(root.resolve()):
        raise DataError(f"{where}: path {rel!r} escapes the root {root}")
    if not full.is_file():
        raise DataError(f"{where}: image file {root / rel} not found")
    return full


def refuse_repeated_files(full: list[Path], wheres: list[str]) -> None:
    """One file listed twice (spelled differently, or reached again through a symlink) would put the same
    image in twice, maybe under two labels or in both splits: refuse it, naming both places."""
    first: dict[Path, int] = {}
    for i, f in enumerate(full):
        if f in first:
            raise DataError(f"{wheres[i]}: the same file as {wheres[first[f]]} ({f}); list each image once")
        first[f] = i


def _split_frame(ids, rels: list[str], full: list[Path], labels, stream: bool) -> pl.DataFrame:
    """Read the files (`full`: `rels` resolved by `resolve_under`) into an INGESTED frame, or (`stream`)
    keep their resolved paths for per-batch reads."""
    if stream:
        return _frame(ids, labels, [None] * len(full), paths=rels, files=[str(f) for f in full])
    return _frame(ids, labels, [f.read_bytes() for f in full], paths=rels)


def _hidden(path: Path, below: Path) -> bool:
    """Whether any part of `path` under `below` starts with a dot (.git, .ipynb_checkpoints, .DS_Store)."""
    return any(part.startswith(".") for part in path.relative_to(below).parts)


def _visible(folder: Path) -> list[Path]:
    """The entries of `folder` that are not hidden (dot-names are skipped, and the docs say so)."""
    return [e for e in folder.iterdir() if not e.name.startswith(".")]


def load_imagefolder_source(p: DataParams) -> Ingested:
    """`root/<class>/*.png` (split by data.test_fraction) or `root/{train,test}/<class>/*`.

    Hidden entries (names starting with a dot: `.git`, `.ipynb_checkpoints`) are skipped; an empty class
    folder, a `val/` beside `train/` and `test/`, and one file reached twice (e.g. through a symlink back
    up the tree) are refused by name."""
    root = Path(p.root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    splits = {"train": root / "train", "test": root / "test"}
    presplit = all(d.is_dir() for d in splits.values())
    if not presplit and any(d.is_dir() for d in splits.values()):
        raise DataError(f"{root}: has only one of train/ and test/; give both, or class folders directly")
    if presplit:
        other = sorted(d.name for d in _visible(root) if d.is_dir() and d.name not in splits)
        if other:
            raise DataError(
                f"{root / other[0]}: only train/ and test/ are read next to each other; {other} would be "
                "ignored (move them out, or merge a validation split into train/)"
            )
    bases = splits if presplit else {"all": root}
    classes = sorted(d.name for d in _visible(bases["train" if presplit else "all"]) if d.is_dir())
    if not classes:
        raise DataError(f"{root}: no class sub-folders")
    index = {c: i for i, c in enumerate(classes)}
    rows: dict[str, tuple[list[str], list[int]]] = {}
    for split, base in bases.items():
        rels, labels, empty = [], [], []
        for d in sorted(x for x in _visible(base) if x.is_dir()):
            if d.name not in index:
                raise DataError(f"{d}: class '{d.name}' is not among the training classes {classes}")
            files = [
                f for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES and not _hidden(f, d)
            ]
            empty += [] if files else [d]
            rels += [str(f.relative_to(root)) for f in files]
            labels += [index[d.name]] * len(files)
        if empty and rels:  # (a split with no images at all is refused below, as an empty split)
            raise DataError(
                f"{empty[0]}: class folder '{empty[0].name}' holds no image files "
                f"({', '.join(IMAGE_SUFFIXES)}); an empty class cannot be learnt, remove the folder"
            )
        rows[split] = (rels, labels)
    if not presplit:
        rels, labels = rows.pop("all")
        if not rels:
            raise DataError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) under the class folders")
        tr, te = _stratified_split(np.asarray(labels), p.test_fraction, p.split_seed)
        rows = {
            s: ([rels[i] for i in ix], [labels[i] for i in ix]) for s, ix in (("train", tr), ("test", te))
        }
        ids = {"train": tr, "test": te}
    else:
        ntr = len(rows["train"][0])
        ids = {"train": np.arange(ntr), "test": ntr + np.arange(len(rows["test"][0]))}
    every = [r for rels, _ in rows.values() for r in rels]
    resolved = {r: resolve_under(root, r, str(root / r)) for r in every}
    refuse_repeated_files([resolved[r] for r in every], [str(root / r) for r in every])
    frames = {}
    for split, (rels, labels) in rows.items():
        if not rels:
            raise DataError(f"{root}: the {split} split is empty")
        frames[split] = _split_frame(ids[split], rels, [resolved[r] for r in rels], labels, p.stream)
    return Ingested(frames["train"], frames["test"], classes, "imagefolder")


MISSING_LABELS = ("nan", "none", "null", "na", "n/a")  # manifest label cells read as missing


def _refuse_numbers_spelled_twice(raw: list[str], row_name) -> None:
    """`0` and `0.0` (or `1` and `01`) are one number spelled two ways: as names they would be two classes."""
    seen: dict[float, tuple[str, int]] = {}
    for i, v in enumerate(raw):
        try:
            num = float(v)
        except ValueError:
            continue
        if num in seen and seen[num][0] != v:
            raise DataError(
                f"{row_name(i)}: label {v!r} is the number {seen[num][0]!r} of "
                f"{row_name(seen[num][1]).split(': ')[-1]} "
                "spelled another way; they would become two classes. Write each label one way"
            )
        seen.setdefault(num, (v, i))


def load_manifest_source(p: DataParams) -> Ingested:
    """CSV/Parquet manifest with columns `path,label[,split]`; labels are class names or indices."""
    path = Path(p.root)
    if not path.is_file():
        raise DataError(f"{path}: manifest file not found")
    try:
        is_parquet = path.suffix.lower() == ".parquet"
        df = pl.read_parquet(path) if is_parquet else pl.read_csv(path, infer_schema_length=0)
    except Exception as e:
        raise DataError(
            f"{path}: cannot read manifest as {'Parquet' if is_parquet else 'CSV'} ({str(e)[:300]})"
        ) from None
    for col in ("path", "label"):
        if col not in df.columns:
            raise DataError(f"{path}: manifest needs columns 'path' and 'label' (found {df.columns})")
    if df.height == 0:
        raise DataError(f"{path}: manifest has no rows")
    row_name = (lambda i: f"{path}: row {i}") if is_parquet else (lambda i: f"{path}: row {i + 2}")
    raw = [None if v is None else str(v).strip() for v in df["label"].to_list()]
    for i, v in enumerate(raw):
        if not v:
            raise DataError(f"{row_name(i)}: empty label")
        if v.lower() in MISSING_LABELS:
            raise DataError(f"{row_name(i)}: missing label ({v!r})")
    _refuse_numbers_spelled_twice(raw, row_name)
    if p.classes is not None:
        classes = list(p.classes)
    elif all(v.lstrip("-").isdigit() for v in raw):
        classes = [str(i) for i in range(max(int(v) for v in raw) + 1)]
        empty = sorted(set(range(len(classes))) - {int(v) for v in raw})
        if empty:
            raise DataError(
                f"{path}: labels are class indices 0..{len(classes) - 1}, but {len(empty)} of them have no "
                f"rows ({', '.join(map(str, empty[:10]))}); a class with no samples cannot be learnt. Give "
                "data.classes (the class names, in index order) or label with names"
            )
    else:
        classes = sorted(set(raw))
    index = {c: i for i, c in enumerate(classes)}
    labels = []
    for i, v in enumerate(raw):
        if v in index:
            labels.append(index[v])
        elif v.lstrip("-").isdigit() and p.classes is not None and 0 <= int(v) < len(classes):
            labels.append(int(v))
        else:
            raise DataError(f"{row_name(i)}: label {v!r} is not a known class (classes: {classes})")
    paths = [str(v).strip() if v is not None else "" for v in df["path"].to_list()]
    root = Path(p.manifest_root) if p.manifest_root else path.parent
    first: dict[str, int] = {}
    for i, rel in enumerate(paths):
        if rel in first:
            raise DataError(f"{row_name(i)}: path {rel!r} repeats {row_name(first[rel]).split(': ')[-1]}")
        first[rel] = i
    wheres = [row_name(i) for i in range(len(paths))]
    try:
        resolved = [resolve_under(root, r, w) for r, w in zip(paths, wheres, strict=True)]
    except DataError as e:
        bad = next(r for r, w in zip(paths, wheres, strict=True) if str(e).startswith(f"{w}:"))
        if "not found" in str(e) and root != path.parent and (path.parent / bad).is_file():
            raise DataError(
                f"{e}; it is in the manifest's folder: set data.manifest_root: {path.parent} (the folder "
                "the manifest's paths resolve under, and that dvc.yaml watches)"
            ) from None
        raise
    refuse_repeated_files(resolved, wheres)
    labels_np = np.asarray(labels)
    if "split" in df.columns:
        split = [str(s).strip().lower() for s in df["split"].to_list()]
        bad = [i for i, s in enumerate(split) if s not in ("train", "test")]
        if bad:
            raise DataError(f"{row_name(bad[0])}: split {split[bad[0]]!r} must be 'train' or 'test'")
        tr = np.asarray([i for i, s in enumerate(split) if s == "train"], dtype=np.int64)
        te = np.asarray([i for i, s in enumerate(split) if s == "test"], dtype=np.int64)
    else:
        tr, te = _stratified_split(labels_np, p.test_fraction, p.split_seed)
    frames = {}
    for name, ix in (("train", tr), ("test", te)):
        if len(ix) == 0:
            raise DataError(f"{path}: the {name} split is empty")
        frames[name] = _split_frame(
            ix, [paths[i] for i in ix], [resolved[i] for i in ix], labels_np[ix], p.stream
        )
    return Ingested(frames["train"], frames["test"], classes, "manifest")


def file_root(p: DataParams) -> Path | None:
    """The folder an ingested `source_path` is relative to (None for sources without files)."""
    if p.source == "imagefolder":
        return Path(p.root)
    if p.source == "manifest":
        return Path(p.manifest_root) if p.manifest_root else Path(p.root).parent
    return None


SOURCES = {
    "digits": load_digits_source,
    "cifar10": load_cifar_source,
    "cifar100": load_cifar_source,
    "imagefolder": load_imagefolder_source,
    "manifest": load_manifest_source,
}


def require_watched(p: DataParams) -> None:
    """Refuse inputs that `dvc.yaml` cannot watch: its ingest stage lists `data.root` as a dependency (the
    folder, or the manifest file), so a CIFAR-N label file outside that folder could change without
    re-running anything.

    Raises:
        DataError: naming the label file and the root.
    """
    if not (p.noisy_labels and p.root) or not Path(p.root).is_dir():
        return
    root, labels = Path(p.root).resolve(), Path(p.noisy_labels).resolve()
    if not labels.is_relative_to(root):
        raise DataError(
            f"data.noisy_labels: {p.noisy_labels} is outside data.root ({p.root}); dvc.yaml watches "
            "data.root only, so a changed label file would not re-run the pipeline. Move the file under "
            "data.root"
        )


def ingest(p: DataParams) -> Ingested:
    """Load the configured source, then apply `data.max_per_split`."""
    out = SOURCES[p.source](p)
    out.train = subsample(out.train, p.max_per_split, p.split_seed)
    out.test = subsample(out.test, p.max_per_split, p.split_seed)
    return out
