"""dvc.yaml's `plots:` follow the registry: the shared plots list every method the shipped params train, and
each method's own plots are the ones its `MethodSpec.plots` declares in its file (DVC reads plots from
dvc.yaml only, so they are written out there; this test prints the block to paste when they drift)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipeline.methods import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


def shipped() -> tuple[list[dict], list[str]]:
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    methods = yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]
    return plots, methods


def test_every_method_plot_is_in_dvc_yaml() -> None:
    plots, methods = shipped()
    for m in methods:
        for plot in REGISTRY[m].plots:
            assert plot in plots, f"dvc.yaml lacks {m}'s plot; paste under plots:\n" + yaml.safe_dump([plot])


def test_shared_plots_list_exactly_the_trained_methods() -> None:
    plots, methods = shipped()
    by_title = {next(iter(p)): next(iter(p.values())) for p in plots}
    accuracy = set(by_title["test accuracy per epoch"]["y"])
    assert accuracy == {f"logs/{m}.csv" for m in methods} | {"logs/retrain.csv"}
    pr = set(by_title["label-error detection (precision-recall of noise_score)"]["y"])
    assert pr == {f"reports/plots/pr/{m}.csv" for m in methods}
    own = [p for m in methods for p in REGISTRY[m].plots]
    named = set()
    for p in plots:
        for path in next(iter(p.values()))["y"]:
            named |= set(re.findall(r"/(\w+)\.csv$", path))
        if p not in own:  # a shared plot, or a method's plot that its file no longer declares
            title = next(iter(p))
            assert title in (
                "test accuracy per epoch",
                "label-error detection (precision-recall of noise_score)",
                "label precision of the kept data",
            ), f"dvc.yaml plot {title!r} is declared by no method"
    assert named <= set(methods) | {"retrain"}, named - set(methods)
