"""JoCoR (2 and 3 networks), Co-teaching, confident learning and noise estimation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train import digits_data, make_ctx, trained_at_40

from pipeline.config import validate_section
from pipeline.errors import ConfigError
from pipeline.methods import REGISTRY, scores_frame
from pipeline.methods.jocor import JoCoROptions, contrast, joint_loss, pair_list
from pipeline.methods.selection import forget_rate_at, resolve_forget_rate, small_loss_indices
from pipeline.noise import inject
from pipeline.noise.estimate import estimate_noise, out_of_fold_probs
from pipeline.train import fit


# ------------------------------------------------------------------------------------------- selection
def test_forget_rate_ramps_to_tau():
    assert forget_rate_at(0, 0.4, 10, 1.0) == 0.0
    assert forget_rate_at(5, 0.4, 10, 1.0) == pytest.approx(0.2)
    assert forget_rate_at(10, 0.4, 10, 1.0) == pytest.approx(0.4)
    assert forget_rate_at(30, 0.4, 10, 1.0) == pytest.approx(0.4)
    assert forget_rate_at(5, 0.4, 10, 2.0) == pytest.approx(0.1)


def test_small_loss_indices_keep_the_smallest():
    loss = torch.tensor([5.0, 0.1, 3.0, 0.2, 9.0, 0.3, 7.0, 0.4, 1.0, 2.0])
    assert sorted(small_loss_indices(loss, 0.4).tolist()) == [1, 3, 5, 7, 8, 9]
    assert len(small_loss_indices(loss, 0.99)) == 1


def test_forget_rate_auto_uses_the_estimate_and_needs_one():
    assert resolve_forget_rate("auto", 0.37, "k") == pytest.approx(0.37)
    assert resolve_forget_rate(0.2, None, "k") == 0.2
    with pytest.raises(ConfigError, match="method.jocor.forget_rate"):
        resolve_forget_rate("auto", None, "method.jocor.forget_rate")


# ---------------------------------------------------------------------------------------------- jocor
def test_auto_lambda_keeps_the_two_network_balance():
    from pipeline.methods.jocor import auto_lambda

    assert auto_lambda(0.4, 2, 2) == pytest.approx(0.9)
    assert auto_lambda(0.7, 2, 2) == pytest.approx(0.65)  # the JoCoR README's setting above 60% noise
    assert auto_lambda(0.4, 3, 3) == pytest.approx(0.9)  # circular: 3 CE terms, 3 divergences
    lam = auto_lambda(0.4, 3, 6)  # all pairs: 3 CE terms, 6 divergences
    assert lam / (1 - lam) * 6 / 3 == pytest.approx(0.9 / 0.1 * 2 / 2)


def test_pairs():
    assert pair_list(2, "all") == [(0, 1), (1, 0)]
    assert len(pair_list(3, "all")) == 6
    assert pair_list(3, "circular") == [(0, 1), (1, 2), (2, 0)]


def test_contrast_terms():
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    kl = contrast(a, b, "kl")
    ref = (F.softmax(b, -1) * (F.log_softmax(b, -1) - F.log_softmax(a, -1))).sum(-1)
    assert torch.allclose(kl, ref, atol=1e-6) and (kl >= 0).all()
    assert torch.allclose(contrast(a, a, "kl"), torch.zeros(4), atol=1e-6)
    ce = contrast(a, b, "ce")
    assert torch.allclose(ce, -(F.softmax(b, -1) * F.log_softmax(a, -1)).sum(-1))


def test_joint_loss_formula_two_nets_is_symmetric_kl():
    a, b, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    got = joint_loss([a, b], y, 0.9, pair_list(2, "all"), "kl")
    sup = F.cross_entropy(a, y, reduction="none") + F.cross_entropy(b, y, reduction="none")
    sym = contrast(a, b, "kl") + contrast(b, a, "kl")
    assert torch.allclose(got, 0.1 * sup + 0.9 * sym, atol=1e-6)


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"forget_rate": 1.0}, "forget_rate"),
        ({"forget_rate": -0.1}, "forget_rate"),
        ({"nets": 1}, "nets"),
        ({"lam": 1.5}, "lam"),
        ({"lam": -0.2}, "lam"),
    ],
)
def test_jocor_bad_options_name_the_key(bad, key):
    with pytest.raises(ConfigError, match=rf"method\.jocor: {key}"):
        validate_section(JoCoROptions, bad, "method.jocor")


@pytest.mark.parametrize("pairs", ["all", "circular"])
def test_three_network_jocor_runs_and_exports(pairs):
    train, test = digits_data(96, 32, noise=0.4)
    ctx = make_ctx(train, test, epochs=2)
    m = REGISTRY["jocor"].build(JoCoROptions(nets=3, pairs=pairs), ctx)
    assert len(m.nets) == 3 and len(m.pairs) == (6 if pairs == "all" else 3)
    res = fit(m, ctx, name="jocor3", epochs=2)
    frame = scores_frame("jocor", ctx, m.export(), 0.5)
    assert {"joint_loss", "kept_fraction"} <= set(frame.columns)
    assert frame["kept_fraction"].is_between(0, 1).all() and frame["joint_loss"].is_not_nan().all()
    assert res.log[1]["forget_rate"] == pytest.approx(0.1 * ctx.noise_rate)


# JoCoR's λ in the shared 12-epoch setting. The paper's 0.9 (`lam: auto`) leaves the labels a tenth of the
# loss and is made for ~200 epochs: after 12 JoCoR's test accuracy is still rising, and its final value
# swings with the seed and the thread count (0.730 to 0.885). At 0.7 it has converged by epoch 8, at
# 0.952-0.957 over training seeds 0-2 (docs/results.md, the test suite; `bench/bench_test_threads.py`).
JOCOR_LAM = 0.7


def _final_log(name: str, opts: tuple = ()) -> list[dict]:
    """The epoch log of `name` in the behaviour tests' shared, cached setting (CE trains once a session)."""
    return trained_at_40(name, opts)[2].log


@pytest.mark.xdist_group("ce_at_40")  # one worker: CE trains once (trained_at_40)
def test_jocor_and_coteaching_beat_ce_at_40_percent_symmetric_noise():
    ce_log, cot_log = _final_log("ce"), _final_log("coteaching")
    jocor_log = _final_log("jocor", (("lam", JOCOR_LAM),))
    ce, jocor, cot = (log[-1]["test_acc"] for log in (ce_log, jocor_log, cot_log))
    print(f"final test acc at 40% symmetric: ce {ce:.3f}, jocor {jocor:.3f}, coteaching {cot:.3f}")
    assert jocor > ce + 0.03 and cot > ce + 0.03
    # the small-loss schedule: everything kept at first, then fewer and cleaner samples (JoCoR's figure)
    assert jocor_log[0]["kept_fraction"] > 0.95 and jocor_log[-1]["kept_fraction"] < 0.7
    assert jocor_log[-1]["label_precision"] > jocor_log[0]["label_precision"] + 0.2
    assert ce_log[-1]["label_precision"] == pytest.approx(ce_log[0]["label_precision"])


def test_coteaching_trains_each_net_on_the_peer_selection(monkeypatch):
    """With forget rate 0.5 each network steps only on the half its peer finds easiest."""
    import pipeline.methods.coteaching as cot

    train, test = digits_data(64, 16, noise=0.4)
    ctx = make_ctx(train, test, epochs=1, batch_size=64)
    m = REGISTRY["coteaching"].build(cot.CoteachingOptions(forget_rate=0.5, num_gradual=0), ctx)
    calls = []
    real = cot.small_loss_indices

    def spy(loss, forget):
        out = real(loss, forget)
        calls.append((loss.detach().clone(), out))
        return out

    monkeypatch.setattr(cot, "small_loss_indices", spy)
    res = fit(m, ctx, name="coteaching", epochs=1)
    (loss_a, pick_a), (loss_b, pick_b) = calls
    assert len(pick_a) == len(pick_b) == 32
    assert not torch.equal(torch.sort(pick_a).values, torch.sort(pick_b).values)  # the nets disagree
    # the logged loss is net A's loss on B's picks (scaled back to the whole batch)
    assert res.log[0]["train_loss"] == pytest.approx(float(loss_a[pick_b].sum() / 0.5 / 64), rel=1e-5)


# ------------------------------------------------------------------------------------------------- cl
def test_cl_flags_the_samples_whose_oof_probs_disagree():
    train, test = digits_data(300, 60, noise=0.4)
    ctx = make_ctx(train, test, epochs=1)
    m = REGISTRY["cl"].build(REGISTRY["cl"].options(), ctx)
    out = m.export()
    noisy = train.labels != train.true_labels
    flagged = out.flagged
    precision = (flagged & noisy).sum() / flagged.sum()
    recall = (flagged & noisy).sum() / noisy.sum()
    assert precision > 0.9 and recall > 0.9
    assert torch.all((out.noise_score >= 0) & (out.noise_score <= 1))
    res = fit(m, ctx, name="cl", epochs=1)
    assert res.log[0]["kept_fraction"] == pytest.approx(1 - flagged.float().mean().item())
    assert res.log[0]["label_precision"] > 0.9


def test_cl_without_estimate_is_a_clear_error():
    train, test = digits_data(64, 16)
    ctx = make_ctx(train, test)
    ctx.oof_probs = None
    with pytest.raises(ConfigError, match="noise.estimate: true"):
        REGISTRY["cl"].build(REGISTRY["cl"].options(), ctx)


# ---------------------------------------------------------------------------------------- estimation
def test_estimate_noise_on_known_probabilities():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 5, 5000)
    given = inject(true, "symmetric", 0.3, 5, seed=1)
    probs = np.full((5000, 5), 0.05)
    probs[np.arange(5000), true] = 0.8
    est = estimate_noise(given, probs, num_classes=5)
    assert est["rate"] == pytest.approx(float((given != true).mean()), abs=0.02)
    t = np.asarray(est["matrix"])
    assert np.allclose(t.sum(1), 1) and (np.diag(t) > 0.6).all()
    with pytest.raises(ValueError, match="shape"):
        estimate_noise(given, probs[:, :4], num_classes=5)


@pytest.mark.parametrize("kind, rate", [("symmetric", 0.2), ("symmetric", 0.4), ("asymmetric", 0.4)])
def test_estimated_rate_within_005_of_realised_on_digits(kind, rate):
    train, _ = digits_data(1400, 0)
    train.labels = torch.as_tensor(inject(train.true_labels.numpy(), kind, rate, 10, seed=0))
    cfg = make_ctx(train, train, augment={"pad_crop": 0}, model_kwargs={"channels": [16, 32, 64, 128]}).cfg
    oof = out_of_fold_probs(train, cfg, num_classes=10, folds=4, epochs=4, seed=0, device=torch.device("cpu"))
    est = estimate_noise(train.labels.numpy(), oof, num_classes=10)
    realised = float((train.labels != train.true_labels).float().mean())
    print(f"{kind} {rate}: realised {realised:.3f}, estimated {est['rate']:.3f}")
    assert abs(est["rate"] - realised) < 0.05
