"""Shared test helpers for the pretrained-weights, embedding and detector tests."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from pipeline.config import TrainParams
from pipeline.data.tensors import ImageData
from pipeline.noise import inject

TINY_ARCH = dict(backbone="resnet18", model_kwargs={"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1]})


def tiny_weights(path: Path, seed: int = 123, num_classes: int = 1000, mean=None) -> dict[str, torch.Tensor]:
    """Write a timm-format state dict of the tiny ResNet (3 input channels, `num_classes` outputs), drawn
    from `seed`, to `path` (.safetensors or .pth); returns it. `mean` records a normalisation (mean=std)."""
    torch.manual_seed(seed)
    model = timm.create_model(TINY_ARCH["backbone"], num_classes=num_classes, **TINY_ARCH["model_kwargs"])
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        meta = None
        if mean is not None:
            meta = {"gradclean": json.dumps({"mean": list(mean), "std": list(mean)})}
        save_file(state, str(path), metadata=meta)
    else:
        torch.save(state, path)
    return state


def pretrained_cfg(path: Path, **over) -> TrainParams:
    """Training params that fine-tune the tiny ResNet from `path` at 16 px (digits stored at 8 px)."""
    base = dict(
        **TINY_ARCH, pretrained=str(path), small_stem=False, image_size=16, load_size=8, batch_size=32,
        lr=0.05, progress=False, epochs=2, augment={"pad_crop": 0},
    )  # fmt: skip
    return TrainParams(**{**base, **over})


def digits(n_train: int, n_test: int, noise: float = 0.4, seed: int = 0) -> tuple[ImageData, ImageData]:
    """Digits (1 channel, 8 px) with symmetric noise on the training split; truth kept."""
    d = load_digits()
    x = torch.from_numpy(np.round(d.images * 255 / 16).astype(np.uint8))[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    tr, te = order[:n_train], order[n_train : n_train + n_test]
    given = inject(y[tr], "symmetric", noise, 10, seed=seed) if noise else y[tr]
    train = ImageData(x[tr], torch.as_tensor(given), tr.astype(np.int64), torch.as_tensor(y[tr]))
    return train, ImageData(x[te], torch.as_tensor(y[te]), te.astype(np.int64))


def clustered_features(n: int = 400, k: int = 4, dim: int = 32, rate: float = 0.3, seed: int = 0):
    """(features (n, dim) L2-normalised, given labels, true labels): k well-separated Gaussian clusters,
    a `rate` share of the labels flipped to another class."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    centres = rng.normal(size=(k, dim)) * 3
    x = centres[truth] + rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    given = truth.copy()
    flip = rng.random(n) < rate
    given[flip] = (truth[flip] + rng.integers(1, k, flip.sum())) % k
    return x.astype(np.float32), given.astype(np.int64), truth.astype(np.int64)


def ingest_and_noise(params, ingested: Path, noisy: Path) -> None:
    """Run the ingest and noise stage functions: `ingested/{train,test}.parquet`, and `noisy/` with
    train.parquet, noise_report.json and oof_probs.parquet, laid out as dvc.yaml lays them out."""
    from pipeline.run import run_ingest, run_noise

    run_ingest(params, ingested)
    run_noise(
        params, ingested, noisy / "train.parquet", noisy / "noise_report.json", noisy / "oof_probs.parquet"
    )


# ------------------------------------------------------------------------- the project's import graph
ROOT = Path(__file__).resolve().parents[1]


def project_modules() -> dict[str, Path]:
    """{dotted name: file} of every module under pipeline/ and stages/ (a package: its __init__.py)."""
    out = {}
    for top in ("pipeline", "stages"):
        for f in (ROOT / top).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the project modules it imports}, a `from pkg import name` counted as importing `pkg.name`
    when that is a module, else `pkg`."""
    mods = project_modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                dep = owner(t)
                if dep and dep != mod:
                    graph[mod].add(dep)
    return graph
