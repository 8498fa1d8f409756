"""Near duplicates and outliers (cleanlab Datalab on the embeddings): found where planted, the stage's
table, and the train/test leak count."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.config import DatalabParams
from pipeline.datalab import find_data_issues, summarise
from pipeline.schemas import DATALAB
from pipeline.validation import validate


def _planted(n: int = 200, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d))
    x = (centres[np.arange(n) % 3] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)  # three clusters
    x[10] = x[3] + 1e-5  # a near-exact copy of row 3
    x[150] = x[20]  # an exact copy, across the train/test boundary below
    x[7] = rng.normal(size=d) * 3  # in none of the clusters
    return x


def test_planted_duplicates_and_outlier_are_found():
    x = _planted()
    ids = np.arange(1000, 1200)
    got = find_data_issues(x, ids, DatalabParams(k=5))
    dup = set(got.filter(pl.col("is_near_duplicate"))["sample_id"].to_list())
    assert dup == {1003, 1010, 1020, 1150}
    row = got.filter(pl.col("sample_id") == 1010).row(0, named=True)
    assert row["near_duplicate_set"] == [1003] and row["nearest_sample_id"] == 1003
    assert got["outlier_score"].arg_min() == 7 and got["is_outlier"][7]
    assert got.filter(pl.col("sample_id") == 1003)["near_duplicate_score"][0] < 0.01
    split = ["train"] * 120 + ["test"] * 80
    frame = got.insert_column(1, pl.Series("split", split))
    validate(frame, DATALAB, 2, "datalab test frame")
    assert summarise(frame) == {
        "near_duplicates": 4,
        "near_duplicate_sets": 2,
        "train_test_pairs": 1,  # 20 (train) and 150 (test)
        "outliers": int(got["is_outlier"].sum()),
    }


def test_too_few_rows_for_k_is_refused():
    with pytest.raises(ValueError, match="datalab.k: 10 neighbours need more than 10 samples"):
        find_data_issues(np.zeros((5, 3), np.float32), np.arange(5), DatalabParams())
