"""Cleaning policy (`pipeline.clean`): per-method proposals, majority vote, the CLEANED table."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.clean import clean_labels, propose
from pipeline.errors import DataError
from pipeline.schemas import CLEANED
from pipeline.validation import validate

NAMES = ["cat", "dog", "eel", "fox"]
K = len(NAMES)
REL, DROP = 0.8, 0.5
KEEP_, RELABEL_, DROP_ = 0, 1, 2


def scores(
    method: str,
    given: list[int],
    pseudo: list[int],
    conf: list[float],
    noise: list[float],
    ids: list[int] | None = None,
) -> pl.DataFrame:
    """A SCORES frame; probs put `conf` on the pseudo label and spread the rest evenly."""
    n = len(given)
    ids = list(range(100, 100 + n)) if ids is None else ids
    probs = []
    for p, c in zip(pseudo, conf, strict=True):
        rest = (1.0 - c) / (K - 1)
        probs.append([c if j == p else rest for j in range(K)])
    return pl.DataFrame(
        {
            "sample_id": pl.Series(ids, dtype=pl.Int64),
            "method": [method] * n,
            "given_label": pl.Series(given, dtype=pl.Int32),
            "pseudo_label": pl.Series(pseudo, dtype=pl.Int32),
            "confidence": pl.Series(conf, dtype=pl.Float32),
            "noise_score": pl.Series(noise, dtype=pl.Float32),
            "is_flagged": [x >= 0.5 for x in noise],
            "probs": pl.Series(probs, dtype=pl.List(pl.Float32)),
            "grad_similarity": pl.Series([None] * n, dtype=pl.Float32),
        }
    )


def clean(frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return clean_labels(frames, NAMES, relabel_confidence=REL, drop_noise_score=DROP)


def row(frame: pl.DataFrame, sid: int) -> dict:
    return frame.filter(pl.col("sample_id") == sid).row(0, named=True)


# ---------------------------------------------------------------------------------------------- propose
def test_propose_relabel_only_when_pseudo_differs_and_confident() -> None:
    given = np.array([0, 0, 0, 0, 0, 0])
    pseudo = np.array([1, 1, 0, 1, 1, 0])
    conf = np.array([0.9, 0.8, 0.95, 0.79, 0.5, 0.3])
    noise = np.array([0.2, 0.1, 0.9, 0.6, 0.4, 0.5])
    out = propose(given, pseudo, conf, noise, relabel_confidence=REL, drop_noise_score=DROP)
    # 0: confident different pseudo; 1: exactly at the threshold; 2: same pseudo, high noise -> drop;
    # 3: just below the threshold with high noise -> drop, never relabel; 4: below both -> keep;
    # 5: pseudo == given at the drop threshold -> drop
    assert out.tolist() == [RELABEL_, RELABEL_, DROP_, DROP_, KEEP_, DROP_]


def test_propose_never_relabels_below_threshold() -> None:
    given = np.zeros(50, dtype=np.int64)
    pseudo = np.ones(50, dtype=np.int64)
    conf = np.linspace(0.0, 0.799, 50)
    out = propose(given, pseudo, conf, np.zeros(50), relabel_confidence=REL, drop_noise_score=DROP)
    assert (out == KEEP_).all()
    out = propose(given, pseudo, conf, np.ones(50), relabel_confidence=REL, drop_noise_score=DROP)
    assert (out == DROP_).all()


def test_propose_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="pseudo has length 2"):
        propose(
            np.zeros(3), np.zeros(2), np.zeros(3), np.zeros(3), relabel_confidence=REL, drop_noise_score=DROP
        )
    with pytest.raises(ValueError, match="NaN"):
        propose(
            np.zeros(2),
            np.zeros(2),
            np.array([0.5, np.nan]),
            np.zeros(2),
            relabel_confidence=REL,
            drop_noise_score=DROP,
        )


# ------------------------------------------------------------------------------------------ one method
def test_single_method_keep_relabel_drop() -> None:
    s = scores(
        "ce",
        given=[0, 1, 2, 3, 0],
        pseudo=[1, 1, 0, 1, 0],
        conf=[0.9, 0.6, 0.7, 0.85, 0.45],
        noise=[0.9, 0.1, 0.8, 0.3, 0.55],
    )
    out = clean({"ce": s})
    assert out["sample_id"].to_list() == [100, 101, 102, 103, 104]
    assert out["action"].to_list() == ["relabel", "keep", "drop", "relabel", "drop"]
    assert out["cleaned_label"].to_list() == [1, 1, None, 1, None]
    assert out["cleaned_class"].to_list() == ["dog", "dog", None, "dog", None]
    assert out["given_class"].to_list() == ["cat", "dog", "eel", "fox", "cat"]
    assert out["methods_agreeing"].to_list() == [1] * 5
    # relabel: confidence of the pseudo label; drop: noise_score; keep: 1 - noise_score
    assert out["confidence"].to_list() == pytest.approx([0.9, 0.9, 0.8, 0.85, 0.55], abs=1e-6)
    r = row(out, 100)["reason"]
    assert "ce" in r and "'dog'" in r and "'cat'" in r and "0.90" in r
    r = row(out, 102)["reason"]
    assert "'eel'" in r and "wrong" in r and "0.80" in r
    assert "'dog'" in row(out, 101)["reason"]
    validate(out, CLEANED, K, "cleaned/labels.parquet")


def test_threshold_compared_on_the_stored_float32() -> None:
    """A confidence stored as float32 0.7 meets a 0.7 threshold, in `propose` and in `clean_labels` alike."""
    s = scores("ce", given=[0], pseudo=[1], conf=[0.7], noise=[0.1])
    c32 = s["confidence"].to_numpy()
    assert propose(
        np.array([0]),
        np.array([1]),
        c32,
        np.array([0.1], dtype=np.float32),
        relabel_confidence=0.7,
        drop_noise_score=DROP,
    ).tolist() == [RELABEL_]
    out = clean_labels({"ce": s}, NAMES, relabel_confidence=0.7, drop_noise_score=DROP)
    assert out["action"].to_list() == ["relabel"]


def test_result_schema_and_types() -> None:
    s = scores("ce", given=[0, 1], pseudo=[1, 1], conf=[0.9, 0.9], noise=[0.9, 0.1])
    out = clean({"ce": s})
    assert out.columns == [c.name for c in CLEANED.columns]
    CLEANED.check(out.to_arrow(), "cleaned")
    assert out.schema["cleaned_label"] == pl.Int32 and out.schema["confidence"] == pl.Float32


# ------------------------------------------------------------------------------------- majority of 3
def _three() -> dict[str, pl.DataFrame]:
    given = [0, 0, 0, 0, 0, 0]
    return {
        # sample 100: a, b relabel to dog -> relabel dog
        # sample 101: a -> dog, b -> eel (both confident), c keeps -> 2 say wrong, disagree -> drop
        # sample 102: a -> dog, b drop, c keep -> drop
        # sample 103: only a says wrong -> keep
        # sample 104: all three relabel to fox -> relabel with 3 agreeing
        # sample 105: a -> dog, b -> dog but below threshold (high noise) , c -> dog confident -> relabel dog
        "a": scores(
            "a", given, [1, 1, 1, 1, 3, 1], [0.9, 0.9, 0.95, 0.9, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
        ),
        "b": scores(
            "b", given, [1, 2, 0, 0, 3, 1], [0.85, 0.9, 0.4, 0.6, 0.8, 0.7], [0.8, 0.9, 0.7, 0.2, 0.8, 0.9]
        ),
        "c": scores(
            "c", given, [0, 0, 0, 0, 3, 1], [0.6, 0.7, 0.7, 0.8, 0.99, 0.82], [0.3, 0.1, 0.2, 0.1, 0.9, 0.9]
        ),
    }


def test_majority_vote_of_three() -> None:
    out = clean(_three())
    assert out["action"].to_list() == ["relabel", "drop", "drop", "keep", "relabel", "relabel"]
    assert out["cleaned_label"].to_list() == [1, None, None, 0, 3, 1]
    assert out["cleaned_class"].to_list() == ["dog", None, None, "cat", "fox", "dog"]
    assert out["methods_agreeing"].to_list() == [2, 2, 2, 2, 3, 2]
    conf = out["confidence"].to_list()
    assert conf[0] == pytest.approx((0.9 + 0.85) / 2, abs=1e-6)  # relabel: mean confidence of a, b
    assert conf[1] == pytest.approx((0.9 + 0.9) / 2, abs=1e-6)  # drop: mean noise_score of a, b
    assert conf[2] == pytest.approx((0.9 + 0.7) / 2, abs=1e-6)
    assert conf[3] == pytest.approx(((1 - 0.2) + (1 - 0.1)) / 2, abs=1e-6)  # keep: mean 1 - noise of b, c
    assert conf[4] == pytest.approx((0.9 + 0.8 + 0.99) / 3, abs=1e-6)
    assert conf[5] == pytest.approx(
        (0.9 + 0.82) / 2, abs=1e-6
    )  # b's 0.7 is below the threshold: not agreeing
    reasons = out["reason"].to_list()
    assert reasons[0].startswith("2/3 (a, b)") and "'dog'" in reasons[0] and "'cat'" in reasons[0]
    assert reasons[1].startswith("2/3 (a, b)") and "'cat'" in reasons[1] and "wrong" in reasons[1]
    assert reasons[3].startswith("2/3 (b, c)") and "accept 'cat'" in reasons[3]
    assert reasons[4].startswith("3/3 (a, b, c)") and "'fox'" in reasons[4]
    assert reasons[5].startswith("2/3 (a, c)")
    validate(out, CLEANED, K, "cleaned/labels.parquet")


def test_tie_between_two_methods_keeps() -> None:
    given = [0, 0, 0]
    a = scores("a", given, [1, 1, 1], [0.9, 0.9, 0.9], [0.9, 0.9, 0.9])
    b = scores("b", given, [0, 2, 0], [0.9, 0.9, 0.9], [0.1, 0.9, 0.9])
    out = clean({"a": a, "b": b})
    # 100: relabel vs keep -> tie -> keep; 101: both wrong, different targets -> drop; 102: relabel vs drop ->
    # both wrong but only one relabel vote -> drop
    assert out["action"].to_list() == ["keep", "drop", "drop"]
    assert out["methods_agreeing"].to_list() == [1, 2, 2]
    assert out["reason"][0].startswith("1/2 (b)")


def test_idempotent_and_independent_of_row_order() -> None:
    frames = _three()
    first = clean(frames)
    assert clean(frames).equals(first)
    shuffled = {m: f.sample(fraction=1.0, shuffle=True, seed=3) for m, f in frames.items()}
    assert not shuffled["a"]["sample_id"].equals(frames["a"]["sample_id"])
    assert clean(shuffled).equals(first)
    assert clean(_three()).equals(first)


# ------------------------------------------------------------------------------------------ bad input
def test_mismatched_sample_ids_name_the_method_file() -> None:
    a = scores("a", [0, 1], [0, 1], [0.9, 0.9], [0.1, 0.1])
    b = scores("gal", [0, 1], [0, 1], [0.9, 0.9], [0.1, 0.1], ids=[100, 999])
    with pytest.raises(DataError, match=r"scores/gal\.parquet: sample ids differ from scores/a\.parquet"):
        clean({"a": a, "gal": b})
    c = scores("gss", [0], [0], [0.9], [0.1])
    with pytest.raises(DataError, match=r"scores/gss\.parquet"):
        clean({"a": a, "gss": c})


def test_mismatched_given_labels_name_the_method_file_and_sample() -> None:
    a = scores("a", [0, 1, 2], [0, 1, 2], [0.9] * 3, [0.1] * 3)
    b = scores("jocor", [0, 1, 3], [0, 1, 3], [0.9] * 3, [0.1] * 3)
    with pytest.raises(DataError, match=r"scores/jocor\.parquet: given_label differs .* sample_id 102"):
        clean({"a": a, "jocor": b})


def test_no_score_tables() -> None:
    with pytest.raises(DataError, match="no score tables"):
        clean({})


# ------------------------------------------------------------------------------------------- property
@st.composite
def _cases(draw):
    n = draw(st.integers(1, 12))
    m = draw(st.integers(1, 3))
    given = draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n))
    unit = st.floats(0.0, 1.0, width=32)
    frames = {}
    for j in range(m):
        pseudo = draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n))
        conf = draw(st.lists(unit, min_size=n, max_size=n))
        noise = draw(st.lists(unit, min_size=n, max_size=n))
        frames[f"m{j}"] = scores(f"m{j}", given, pseudo, conf, noise, ids=list(range(n - 1, -1, -1)))
    rel = draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.8, 0.95, 1.0]) | unit)
    drop = draw(unit)
    return frames, rel, drop


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_property_policy_invariants(case) -> None:
    frames, rel, drop = case
    out = clean_labels(frames, NAMES, relabel_confidence=rel, drop_noise_score=drop)
    first = next(iter(frames.values()))
    # every sample appears exactly once, sorted by sample_id
    assert out["sample_id"].to_list() == sorted(first["sample_id"].to_list())
    thr = np.float32(rel)
    m = len(frames)
    for r in out.iter_rows(named=True):
        votes = [f.filter(pl.col("sample_id") == r["sample_id"]).row(0, named=True) for f in frames.values()]
        if r["action"] == "relabel":
            assert r["cleaned_label"] != r["given_label"]
            # a strict majority proposed this target with confidence at or above the threshold
            backing = [
                v
                for v in votes
                if v["pseudo_label"] == r["cleaned_label"] and np.float32(v["confidence"]) >= thr
            ]
            assert len(backing) > m / 2 and len(backing) == r["methods_agreeing"]
            assert np.float32(r["confidence"]) >= thr
        elif r["action"] == "drop":
            assert r["cleaned_label"] is None and r["cleaned_class"] is None
        else:
            assert r["cleaned_label"] == r["given_label"]
        assert 1 <= r["methods_agreeing"] <= m
        assert 0.0 <= r["confidence"] <= 1.0
