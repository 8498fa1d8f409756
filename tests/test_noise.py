"""Synthetic label noise (`pipeline.noise`): rates, matrices, maps, seeding, NOISY table and report."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from conftest import CIFAR10_NAMES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import NoiseParams
from pipeline.errors import ConfigError, DataError
from pipeline.noise import ASYM_MAPS, apply_noise, expected_matrix, inject, noise_report, realised_matrix
from pipeline.noise.inject import CIFAR100_COARSE
from pipeline.schemas import NOISY

N = 20_000
K = 10


def _labels(n: int = N, k: int = K, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, size=n)


def _tol(p: float, n: int, sigmas: float = 5.0) -> float:
    """Binomial tolerance on a proportion: `sigmas` standard errors plus a little slack for tiny p."""
    return sigmas * math.sqrt(max(p * (1 - p), 1e-4) / n) + 1.0 / n


# ------------------------------------------------------------------------------------------ symmetric
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_symmetric_exclude_true_rate(rate: float) -> None:
    true = _labels()
    given = inject(true, "symmetric", rate, K, seed=1)
    assert given.dtype == np.int64 and given.shape == true.shape
    assert given.min() >= 0 and given.max() < K
    assert abs(np.mean(given != true) - rate) <= _tol(rate, N)


@pytest.mark.parametrize("rate", [0.2, 0.5, 1.0])
def test_symmetric_include_true_rate_is_r_times_k_minus_1_over_k(rate: float) -> None:
    true = _labels()
    given = inject(true, "symmetric", rate, K, seed=2, exclude_true=False)
    expected = rate * (K - 1) / K
    assert abs(np.mean(given != true) - expected) <= _tol(expected, N)


@pytest.mark.parametrize("exclude_true", [True, False])
def test_symmetric_realised_matrix_matches_expected(exclude_true: bool) -> None:
    true = _labels()
    given = inject(true, "symmetric", 0.45, K, seed=3, exclude_true=exclude_true)
    real = realised_matrix(true, given, K)
    exp = expected_matrix("symmetric", 0.45, K, exclude_true=exclude_true)
    np.testing.assert_allclose(real.sum(1), 1.0)
    np.testing.assert_allclose(exp.sum(1), 1.0)
    np.testing.assert_allclose(real, exp, atol=0.05)  # ~2000 per row: 5 sigma of the diagonal is ~0.055
    if exclude_true:
        assert np.all(given[given != true] != true[given != true])
        np.testing.assert_allclose(np.diag(exp), 0.55)


def test_symmetric_flips_spread_over_all_other_classes() -> None:
    true = np.zeros(N, dtype=np.int64)
    given = inject(true, "symmetric", 1.0, K, seed=4)
    counts = np.bincount(given, minlength=K)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] / N - 1 / (K - 1)) < _tol(1 / (K - 1), N))


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3333, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_symmetric_exact_flips_exactly_round_rn(rate: float, n: int) -> None:
    true = _labels(n)
    given = inject(true, "symmetric", rate, K, seed=5, exact=True)
    assert int(np.sum(given != true)) == round(rate * n)


def test_pairflip_exact() -> None:
    true = _labels(999)
    given = inject(true, "pairflip", 0.25, K, seed=5, exact=True)
    assert int(np.sum(given != true)) == round(0.25 * 999)


def test_same_seed_reproduces_different_seed_differs() -> None:
    true = _labels(5000)
    for kind in ("symmetric", "pairflip", "asymmetric"):
        a = inject(true, kind, 0.4, K, seed=11, asym_map="cifar10")
        b = inject(true, kind, 0.4, K, seed=11, asym_map="cifar10")
        c = inject(true, kind, 0.4, K, seed=12, asym_map="cifar10")
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_inject_does_not_touch_global_rng_or_input() -> None:
    true = _labels(100)
    copy = true.copy()
    np.random.seed(0)
    before = np.random.random()
    np.random.seed(0)
    inject(true, "symmetric", 0.5, K, seed=0)
    assert np.random.random() == before
    np.testing.assert_array_equal(true, copy)


# --------------------------------------------------------------------------------------- pairflip
def test_pairflip_goes_to_next_class() -> None:
    true = _labels()
    given = inject(true, "pairflip", 0.3, K, seed=6)
    flipped = given != true
    np.testing.assert_array_equal(given[flipped], (true[flipped] + 1) % K)
    assert abs(flipped.mean() - 0.3) <= _tol(0.3, N)
    assert np.any(true[flipped] == K - 1)  # wraps K-1 -> 0
    np.testing.assert_allclose(
        realised_matrix(true, given, K), expected_matrix("pairflip", 0.3, K), atol=0.05
    )
    exp = expected_matrix("pairflip", 0.3, K)
    for i in range(K):
        assert exp[i, (i + 1) % K] == pytest.approx(0.3) and exp[i, i] == pytest.approx(0.7)


# ------------------------------------------------------------------------------------- asymmetric
def test_asymmetric_digits_only_flips_mapped_classes() -> None:
    m = ASYM_MAPS["digits"]
    assert m == {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
    true = _labels()
    given = inject(true, "asymmetric", 0.4, K, seed=7, asym_map="digits")
    flipped = given != true
    assert set(np.unique(true[flipped])) == set(m)
    for a, b in m.items():
        sel = true == a
        assert np.all(given[sel & flipped] == b)
        assert abs(flipped[sel].mean() - 0.4) <= _tol(0.4, int(sel.sum()))
    unmapped = ~np.isin(true, list(m))
    np.testing.assert_array_equal(given[unmapped], true[unmapped])
    real = realised_matrix(true, given, K)
    np.testing.assert_allclose(real, expected_matrix("asymmetric", 0.4, K, asym_map="digits"), atol=0.06)


def test_asymmetric_exact_counts_only_eligible_samples() -> None:
    true = np.array([0, 1, 2, 2, 2, 2, 3, 3, 4, 4])
    given = inject(true, "asymmetric", 0.5, K, seed=0, exact=True, asym_map="digits")
    assert int(np.sum(given != true)) == 3  # round(0.5 * 6 eligible)
    assert set(given[given != true]) <= {7, 8}


def test_cifar10_map_by_class_name() -> None:
    name = {v: i for i, v in enumerate(CIFAR10_NAMES)}
    pairs = {(CIFAR10_NAMES[a], CIFAR10_NAMES[b]) for a, b in ASYM_MAPS["cifar10"].items()}
    assert pairs == {
        ("truck", "automobile"),
        ("bird", "airplane"),
        ("deer", "horse"),
        ("cat", "dog"),
        ("dog", "cat"),
    }
    true = np.full(1000, name["truck"])
    given = inject(true, "asymmetric", 1.0, K, seed=0, asym_map="cifar10")
    assert np.all(given == name["automobile"])


def test_cifar100_coarse_map_has_20_superclasses_of_5() -> None:
    assert CIFAR100_COARSE.shape == (100,)
    assert sorted(set(CIFAR100_COARSE.tolist())) == list(range(20))
    assert np.all(np.bincount(CIFAR100_COARSE) == 5)
    # spot checks against the official meta: aquatic mammals and fish
    assert set(np.flatnonzero(CIFAR100_COARSE == 0)) == {4, 30, 55, 72, 95}
    assert set(np.flatnonzero(CIFAR100_COARSE == 1)) == {1, 32, 67, 73, 91}
    assert CIFAR100_COARSE[0] == 4  # apple: fruit and vegetables


def test_cifar100_builtin_map_stays_inside_superclass() -> None:
    m = ASYM_MAPS["cifar100"]
    assert sorted(m) == list(range(100)) and sorted(m.values()) == list(range(100))  # a permutation
    for a, b in m.items():
        assert a != b and CIFAR100_COARSE[a] == CIFAR100_COARSE[b]
    assert [m[4], m[30], m[55], m[72], m[95]] == [30, 55, 72, 95, 4]  # next inside, cyclic
    true = _labels(N, 100, seed=8)
    given = inject(true, "asymmetric", 0.5, 100, seed=8, asym_map="cifar100")
    np.testing.assert_array_equal(CIFAR100_COARSE[given], CIFAR100_COARSE[true])
    assert abs(np.mean(given != true) - 0.5) <= _tol(0.5, N)


def test_custom_map() -> None:
    true = _labels(2000)
    given = inject(true, "asymmetric", 1.0, K, seed=0, asym_map={0: 9, 4: 2})
    np.testing.assert_array_equal(given, np.where(true == 0, 9, np.where(true == 4, 2, true)))
    exp = expected_matrix("asymmetric", 0.3, K, asym_map={0: 9})
    assert exp[0, 9] == pytest.approx(0.3) and exp[0, 0] == pytest.approx(0.7)


@pytest.mark.parametrize("bad", [{0: 10}, {10: 0}, {-1: 3}, {2: -2}])
def test_custom_map_out_of_range_is_config_error(bad: dict[int, int]) -> None:
    with pytest.raises(ConfigError, match="noise.asym_map"):
        inject(_labels(10), "asymmetric", 0.5, K, seed=0, asym_map=bad)
    with pytest.raises(ConfigError, match="noise.asym_map"):
        expected_matrix("asymmetric", 0.5, K, asym_map=bad)


def test_builtin_map_too_big_for_k() -> None:
    with pytest.raises(ConfigError, match="noise.asym_map"):
        inject(_labels(10, 5), "asymmetric", 0.5, 5, seed=0, asym_map="cifar10")


def test_bad_rate_or_kind() -> None:
    with pytest.raises(ConfigError, match="noise.rate"):
        inject(_labels(10), "symmetric", 1.5, K, seed=0)
    with pytest.raises(ConfigError, match="noise.kind"):
        inject(_labels(10), "none", 0.5, K, seed=0)


def test_realised_matrix_empty_rows_stay_zero() -> None:
    m = realised_matrix(np.array([0, 0, 2]), np.array([0, 1, 2]), 3)
    np.testing.assert_allclose(m, [[0.5, 0.5, 0], [0, 0, 0], [0, 0, 1]])


# ------------------------------------------------------------------------------------------ hypothesis
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(500, 5000),
    k=st.integers(2, 30),
    rate=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["symmetric", "pairflip"]),
)
def test_property_realised_rate_within_binomial_tolerance(
    n: int, k: int, rate: float, seed: int, kind: str
) -> None:
    true = np.random.default_rng(seed).integers(0, k, size=n)
    given = inject(true, kind, rate, k, seed=seed)
    flips = int(np.sum(given != true))
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(flips - n * rate) <= 6 * sd + 1
    assert given.min() >= 0 and given.max() < k
    np.testing.assert_array_equal(given, inject(true, kind, rate, k, seed=seed))
    exact = inject(true, kind, rate, k, seed=seed, exact=True)
    assert int(np.sum(exact != true)) == round(rate * n)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**63 - 1),
    exclude_true=st.booleans(),
    asym=st.dictionaries(st.integers(0, 9), st.integers(0, 9), max_size=5),
)
def test_property_seed_reproduces(seed: int, exclude_true: bool, asym: dict[int, int]) -> None:
    true = _labels(300)
    for kind in ("symmetric", "asymmetric"):
        a = inject(true, kind, 0.6, K, seed=seed, exclude_true=exclude_true, asym_map=asym)
        b = inject(true, kind, 0.6, K, seed=seed, exclude_true=exclude_true, asym_map=asym)
        np.testing.assert_array_equal(a, b)
        if kind == "asymmetric":
            changed = a != true
            assert all(asym.get(int(t)) == int(g) for t, g in zip(true[changed], a[changed], strict=True))


# ------------------------------------------------------------------------------ apply_noise / report
def _ingested(labels: list[int], noisy: list[int | None] | None = None) -> pl.DataFrame:
    n = len(labels)
    return pl.DataFrame(
        {
            "sample_id": pl.Series(np.arange(100, 100 + n), dtype=pl.Int64),
            "label": pl.Series(labels, dtype=pl.Int32),
            "image": pl.Series([b"x"] * n, dtype=pl.Binary),
            "source_path": pl.Series([None] * n, dtype=pl.String),
            "noisy_label": pl.Series(noisy if noisy is not None else [None] * n, dtype=pl.Int32),
        }
    )


def test_apply_noise_none() -> None:
    df = _ingested([0, 1, 2, 1])
    out = apply_noise(df, 3, NoiseParams(kind="none"), seed=0)
    NOISY.check(out.to_arrow(), "noisy")
    assert out.columns == ["sample_id", "given_label", "true_label", "is_noisy"]
    assert out["sample_id"].to_list() == [100, 101, 102, 103]
    assert out["given_label"].to_list() == [0, 1, 2, 1]
    assert out["true_label"].null_count() == 4 and out["is_noisy"].null_count() == 4
    rep = noise_report(out, 3, NoiseParams(kind="none"), ["a", "b", "c"])
    assert rep["kind"] == "none" and rep["requested_rate"] is None
    assert rep["realised_rate"] is None and rep["realised_matrix"] is None
    assert rep["num_samples"] == 4 and rep["class_names"] == ["a", "b", "c"]
    json.dumps(rep)


def test_apply_noise_real() -> None:
    df = _ingested([0, 1, 2, 1], noisy=[0, 2, 2, 0])
    p = NoiseParams(kind="real")
    out = apply_noise(df, 3, p, seed=0)
    NOISY.check(out.to_arrow(), "noisy")
    assert out["given_label"].to_list() == [0, 2, 2, 0]
    assert out["true_label"].to_list() == [0, 1, 2, 1]
    assert out["is_noisy"].to_list() == [False, True, False, True]
    rep = noise_report(out, 3, p, ["a", "b", "c"])
    assert rep["requested_rate"] is None and rep["realised_rate"] == pytest.approx(0.5)
    assert rep["per_class_noise_rate"] == {"a": 0.0, "b": 1.0, "c": 0.0}
    assert rep["realised_matrix"][1] == [0.5, 0.0, 0.5]
    assert "expected_matrix" not in rep
    json.dumps(rep)


def test_apply_noise_real_without_noisy_labels() -> None:
    with pytest.raises(DataError, match="data.noisy_labels"):
        apply_noise(_ingested([0, 1]), 2, NoiseParams(kind="real"), seed=0)


def test_apply_noise_real_with_a_missing_noisy_label_names_sample_id() -> None:
    with pytest.raises(DataError, match="sample_id 102"):
        apply_noise(_ingested([0, 1, 1], noisy=[0, 1, None]), 2, NoiseParams(kind="real"), seed=0)


def test_apply_noise_symmetric_and_report() -> None:
    labels = (np.arange(4000) % K).tolist()
    p = NoiseParams(kind="symmetric", rate=0.3)
    out = apply_noise(_ingested(labels), K, p, seed=9)
    NOISY.check(out.to_arrow(), "noisy")
    assert out["true_label"].to_list() == labels
    np.testing.assert_array_equal(
        out["is_noisy"].to_numpy(), out["given_label"].to_numpy() != out["true_label"].to_numpy()
    )
    np.testing.assert_array_equal(
        out["given_label"].to_numpy(), inject(np.array(labels), "symmetric", 0.3, K, seed=9)
    )
    assert out.equals(apply_noise(_ingested(labels), K, p, seed=9))
    assert not out.equals(apply_noise(_ingested(labels), K, p, seed=10))
    rep = noise_report(out, K, p, CIFAR10_NAMES)
    assert rep["kind"] == "symmetric" and rep["requested_rate"] == 0.3
    assert rep["exclude_true"] is True and rep["exact"] is False
    assert rep["realised_rate"] == pytest.approx(out["is_noisy"].mean())
    assert abs(rep["realised_rate"] - 0.3) <= _tol(0.3, 4000)
    exp, real = np.array(rep["expected_matrix"]), np.array(rep["realised_matrix"])
    assert exp.shape == real.shape == (K, K)
    np.testing.assert_allclose(real.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(real, exp, atol=0.1)
    assert set(rep["per_class_noise_rate"]) == set(CIFAR10_NAMES)
    assert rep["estimate"] is None
    json.loads(json.dumps(rep))


def test_noise_report_asymmetric_lists_map() -> None:
    p = NoiseParams(kind="asymmetric", rate=0.5, asym_map="cifar10")
    out = apply_noise(_ingested((np.arange(500) % K).tolist()), K, p, seed=0)
    rep = noise_report(out, K, p, CIFAR10_NAMES)
    assert rep["asym_map"] == {"9": 1, "2": 0, "4": 7, "3": 5, "5": 3}
    assert rep["per_class_noise_rate"]["frog"] == 0.0
    json.dumps(rep)
