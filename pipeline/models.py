"""Build any timm backbone for small images."""

from __future__ import annotations

import timm
import torch
from torch import nn

from pipeline.config import TrainParams
from pipeline.errors import ConfigError


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            return name, mod
    raise ConfigError("train.small_stem: the model has no Conv2d to adapt")


def adapt_small_stem(model: nn.Module) -> nn.Module:
    """Small-image stem: first conv becomes 3×3 stride 1 (same channels), stem max-pool is removed.

    Works for CNNs whose stem starts with a strided conv (ResNet family incl. deep stems, RegNet,
    EfficientNet, ConvNeXt, ...). Patch-embedding transformers are refused: set their `img_size` and
    `patch_size` through `train.model_kwargs` instead.
    """
    name, conv = _first_conv(model)
    if "patch_embed" in name:
        raise ConfigError(
            "train.small_stem: not for patch-embedding models; use train.model_kwargs "
            "(img_size, patch_size) and small_stem: false"
        )
    new = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=conv.bias is not None)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
    for path in ("maxpool", "stem_pool", "stem.pool"):  # ResNet, RegNet-style, ResNetV2 (pre-activation)
        parent_name, _, attr = path.rpartition(".")
        owner = model.get_submodule(parent_name) if parent_name and hasattr(model, parent_name) else model
        if isinstance(getattr(owner, attr, None), nn.MaxPool2d | nn.Sequential):
            setattr(owner, attr, nn.Identity())
    return model


def build_model(cfg: TrainParams, num_classes: int, in_chans: int, seed: int) -> nn.Module:
    """Create `cfg.backbone` with `num_classes` outputs, initialised from `seed` (global RNG untouched).

    Args:
        cfg: training params (backbone, model_kwargs, small_stem).
        num_classes: K.
        in_chans: 1 (grayscale) or 3.
        seed: initialisation seed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = timm.create_model(
                cfg.backbone, pretrained=False, num_classes=num_classes, in_chans=in_chans, **cfg.model_kwargs
            )
        except TypeError as e:
            raise ConfigError(f"train.model_kwargs: {e}") from None
        if cfg.small_stem:
            model = adapt_small_stem(model)
    return model
