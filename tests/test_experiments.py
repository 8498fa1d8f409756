"""The paper experiments beside the product (`experiments/`): their options are checked like params, and
GAL's Figure-1 sweep runs on ingested tables and shows the agreement falling with noise."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from pydantic import ValidationError

from experiments import gal_figure1
from pipeline.errors import ConfigError
from pipeline.params import load_params, parse_params
from pipeline.run import run_ingest

REPO = Path(__file__).resolve().parents[1]


def test_sweep_options_refuse_repeated_out_of_range_and_empty_rates() -> None:
    for bad, needle in (([0.2, 0.2], "duplicate rates"), ([1.0], "less than 1"), ([], "at least 1")):
        with pytest.raises(ValidationError, match=needle):
            gal_figure1.SweepOptions(rates=bad)
    assert gal_figure1.SweepOptions().rates == [0.0, 0.2, 0.5, 0.8]


def test_the_cli_names_the_bad_option(tmp_path, capsys) -> None:
    assert gal_figure1.main(["--rates", "0.2", "0.2", "--out", str(tmp_path / "o")]) == 2
    assert "gradclean: error: options: rates: duplicate rates" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_epochs_must_leave_steps_after_gal_warm_up(tmp_path) -> None:
    params = parse_params({"method": {"gal": {"warmup_epochs": 6}}})
    with pytest.raises(ConfigError, match=r"--epochs: 6 leaves no step.*warmup_epochs: 6"):
        gal_figure1.sweep(params, gal_figure1.SweepOptions(epochs=6), tmp_path)


def test_the_paper_presets_validate() -> None:
    for name in ("gal_cifar10.yaml", "gss_cifar10.yaml"):
        load_params(REPO / "experiments" / name)


@pytest.mark.train
def test_figure1_writes_its_table_summary_and_figure(tmp_path) -> None:
    raw = {
        "data": {"source": "digits", "max_per_split": 120},
        "train": {"model_kwargs": {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1]}, "batch_size": 16},
        "run": {"progress": False},
        "method": {"gal": {"warmup_epochs": 1}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    run_ingest(parse_params(raw), tmp_path / "ingested")
    out = tmp_path / "fig1"
    argv = ["--params", str(tmp_path / "params.yaml"), "--ingested", str(tmp_path / "ingested")]
    argv += ["--rates", "0", "0.6", "--epochs", "3", "--max-samples", "all", "--out", str(out)]
    assert gal_figure1.main(argv) == 0
    table = pl.read_csv(out / "agreement.csv")
    assert tuple(table.columns) == gal_figure1.COLUMNS
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"0", "0.6"} and summary["0.6"]["realised_rate"] > 0.4
    assert summary["0"]["gate_ratio"] > summary["0.6"]["gate_ratio"]  # noise pulls the gradients apart
    assert (out / "figure1.png").stat().st_size > 1000
