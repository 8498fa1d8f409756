"""CONTRIBUTING.md's "add a method" recipe, proven: a method defined in this file alone, registered with one
call, runs through the real train, clean and evaluate stages. Its own score column is written and checked,
it votes in `clean`, and its report section is in the page; no central file names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch
import yaml
from helpers import ingest_and_noise
from pydantic import Field

from pipeline.config import Strict
from pipeline.data.tensors import ImageData
from pipeline.methods import REGISTRY, MethodOutput, MethodSpec, register, unregister
from pipeline.params import parse_params
from pipeline.schemas import Column
from pipeline.train import (
    Accumulator,
    EpochResult,
    TrainContext,
    build_nets,
    ce_step,
    load_nets_state,
    make_optimizer,
    make_scheduler,
    nets_state,
    predict_mean,
)
from stages import clean, evaluate, retrain, train

NAME = "toy_margin"


class ToyOptions(Strict):
    """`method.toy_margin:` options."""

    flag_margin: float = Field(0.0, ge=-1.0, le=1.0)  # flag when p(given) - max p(other) < this


class ToyMargin:
    """CE on one network; flags a label whose probability trails the best other class."""

    def __init__(self, opts: ToyOptions, ctx: TrainContext) -> None:
        self.options, self.ctx = opts, ctx
        self.nets = build_nets(ctx, 1)
        self.optimizers = [make_optimizer(self.nets[0], ctx.cfg)]
        self.schedulers = [make_scheduler(self.optimizers[0], ctx.cfg)]

    def train_epoch(self, epoch: int) -> EpochResult:
        acc = Accumulator(self.ctx.device)
        self.nets[0].train()
        for idx in self.ctx.batches():
            _, x, y = self.ctx.train_batch(idx)
            loss, logits = ce_step(self.nets[0], self.optimizers[0], x, y, self.ctx)
            acc.add(loss, logits, y)
        self.schedulers[0].step()
        return acc.result()

    def predict(self, data: ImageData) -> torch.Tensor:
        return predict_mean(self.nets, data, self.ctx)

    def networks(self) -> list[torch.nn.Module]:
        return self.nets

    def export(self) -> MethodOutput:
        probs = self.predict(self.ctx.train)
        given = self.ctx.train.labels.to(probs.device)
        p_given = probs.gather(1, given[:, None])[:, 0]
        other = probs.scatter(1, given[:, None], -1.0).max(1).values
        margin = p_given - other
        return MethodOutput(
            probs,
            noise_score=(1 - margin) / 2,
            flagged=margin < self.options.flag_margin,
            extra={"margin": margin.cpu().numpy().astype(np.float32)},
        )

    def state_dict(self) -> dict[str, Any]:
        return nets_state(self.nets, self.optimizers, self.schedulers)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_nets_state(state, self.nets, self.optimizers, self.schedulers)


MARGIN = Column(
    "margin",
    pa.float32(),
    min_value=-1.0,
    max_value=1.0,
    direction="higher = the given label leads the other classes (more likely clean)",
    description="toy_margin: p(given) minus the largest other class probability.",
)


def toy_section(r, name: str) -> str:
    flagged = int(r.scores[name]["is_flagged"].sum())
    return f"<h2>Toy margin</h2><p>{flagged} labels trail another class.</p>"


@pytest.fixture
def toy():
    spec = register(
        MethodSpec(NAME, ToyOptions, ToyMargin, "toy: CE + probability margin", (MARGIN,), toy_section)
    )
    yield spec
    unregister(NAME)


RAW = {
    "data": {"source": "digits", "max_per_split": 60},
    "noise": {"rate": 0.3, "estimate": False},
    "train": {"model_kwargs": {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1]}, "epochs": 2},
    "run": {"progress": False},
    "methods": ["ce", NAME],
    "method": {NAME: {"flag_margin": 0.1}},
    "clean": {"methods": [NAME, "ce"], "agreement": "all", "max_share": None},
}


@pytest.mark.train
def test_a_method_from_one_file_runs_through_train_clean_and_evaluate(toy, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(RAW))
    ingest_and_noise(parse_params(RAW), Path("data/ingested"), Path("data/noisy"))
    for m in RAW["methods"]:
        assert train.main([m]) == 0
    assert REGISTRY[NAME] is toy
    scores = pl.read_parquet(f"scores/{NAME}.parquet")
    assert scores["margin"].is_between(-1, 1).all()
    assert (scores["is_flagged"] == (scores["margin"] < 0.1)).all()
    assert clean.main([]) == 0
    cleaned = pl.read_parquet("cleaned/labels.parquet")
    both = scores.join(pl.read_parquet("scores/ce.parquet"), on="sample_id", suffix="_ce")
    acted = set(cleaned.filter(pl.col("action") != "keep")["sample_id"])
    assert acted and acted <= set(both.filter(pl.col("is_flagged") & pl.col("is_flagged_ce"))["sample_id"])
    assert retrain.main([]) == 0
    assert evaluate.main([]) == 0
    metrics = json.loads(Path("reports/metrics.json").read_text())
    assert NAME in metrics["methods"] and "f1" in metrics["methods"][NAME]["detection"]
    page = Path("reports/report.html").read_text()
    assert f"<h2>Toy margin</h2><p>{int(scores['is_flagged'].sum())} labels trail" in page


def test_a_method_column_that_breaks_its_declaration_is_refused(toy) -> None:
    """The column the method declares is checked on write like a contract column."""
    from pipeline.errors import ValidationFailed
    from pipeline.methods.base import score_table
    from pipeline.registry import score_schema
    from pipeline.validation import check_values

    probs = np.full((2, 10), 0.1, dtype=np.float32)
    extra = {"margin": np.array([0.5, 1.5], dtype=np.float32)}
    frame = score_table(
        NAME,
        np.arange(2),
        np.zeros(2, int),
        probs,
        noise_score=None,
        flagged=None,
        flag_threshold=0.5,
        extra=extra,
    )
    check_values(frame.with_columns(pl.lit(0.0).alias("margin")), score_schema(NAME), 10, "x")
    with pytest.raises(ValidationFailed, match=r"margin.*sample_id 1"):
        check_values(frame, score_schema(NAME), 10, "scores/toy.parquet")


def test_a_method_may_not_redefine_a_contract_column() -> None:
    with pytest.raises(ValueError, match="contract columns"):
        register(MethodSpec("bad", ToyOptions, ToyMargin, "x", (Column("noise_score", pa.float32()),)))
    assert "bad" not in REGISTRY
