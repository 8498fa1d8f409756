"""Typed params (`pipeline.config`): defaults, and errors that name the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.config import (
    DataParams,
    NoiseParams,
    Params,
    validate_section,
)
from pipeline.errors import ConfigError
from pipeline.params import load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_params(raw, "params.yaml")
    return str(e.value)


def test_defaults_are_valid() -> None:
    p = parse_params({})
    assert isinstance(p, Params)
    assert p == parse_params(None) == Params()  # type: ignore[arg-type]
    assert p.data.source == "digits" and p.data.root is None
    assert p.noise.kind == "symmetric" and 0 <= p.noise.rate <= 1 and p.noise.exclude_true
    assert p.methods == ["ce"] and p.clean.methods == ["ce"]
    assert p.train.epochs >= 1 and p.train.image_size >= 8


def test_a_full_valid_config() -> None:
    p = parse_params(
        {
            "seed": 3,
            "data": {
                "source": "cifar10",
                "root": "data/raw",
                "noisy_labels": "CIFAR-10_human.pt",
                "noisy_label_key": "aggre_label",
                "max_per_split": 100,
            },
            "noise": {"kind": "real"},  # issue 17: noisy_labels with synthetic noise is now refused
            "train": {
                "backbone": "resnet18",
                "epochs": 2,
                "schedule": "step",
                "milestones": [1],
                "augment": {"hflip": True, "pad_crop": 4},
            },
            "methods": ["ce"],
            "clean": {"methods": ["ce"], "relabel_confidence": 0.9},
        }
    )
    assert p.noise.kind == "real" and p.data.noisy_label_key == "aggre_label"
    assert parse_params({"noise": {"asym_map": {3: 5, 5: 3}}}).noise.asym_map == {3: 5, 5: 3}
    assert p.train.augment.hflip and p.data.max_per_split == 100


def test_yaml_string_keys_of_asym_map_become_ints() -> None:
    assert parse_params({"noise": {"asym_map": {"2": "7"}}}).noise.asym_map == {2: 7}


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"foo": 1}, "foo"),
        ({"noise": {"foo": 1}}, "noise.foo"),
        ({"data": {"rooot": "x"}}, "data.rooot"),
        ({"train": {"augment": {"hflipp": True}}}, "train.augment.hflipp"),
        ({"clean": {"threshold": 0.5}}, "clean.threshold"),
        ({"evaluate": {"gallery": 3}}, "evaluate.gallery"),
    ],
)
def test_unknown_key_names_its_path(raw: dict, key: str) -> None:
    assert f"params.yaml: {key}: unknown key" in _error(raw)


def test_every_bad_key_is_reported() -> None:
    msg = _error({"foo": 1, "noise": {"rate": 1.5, "bar": 2}})
    assert "foo: unknown key" in msg and "noise.bar: unknown key" in msg and "noise.rate" in msg


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"noise": {"rate": 1.5}}, "noise.rate", "less than or equal to 1"),
        ({"noise": {"rate": -0.1}}, "noise.rate", "greater than or equal to 0"),
        ({"noise": {"kind": "gaussian"}}, "noise.kind", "gaussian"),
        ({"noise": {"asym_map": "imagenet"}}, "noise.asym_map", "imagenet"),
        ({"data": {"source": "webdataset"}}, "data.source", "webdataset"),
        ({"data": {"test_fraction": 1.0}}, "data.test_fraction", "less than 1"),
        ({"data": {"max_per_split": 0}}, "data.max_per_split", "greater than or equal to 1"),
        ({"train": {"lr": 0}}, "train.lr", "greater than 0"),
        ({"train": {"channels": 2}}, "train.channels", ""),
        ({"clean": {"relabel_confidence": 2}}, "clean.relabel_confidence", ""),
    ],
)
def test_bad_value_names_key(raw: dict, key: str, words: str) -> None:
    msg = _error(raw)
    assert f"params.yaml: {key}" in msg and words in msg


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"seed": "abc"}, "seed"),
        ({"noise": {"exclude_true": "perhaps"}}, "noise.exclude_true"),
        ({"methods": "ce"}, "methods"),
        ({"data": 5}, "data"),
        ({"train": {"milestones": ["x"]}}, "train.milestones"),
    ],
)
def test_wrong_type_names_key(raw: dict, key: str) -> None:
    msg = _error(raw)
    assert f"params.yaml: {key}" in msg
    assert "got" in msg  # the offending value is echoed


def test_data_root_required_for_non_builtin_source() -> None:
    msg = _error({"data": {"source": "manifest"}})
    assert "data.root is required" in msg


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"methods": ["ce", "magic"]}, "methods"),
        ({"methods": ["ce"], "clean": {"methods": ["nope"]}}, "clean.methods"),
        ({"method": {"zzz": {"lr": 1}}}, "method.zzz"),
    ],
)
def test_unknown_method_names_key_and_lists_known(raw: dict, key: str) -> None:
    msg = _error(raw)
    assert f"{key}: unknown method" in msg and "'ce'" in msg


def test_clean_methods_must_be_trained() -> None:
    from pipeline.methods import REGISTRY

    others = [m for m in REGISTRY if m != "ce"]
    if not others:
        pytest.skip("only one method registered")
    msg = _error({"methods": ["ce"], "clean": {"methods": [others[0]]}})
    assert "clean.methods" in msg


def test_empty_methods_list() -> None:
    assert "params.yaml: methods" in _error({"methods": []})


def test_unknown_timm_backbone() -> None:
    msg = _error({"train": {"backbone": "resnet_does_not_exist"}})
    assert "train.backbone" in msg and "resnet_does_not_exist" in msg


def test_sections_validate_on_assignment() -> None:
    p = NoiseParams()
    with pytest.raises(ValidationError):
        p.rate = 1.5
    with pytest.raises(ValidationError):
        DataParams(source="digits", extra=1)  # type: ignore[call-arg]


def test_load_params_from_yaml(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text("seed: 4\nnoise:\n  rate: 0.2\n  kind: pairflip\n")
    p = load_params(f)
    assert p.seed == 4 and p.noise.kind == "pairflip" and p.noise.rate == 0.2
    f.write_text("noise:\n  rate: 1.5\n")
    with pytest.raises(ConfigError, match=rf"{f}: noise.rate"):
        load_params(f)
    f.write_text("")  # issue 17: an empty file ran on code defaults that differ from the shipped params
    with pytest.raises(ConfigError, match=rf"{f}: the file is empty"):
        load_params(f)


def test_load_params_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml: params file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("noise: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="bad.yaml: top level must be a mapping"):
        load_params(bad)


def test_validate_section_names_key() -> None:
    class Opts(BaseModel):
        model_config = ConfigDict(extra="forbid")
        forget_rate: float = Field(0.2, ge=0, le=1)

    assert validate_section(Opts, None, "method.x").forget_rate == 0.2
    with pytest.raises(ConfigError, match=r"params.yaml: method.x: forget_rate: .*less than or equal to 1"):
        validate_section(Opts, {"forget_rate": 3}, "method.x")
    with pytest.raises(ConfigError, match=r"method.x: bogus: unknown key"):
        validate_section(Opts, {"bogus": 1}, "method.x")


@pytest.mark.skipif(not (REPO / "params.yaml").exists(), reason="no params.yaml in the repo yet")
def test_repo_params_yaml_is_valid() -> None:
    load_params(REPO / "params.yaml")


PARAMS_FILES = ["params.yaml", *sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("presets/*.yaml"))]
_ABSENT = object()


def _lookup(raw: dict, dotted: str) -> object:
    """The value at `a.b.c` in a params mapping, or `_ABSENT` where a key along the path is missing."""
    node: object = raw
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) and part in node else _ABSENT
    return node


@pytest.mark.parametrize("params_file", PARAMS_FILES)
def test_every_params_file_fills_what_dvc_yaml_interpolates(params_file: str) -> None:
    # `cp presets/<name>.yaml params.yaml && dvc repro` fails before any stage runs when dvc.yaml names a
    # ${key} the file lacks ("Could not find 'data.manifest_root'"); foreach keys must be lists.
    import re

    import yaml

    raw = yaml.safe_load((REPO / params_file).read_text())
    keys = set(re.findall(r"\$\{([A-Za-z_][\w.]*)\}", (REPO / "dvc.yaml").read_text())) - {"item"}
    assert keys, "dvc.yaml interpolates nothing: the check would pass vacuously"
    missing = [key for key in sorted(keys) if _lookup(raw, key) in (_ABSENT, None)]
    assert not missing, f"{params_file} lacks (or sets null) what dvc.yaml interpolates: {missing}"
    for key in ("methods", "detectors"):
        assert isinstance(raw[key], list), f"{params_file}: {key} must be a list (dvc.yaml's foreach)"
    parse_params(raw, params_file)


@pytest.mark.parametrize("params_file", PARAMS_FILES)
def test_every_params_file_holds_the_params_keys_dvc_yaml_stages_declare(params_file: str) -> None:
    # DVC refuses a stage whose declared params key is absent ("Parameters 'datalab' are missing from
    # 'params.yaml'"), after every stage before it has run. `<section>.${item}` expands over the foreach list.
    import yaml

    raw = yaml.safe_load((REPO / params_file).read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = []
    for name, stage in stages.items():
        body = stage.get("do", stage)
        items = raw.get(stage["foreach"].strip("${}"), []) if "foreach" in stage else [None]
        for key in body.get("params", []):
            for item in items:
                path = key if item is None else key.replace("${item}", str(item))
                if _lookup(raw, path) is _ABSENT:
                    missing.append(f"{name}: {path}")
    assert len(stages) > 5
    assert not missing, f"{params_file} lacks params keys that dvc.yaml's stages declare: {missing}"
