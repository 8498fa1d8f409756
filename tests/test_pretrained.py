"""Pretrained weights through timm: file loading, refusals by name, preprocessing, head/backbone groups,
and every registered method fine-tuning from a weights file."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from helpers import TINY_ARCH, digits, pretrained_cfg, tiny_weights

from pipeline.errors import ConfigError
from pipeline.methods import REGISTRY
from pipeline.models import build_model
from pipeline.params import parse_params
from pipeline.train import TrainContext, fit, make_optimizer, make_scheduler

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    return path, tiny_weights(path)


def _backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_loads_backbone_and_resets_the_classifier(tmp_path, suffix):
    state = tiny_weights(tmp_path / f"w{suffix}")
    model = build_model(pretrained_cfg(tmp_path / f"w{suffix}"), num_classes=10, in_chans=3, seed=0)
    got = model.state_dict()
    for k, v in _backbone(state).items():
        assert torch.equal(got[k], v), k
    assert got["fc.weight"].shape == (10, 64)  # reset to K classes, drawn from the seed
    again = build_model(pretrained_cfg(tmp_path / f"w{suffix}"), num_classes=10, in_chans=3, seed=0)
    assert torch.equal(again.state_dict()["fc.weight"], got["fc.weight"])


def test_one_channel_input_is_adapted_by_timm(weights):
    path, state = weights
    model = build_model(pretrained_cfg(path), num_classes=10, in_chans=1, seed=0)
    conv = model.state_dict()["conv1.weight"]
    assert conv.shape[1] == 1
    assert torch.allclose(conv, state["conv1.weight"].sum(1, keepdim=True), atol=1e-6)  # timm sums RGB


def test_weights_that_do_not_fit_name_the_first_bad_key(tmp_path):
    state = tiny_weights(tmp_path / "ok.safetensors")
    from safetensors.torch import save_file

    renamed = {("layer9.x" if k == "layer1.0.conv1.weight" else k): v for k, v in state.items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(ConfigError, match=r"train.pretrained: .*unexpected key 'layer9.x'"):
        build_model(pretrained_cfg(tmp_path / "renamed.safetensors"), 10, 3, 0)
    missing = {k: v for k, v in state.items() if k != "layer2.0.bn1.weight"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigError, match="missing key 'layer2.0.bn1.weight'"):
        build_model(pretrained_cfg(tmp_path / "missing.safetensors"), 10, 3, 0)
    wide = pretrained_cfg(tmp_path / "ok.safetensors", model_kwargs={"channels": [16, 32, 64, 128]})
    with pytest.raises(
        ConfigError, match=r"key 'layer1.0.bn1.bias' has shape \(8,\), the model expects \(16,\)"
    ):
        build_model(wide, 10, 3, 0)


def test_missing_and_corrupt_weights_files_are_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match=r"train.pretrained: weights file '.*nope.pth' not found"):
        build_model(pretrained_cfg(tmp_path / "nope.pth"), 10, 3, 0)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ConfigError, match=r"train.pretrained: cannot read weights file '.*bad.safetensors'"):
        build_model(pretrained_cfg(bad), 10, 3, 0)


def test_pretrained_true_offline_names_the_setting(monkeypatch):
    import timm.models._builder as builder

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(builder, "load_state_dict_from_url", offline)
    cfg = pretrained_cfg("x").model_copy(update={"pretrained": True})
    with pytest.raises(ConfigError, match=r"train.pretrained: true downloads 'resnet18' weights .* failed"):
        build_model(cfg, 10, 3, 0)


def test_small_stem_with_pretrained_is_refused():
    with pytest.raises(ConfigError, match="train.small_stem: replaces the pretrained stem"):
        parse_params({"train": {"pretrained": "w.pth", "small_stem": True}})


def test_batches_are_resized_in_the_tensor_path_and_use_the_weights_normalisation(tmp_path):
    path = tmp_path / "w.safetensors"
    tiny_weights(path, mean=(0.5, 0.5, 0.5))
    train, test = digits(40, 10)
    ctx = TrainContext(train, test, pretrained_cfg(path), 10, 1, CPU, seed=0)
    assert tuple(train.images.shape[-2:]) == (8, 8)  # stored at 8 px
    _, x, _ = ctx.train_batch(torch.arange(4))
    assert x.shape == (4, 1, 16, 16)
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6  # (x - 0.5) / 0.5 from the file's metadata
    white = ctx.normalize(torch.full((1, 1, 8, 8), 255, dtype=torch.uint8))
    assert torch.allclose(white, torch.ones_like(white))


def test_backbone_lr_scale_and_frozen_epochs(weights):
    path, _ = weights
    cfg = pretrained_cfg(path, backbone_lr_scale=0.1, freeze_backbone_epochs=1, epochs=3)
    net = build_model(cfg, 10, 1, 0)
    opt = make_optimizer(net, cfg)
    sched = make_scheduler(opt, cfg)
    head, body = opt.param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in net.get_classifier().parameters()}
    assert head["lr"] == pytest.approx(0.05) and body["lr"] == 0.0  # epoch 0: backbone frozen
    opt.step()  # the epoch's updates, in torch's order (no gradients here: nothing moves), then the schedule
    sched.step()
    assert body["lr"] == pytest.approx(0.1 * head["lr"])


def test_frozen_backbone_epoch_trains_only_the_head(weights):
    path, state = weights
    train, test = digits(64, 16)
    cfg = pretrained_cfg(path, freeze_backbone_epochs=1, epochs=2, momentum=0.0, weight_decay=0.0)
    ctx = TrainContext(train, test, cfg, 10, 1, CPU, seed=0)
    method = REGISTRY["ce"].build(REGISTRY["ce"].options(), ctx)
    (net,) = method.networks()
    head_before = net.fc.weight.detach().clone()
    fit(method, ctx, name="ce", epochs=1)
    now = net.state_dict()
    assert torch.equal(now["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    assert not torch.equal(now["fc.weight"], head_before)


# -------------------------------------------------------------------------------- every registry method
OPTS = {"gal": {"warmup_epochs": 1}, "dividemix": {"warmup_epochs": 1, "rampup_epochs": 1}}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_method_fine_tunes_from_pretrained_weights(name, weights):
    path, state = weights
    train, test = digits(64, 32)
    ctx = TrainContext(train, test, pretrained_cfg(path), 10, 1, CPU, seed=0, noise_rate=0.4)
    ctx.oof_probs = torch.full((64, 10), 0.1)
    spec = REGISTRY[name]
    method = spec.build(spec.options(**OPTS.get(name, {})), ctx)
    for net in method.networks():  # every network starts from the file's backbone
        assert torch.equal(net.state_dict()["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])
    res = fit(method, ctx, name=name, epochs=2)
    probs = method.export().probs
    assert probs.shape == (64, 10) and torch.isfinite(probs).all()
    assert all(np.isfinite(r["train_loss"]) for r in res.log)
    moved = [not torch.equal(n.state_dict()["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])
             for n in method.networks()]  # fmt: skip
    assert any(moved), "fine-tuning left the backbone untouched"


def test_timm_model_names_resolve():
    assert timm.is_model(TINY_ARCH["backbone"])
