"""`bench/pool_paired_runs.py`: the pooled aggre retrain figures docs/results.md quotes come out of the
committed pairs files, and the paired statistics behave."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_script(name: str):
    """The bench script `bench/<name>.py` as a module (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pool = bench_script("pool_paired_runs")


OLD, MARGIN = "aggre_retrain_pairs.csv", "aggre_retrain_pairs_margin.csv"  # knn's old and current score
# pairs file, seeds below which to keep (None: all), runs, (mean, se, sd) in points, ahead/behind/level, p
QUOTED = {
    "old score, first 53": (OLD, 52, 53, (0.9, 0.4, 2.6), (31, 19, 3), (0.012, 0.023)),
    "old score, all 73": (OLD, None, 73, (1.0, 0.3, 2.6), (45, 25, 3), (0.001, 0.003)),
    "current score, first 40": (MARGIN, 72, 40, (0.5, 0.4, 2.4), (25, 13, 2), (0.165, 0.168)),
    "current score, all 60": (MARGIN, None, 60, (0.5, 0.3, 2.4), (39, 18, 3), (0.128, 0.106)),
}


@pytest.mark.parametrize("name", QUOTED)
def test_the_committed_pairs_give_the_figures_docs_quote(name):
    file, below_seed, n, spread, counts, p_values = QUOTED[name]
    runs = pool.read_pairs(pool.PAIRS.with_name(file))  # as the script reads them
    if below_seed is not None:  # the runs before a later extension of the same file
        runs = runs.filter(pl.col("seed") < below_seed)
    assert runs.height == n and not runs.select(["host", "seed"]).is_duplicated().any()
    s = pool.paired_summary(runs["noisy_labels"].to_numpy(), runs["cleaned_labels"].to_numpy())
    assert (round(s["mean"], 1), round(s["se"], 1), round(s["sd"], 1)) == spread
    assert (s["ahead"], s["behind"], s["level"]) == counts
    assert (round(s["t_p"], 3), round(s["wilcoxon_p"], 3)) == p_values


def test_against_takes_the_other_cleaning_as_baseline_at_the_shared_host_and_seed():
    def runs(rows):
        return pl.DataFrame(
            rows, schema=["seed", "host", "noisy_labels", "cleaned_labels", "source"], orient="row"
        )

    mine = runs([(1, "a", 0.60, 0.65, "s"), (2, "a", 0.61, 0.66, "s"), (1, "b", 0.62, 0.63, "s")])
    other = runs([(2, "a", 0.61, 0.70, "t"), (1, "a", 0.60, 0.64, "t"), (3, "a", 0.5, 0.5, "t")])
    out = pool.against(mine, other)
    assert out.select("seed", "host").rows() == [(1, "a"), (2, "a")]  # host b and seed 3 have no partner
    assert out["noisy_labels"].to_list() == [0.64, 0.70] and out["cleaned_labels"].to_list() == [0.65, 0.66]


def test_swapping_the_two_sides_negates_the_gain_and_keeps_the_p_values():
    rng = np.random.default_rng(0)
    noisy = rng.uniform(0.6, 0.7, 12).round(3)
    cleaned = (noisy + rng.normal(0.01, 0.02, 12)).round(3)
    a, b = pool.paired_summary(noisy, cleaned), pool.paired_summary(cleaned, noisy)
    assert a["mean"] == pytest.approx(-b["mean"]) and a["mean"] != 0
    assert (a["ahead"], a["behind"]) == (b["behind"], b["ahead"])
    assert a["t_p"] == pytest.approx(b["t_p"]) and a["wilcoxon_p"] == pytest.approx(b["wilcoxon_p"])


def test_unpaired_arrays_are_refused():
    with pytest.raises(ValueError, match="equal 1-d arrays"):
        pool.paired_summary(np.zeros(5), np.zeros(4))


def test_seed_ranges_name_consecutive_runs():
    assert pool.seed_ranges(pl.Series([7, 0, 6, 8, 32])) == ["0", "6-8", "32"]


def test_identical_runs_give_no_gain_and_p_values_of_one():
    acc = np.array([0.61, 0.64, 0.66, 0.63])
    s = pool.paired_summary(acc, acc.copy())
    assert (s["mean"], s["se"], s["level"]) == (0.0, 0.0, 4)
    assert (s["t_p"], s["wilcoxon_p"]) == (1.0, 1.0)


def test_retrain_rows_reports_the_same_paired_gain_in_accuracy_units():
    rows = bench_script("bench_retrain_rows")
    base, values = [0.650, 0.640, 0.662], [0.660, 0.655, 0.662]  # gains 0.010, 0.015, 0.000
    assert rows.paired(values, base) == "+0.008 ± 0.004"
