"""Embedding detectors (knn, probe): behaviour on features with planted label errors, purity, input
checks, and a valid SCORES table from every registered detector."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import clustered_features
from sklearn.metrics import f1_score, roc_auc_score

from pipeline.detectors import DETECTORS, DetectorInput
from pipeline.detectors.base import label_quality, rank_flags
from pipeline.detectors.knn import (
    KnnOptions,
    detect_knn,
    ivf_lists_for,
    make_searcher,
    neighbours,
    vote_shares,
)
from pipeline.detectors.probe import probe_oof
from pipeline.methods.base import score_table
from pipeline.schemas import SCORES
from pipeline.validation import validate


def _input(rate: float = 0.3, seed: int = 0) -> tuple[DetectorInput, np.ndarray]:
    x, given, truth = clustered_features(rate=rate, seed=seed)
    xt, _, yt = clustered_features(n=100, rate=0.0, seed=seed)
    return DetectorInput(x, given, xt, 4, seed=0), given != truth


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_finds_planted_label_errors_and_writes_valid_scores(name):
    data, noisy = _input()
    spec = DETECTORS[name]
    res = spec.detect(spec.options(), data)
    frame = score_table(
        name, np.arange(len(noisy)), data.labels, res.probs, noise_score=res.noise_score, flagged=res.flagged,
        flag_threshold=0.5, extra=res.extra,
    )  # fmt: skip
    validate(frame, SCORES.with_extra(spec.columns), 4, f"scores/{name}.parquet", rows=len(noisy))
    auroc = roc_auc_score(noisy, frame["noise_score"].to_numpy())
    f1 = f1_score(noisy, frame["is_flagged"].to_numpy())
    print(f"{name}: AUROC {auroc:.3f}, F1 {f1:.3f}")
    assert auroc > 0.95 and f1 > 0.85
    assert res.test_probs.shape == (len(data.test), 4)
    assert set(res.extra) == {c.name for c in spec.columns}
    again = spec.detect(spec.options(), data)  # pure: same input, same output
    assert np.array_equal(again.probs, res.probs) and np.array_equal(again.flagged, res.flagged)


def test_clean_labels_give_few_flags():
    data, _ = _input(rate=0.0)
    for name, spec in DETECTORS.items():
        assert spec.detect(spec.options(), data).flagged.mean() < 0.05, name


def test_probe_estimate_of_the_noise_rate_is_close():
    from pipeline.noise.estimate import estimate_noise

    data, noisy = _input(rate=0.35, seed=1)
    oof, accs, c = probe_oof(data.train, data.labels, num_classes=4, folds=5, C="auto", seed=0)
    est = estimate_noise(data.labels, oof.astype(float), num_classes=4)["rate"]
    assert abs(est - noisy.mean()) < 0.05 and c in (0.3, 1.0, 3.0, 10.0)
    assert all(0 <= a <= 1 for a in accs) and len(accs) == 5


def test_neighbours_exclude_the_row_itself_and_agree_across_backends():
    x, _, _ = clustered_features(n=200)
    idx = neighbours(x, x, 7, exclude_self=True)
    assert idx.shape == (200, 7) and not (idx == np.arange(200)[:, None]).any()
    pytest.importorskip("faiss")
    fidx = neighbours(x, x, 7, exclude_self=True, backend="faiss")
    assert (np.sort(fidx, 1) == np.sort(idx, 1)).mean() > 0.99  # ties may order differently


def test_ivf_backend_is_exact_when_it_visits_every_list_and_close_when_it_visits_few():
    pytest.importorskip("faiss")
    x, _, _ = clustered_features(n=2000, k=8)
    exact = neighbours(x, x, 10, exclude_self=True, backend="faiss")
    every = make_searcher(x, backend="faiss_ivf", ivf_lists=16, ivf_probe=16)
    assert (
        np.sort(neighbours(x, x, 10, exclude_self=True, search=every), 1) == np.sort(exact, 1)
    ).mean() > 0.99
    few = neighbours(x, x, 10, exclude_self=True, search=make_searcher(x, backend="faiss_ivf", ivf_probe=1))
    recall = np.mean([len(np.intersect1d(a, b)) for a, b in zip(few, exact, strict=True)]) / 10
    assert 0.3 < recall < 1.0  # 1 of ivf_lists_for(2000) = 45 lists: approximate, not exact
    assert ivf_lists_for(2000) == 45 and ivf_lists_for(10) == 1 and ivf_lists_for(10**6) == 1000


def test_auto_backend_switches_to_ivf_and_keeps_the_flags():
    pytest.importorskip("faiss")
    data, noisy = _input()
    exact = detect_knn(KnnOptions(backend="sklearn"), data)
    ivf = detect_knn(KnnOptions(ivf_from=100, ivf_lists=4, ivf_probe=4), data)  # 400 rows: IVF, every list
    assert np.array_equal(ivf.flagged, exact.flagged) and np.allclose(ivf.probs, exact.probs)
    with pytest.raises(Exception, match="unknown backend"):
        make_searcher(data.train, backend="annoy")


def test_vote_shares_and_rank_flags_are_pure_and_exact():
    shares = vote_shares(np.array([[0, 0, 1], [2, 2, 2]]), 3)
    assert (
        np.allclose(shares.sum(1), 1)
        and shares[0].argmax() == 0
        and shares[1, 2] == pytest.approx((3 + 1 / 3) / 4)
    )
    assert rank_flags(np.array([0.9, 0.1, 0.5, 0.1]), 2).tolist() == [False, True, False, True]


def test_knn_noise_score_follows_its_scoring_option():
    """Normalized margin: a label out-voted by another class scores as wrong, a plurality label below half
    of the votes does not; self_confidence is 1 - the given class's vote share."""
    shares, given = np.array([[0.45, 0.30, 0.25], [0.45, 0.30, 0.25]]), np.array([0, 1])
    margin = 1 - label_quality(given, shares, scoring="normalized_margin")
    assert margin == pytest.approx([0.425, 0.575])  # (1 - (p_given - p_best_other + 1) / 2)
    assert 1 - label_quality(given, shares, scoring="self_confidence") == pytest.approx([0.55, 0.70])
    data, noisy = _input()
    default, plain = detect_knn(KnnOptions(), data), detect_knn(KnnOptions(scoring="self_confidence"), data)
    labels = np.asarray(data.labels)
    assert np.allclose(plain.noise_score, 1 - default.probs[np.arange(len(labels)), labels], atol=1e-6)
    assert np.allclose(
        default.noise_score, 1 - label_quality(labels, default.probs, scoring="normalized_margin")
    )
    assert np.array_equal(default.flagged, plain.flagged) and np.array_equal(default.probs, plain.probs)
    assert roc_auc_score(noisy, default.noise_score) > 0.95


def test_probe_input_checks():
    x, given, _ = clustered_features(n=40)
    with pytest.raises(ValueError, match="40 feature rows for 39 labels"):
        probe_oof(x, given[:39], num_classes=4, folds=2, C=1.0, seed=0)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"detector": {"nope": {}}}, "detector.nope: unknown detector 'nope'"),
        ({"detector": {"knn": {"k": 0}}}, "detector.knn: k: Input should be greater than or equal to 1"),
        ({"detectors": ["x"]}, "detectors: unknown detector 'x'"),
        ({"detectors": ["knn", "knn"]}, "detectors: a name is listed twice"),
        ({"clean": {"methods": ["probe"]}}, "clean.methods: ['probe'] are not in `methods` or `detectors`"),
    ],
)
def test_detector_params_are_checked_by_name(raw, message):
    from pipeline.errors import ConfigError
    from pipeline.params import parse_params

    with pytest.raises(ConfigError) as e:
        parse_params(raw)
    assert message in str(e.value)


@pytest.fixture
def spawn_start_method():
    """The default multiprocessing start method set to `spawn` (as a CUDA program or Python 3.14+ sets it)
    for one test, then restored."""
    import multiprocessing

    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    yield
    multiprocessing.set_start_method(before, force=True)


def test_cleanlab_flagging_works_where_the_start_method_is_not_fork(spawn_start_method):
    """knn and probe with `flag: cleanlab`, and the `cl` method, all call cleanlab's find_label_issues; its
    worker pool shares data through globals that only forked workers inherit, so they must not start one."""
    import torch
    from helpers import digits

    from pipeline.config import TrainParams
    from pipeline.methods import REGISTRY
    from pipeline.train import TrainContext

    data, noisy = _input()
    for name in ("knn", "probe"):
        spec = DETECTORS[name]
        res = spec.detect(spec.options(flag="cleanlab"), data)
        assert f1_score(noisy, res.flagged) > 0.8, name
    train, test = digits(200, 40, noise=0.4)
    oof = torch.full((200, 10), 0.3 / 9)  # out-of-fold-like probabilities with 0.7 on the true class
    oof[torch.arange(200), train.true_labels] = 0.7
    cfg = TrainParams(model_kwargs={"channels": [8, 16, 32, 64]}, image_size=8, progress=False)
    ctx = TrainContext(train, test, cfg, 10, 1, torch.device("cpu"), seed=0, noise_rate=0.4, oof_probs=oof)
    method = REGISTRY["cl"].build(REGISTRY["cl"].options(), ctx)
    wrong = (train.labels != train.true_labels).numpy()
    assert f1_score(wrong, method.flags.numpy()) > 0.95
