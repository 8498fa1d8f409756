"""Build any timm backbone: random init for small images, or pretrained weights from timm's hub or a file.

timm is imported inside the functions that build a model: importing it costs ~2.5 s, and the stages that
only read score tables or features (ingest, clean, detect, evaluate) import this module through the method
registry without building a network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.config import TrainParams
from pipeline.errors import ConfigError
from pipeline.weights import check_fits, normalization_of, read_state_dict


@dataclass(frozen=True)
class Pretrained:
    """Where a backbone's weights come from and the input normalisation they expect.

    Attributes:
        source: "hub" (timm's hub) or the weights file's path.
        mean: per-channel mean of [0, 1] pixels (3 values, RGB).
        std: per-channel std.
    """

    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def resolve_pretrained(backbone: str, pretrained: bool | str, key: str) -> Pretrained | None:
    """Check the `pretrained` setting for `backbone` without building the model (None = random init).

    The normalisation comes from the weights file's metadata when it records one (the converted Lite0
    file does), else from timm's pretrained config of `backbone`.
    """
    if pretrained is False:
        return None
    import timm

    cfg = timm.models.get_pretrained_cfg(backbone)
    mean = tuple((cfg.mean if cfg else None) or (0.485, 0.456, 0.406))
    std = tuple((cfg.std if cfg else None) or (0.229, 0.224, 0.225))
    if pretrained is True:
        return Pretrained("hub", mean, std)
    _, meta = read_state_dict(pretrained, key)
    norm = normalization_of(meta)
    return Pretrained(str(pretrained), *(norm or (mean, std)))


def create_pretrained(
    backbone: str, pretrained: bool | str, key: str, *, num_classes: int, in_chans: int, **kwargs
) -> nn.Module:
    """`timm.create_model` with pretrained weights: timm's hub for `True`, else the file at `pretrained`
    (loaded through timm's `pretrained_cfg_overlay=dict(file=...)`: classifier reset to `num_classes`, first
    conv adapted to `in_chans`). `key` names the params setting in every error.
    """
    import timm

    if pretrained is True:
        try:
            return timm.create_model(
                backbone, pretrained=True, num_classes=num_classes, in_chans=in_chans, **kwargs
            )
        except TypeError as e:
            raise ConfigError(f"{key.rsplit('.', 1)[0]}.model_kwargs: {e}") from None
        except Exception as e:  # noqa: BLE001 - offline, hub errors, missing weights
            raise ConfigError(
                f"{key}: true downloads '{backbone}' weights from timm's hub, which failed "
                f"({type(e).__name__}: {str(e)[:200]}); with no network, set {key} to a weights file"
            ) from None
    state, _ = read_state_dict(pretrained, key)
    probe = timm.create_model(
        backbone, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs
    )
    head = probe.pretrained_cfg.get("classifier") or "classifier"
    heads = (head,) if isinstance(head, str) else tuple(head)
    check_fits(probe, state, heads, probe.pretrained_cfg.get("first_conv"), f"{key}: '{pretrained}'")
    return timm.create_model(
        backbone,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(pretrained)},
        num_classes=num_classes,
        in_chans=in_chans,
        **kwargs,
    )


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


def small_head_init(model: nn.Module, std: float = 0.01) -> None:
    """Re-draw the new classifier N(0, std²) with zero bias (from the current RNG).

    Some timm inits scale the classifier by 1/sqrt(num_classes) (EfficientNet's), which on pretrained
    features of norm ~30 starts fine-tuning at a loss of ~6 instead of log K; small weights start every
    network near uniform predictions while keeping the seeds' networks distinct.
    """
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    for mod in (
        [head] if isinstance(head, nn.Linear) else (head.modules() if isinstance(head, nn.Module) else [])
    ):
        if isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, std=std)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


def build_model(cfg: TrainParams, num_classes: int, in_chans: int, seed: int) -> nn.Module:
    """Create `cfg.backbone` with `num_classes` outputs, initialised from `seed` (global RNG untouched).

    Args:
        cfg: training params (backbone, model_kwargs, pretrained, small_stem).
        num_classes: K.
        in_chans: 1 (grayscale) or 3.
        seed: initialisation seed.
    """
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            if cfg.pretrained is False:
                model = timm.create_model(
                    cfg.backbone,
                    pretrained=False,
                    num_classes=num_classes,
                    in_chans=in_chans,
                    **cfg.model_kwargs,
                )
            else:  # the classifier is drawn from `seed`, the rest comes from the weights
                model = create_pretrained(
                    cfg.backbone,
                    cfg.pretrained,
                    "train.pretrained",
                    num_classes=num_classes,
                    in_chans=in_chans,
                    **cfg.model_kwargs,
                )
                small_head_init(model)
        except TypeError as e:
            raise ConfigError(f"train.model_kwargs: {e}") from None
        if cfg.small_stem:
            model = adapt_small_stem(model)
    return model


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features h (B, D) and logits (B, K) of a timm classifier in one forward pass.

    Raises:
        ValueError: the model's classifier is not an `nn.Linear` (the closed form needs one).
    """
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"gradient similarity needs a linear classifier; {type(model).__name__} has "
            f"{type(head).__name__} (choose another train.backbone)"
        )
    h = model.forward_head(model.forward_features(x), pre_logits=True)
    return h, head(h)


class FeaturesAndLogits(nn.Module):
    """`features_and_logits` as a module, so a DDP wrapper or `torch.compile` can run it (its state_dict
    keys are the network's under `net.`; the methods keep and save the network itself)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return features_and_logits(self.net, x)
