"""Reading params: `pipeline.config`'s typed sections, then what only the method and detector registries
know (their names, their options, their warm-ups).

`pipeline.config` is data and imports no method; the methods import it. This module sits above both, so the
package's imports stay acyclic (`tests/test_imports.py`). Every caller reads params through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.config import Params, _format, parse_sections, read_params_file
from pipeline.detectors import DETECTORS
from pipeline.errors import ConfigError
from pipeline.methods import REGISTRY


def check_registered(params: Params, source: str = "params") -> Params:
    """Check every method and detector name and option block against the registries.

    Raises:
        ConfigError: naming the key (`methods`, `method.<name>.<option>`, `clean.methods`, ...).
    """

    def fail(msg: str) -> None:
        raise ConfigError(f"{source}: {msg}")

    for key, names in (("methods", params.methods), ("detectors", params.detectors)):
        known = REGISTRY if key == "methods" else DETECTORS
        for m in names:
            if m not in known:
                fail(f"{key}: unknown {key[:-1]} '{m}' (known: {sorted(known)})")
        if len(set(names)) != len(names):
            fail(f"{key}: a name is listed twice in {names}")
    for m in params.clean.methods:
        if m not in REGISTRY and m not in DETECTORS:
            fail(f"clean.methods: unknown method '{m}' (known: {sorted(REGISTRY) + sorted(DETECTORS)})")
    for section, known, what in (("method", REGISTRY, "method"), ("detector", DETECTORS, "detector")):
        for m, opts in getattr(params, section).items():
            if m not in known:
                fail(f"{section}.{m}: unknown {what} '{m}' (known: {sorted(known)})")
            try:
                known[m].options.model_validate(opts or {})
            except ValidationError as e:
                fail(_format(e, f"{section}.{m}"))
    for m in params.methods:
        opts = REGISTRY[m].options.model_validate(params.method.get(m) or {})
        warmups = opts.warmups() if hasattr(opts, "warmups") else {}  # {option key: epochs}
        for key, value in warmups.items():
            if value >= params.train.epochs:
                fail(
                    f"method.{m}.{key}: {value} warm-up epochs leave none of train.epochs "
                    f"({params.train.epochs})"
                )
    missing = [m for m in params.clean.methods if m not in params.scored]
    if missing:
        fail(f"clean.methods: {missing} are not in `methods` or `detectors`, so no scores will exist")
    missing = [m for m in params.review.methods or [] if m not in params.scored]
    if missing:
        fail(f"review.methods: {missing} are not in `methods` or `detectors`, so no scores will exist")
    return params


def check_backbones(params: Params, source: str = "params") -> Params:
    """Check `train.backbone` and `embed.backbone` against timm's model registry (importing timm costs a
    stage ~4 s, so stages that build no network skip this; the first stage and every stage that builds one
    run it).

    Raises:
        ConfigError: naming the key.
    """
    import timm

    for key, name in (("train.backbone", params.train.backbone), ("embed.backbone", params.embed.backbone)):
        if not timm.is_model(name):
            raise ConfigError(f"{source}: {key}: unknown timm model '{name}' (see timm.list_models())")
    return params


def parse_params(raw: dict[str, Any] | None, source: str = "params", *, backbones: bool = True) -> Params:
    """Validate a params mapping; raise ConfigError naming every bad key. `backbones: False` skips the
    timm model-name check (`check_backbones`)."""
    params = check_registered(parse_sections(raw or {}, source), source)
    return check_backbones(params, source) if backbones else params


def load_params(path: str | Path = "params.yaml", *, backbones: bool = True) -> Params:
    """Read and validate a params.yaml (`backbones` as in `parse_params`)."""
    return parse_params(read_params_file(path), str(path), backbones=backbones)
