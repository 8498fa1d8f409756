"""GSS (direction pools, SB / DB / SSL) and DivideMix: the pool formulas, sampling, the dual-branch update,
the GMM division, exports, and behaviour on digits."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import roc_auc_score
from test_train import digits_data, make_ctx, trained_at_40

from pipeline.errors import ConfigError
from pipeline.methods import REGISTRY, scores_frame
from pipeline.methods.dividemix import DivideMixOptions, gmm_clean_probability, sharpen
from pipeline.methods.gss import (
    GSSOptions,
    init_pools,
    normalise,
    pool_entropy,
    pool_mass_summary,
    pool_weights,
    sample_pools,
    update_pools,
)
from pipeline.params import parse_params
from pipeline.registry import score_schema
from pipeline.schemas import POOL_HISTORY, SCORES
from pipeline.train import fit, predict
from pipeline.validation import validate


# ------------------------------------------------------------------------------------------------ pools
def test_one_hot_pool_samples_only_that_label():
    labels = torch.tensor([3, 0, 9, 3, 7])
    pools = init_pools(labels, 10, count=2)
    assert pools.shape == (2, 5, 10) and torch.equal(pools.sum(-1), torch.ones(2, 5))
    gen = torch.Generator().manual_seed(0)
    big = pools.repeat(1, 400, 1)  # (2, 2000, 10): one multinomial call for every row of both networks
    draws = sample_pools(big, gen)
    assert draws.shape == (2, 2000)
    assert torch.equal(draws, labels.repeat(400).expand(2, -1))


def test_sampling_follows_the_pool_proportions():
    pool = torch.tensor([[3.0, 1.0, 0.0, 0.0]]).repeat(20000, 1)  # unnormalised: 75% / 25%
    draws = sample_pools(pool, torch.Generator().manual_seed(1))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert freq[2] == 0 and freq[3] == 0
    assert abs(freq[0].item() - 0.75) < 0.015


@pytest.mark.parametrize("e,E", [(0, 10), (3, 10), (9, 10), (7, 20)])
def test_update_weights_match_the_paper_formulas(e, E):
    p = torch.tensor([0.9, 0.2, 0.0, 1.0])
    v_or, v_pr, v_rd = pool_weights(p, e, E, lambda1=2.0, lambda2=1.0)
    torch.testing.assert_close(v_or, p * (1 - e / E))
    torch.testing.assert_close(v_pr, p * 2.0 * e / E)
    assert v_rd == pytest.approx(1.0 * e / E)
    if e == 0:  # the first update only reinforces the given label
        assert v_pr.abs().sum() == 0 and v_rd == 0


def test_update_weights_reject_an_epoch_outside_the_run():
    with pytest.raises(ValueError, match=r"epoch must be in \[0, 10\)"):
        pool_weights(torch.ones(2), 10, 10, 2.0, 1.0)


def test_update_puts_each_part_on_its_class():
    """ỹ = 0 for both samples; sample 0 is predicted 0, sample 1 is predicted 2. e/E = 0.25, λ1 2, λ2 1."""
    pools = init_pools(torch.tensor([0, 0]), 3)[0]
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.1, 0.7]])
    out = update_pools(pools, torch.tensor([0, 0]), probs, epoch=1, epochs=4, lambda1=2.0, lambda2=1.0)
    rd = 0.25 / 3
    expect = torch.tensor(
        [
            [1 + 0.8 * 0.75 + 0.8 * 0.5 + rd, rd, rd],  # v_or and v_pr both on the given = predicted class
            [1 + 0.2 * 0.75 + rd, rd, 0.2 * 0.5 + rd],  # v_pr (weighted by p_ỹ = 0.2) on the predicted class
        ]
    )
    torch.testing.assert_close(out, expect)
    assert torch.equal(pools, init_pools(torch.tensor([0, 0]), 3)[0])  # the input is not modified


def test_pool_entropy_and_mass_summary():
    pools = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(pool_entropy(pools), torch.tensor([0.0, 1.0]))
    # sample 0 clean (ỹ = y = 0, predicted 1); sample 1 mislabeled (ỹ 0, y 2, predicted 2)
    pools = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    s = pool_mass_summary(pools, torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([0, 2]))
    assert s["pool_given_clean"] == pytest.approx(0.6) and s["pool_pred_clean"] == pytest.approx(0.3)
    assert s["pool_other_clean"] == pytest.approx(0.1)
    assert s["pool_given_noisy"] == pytest.approx(0.2) and s["pool_pred_noisy"] == pytest.approx(0.5)
    assert s["pool_true_noisy"] == pytest.approx(0.5) and s["pool_other_noisy"] == pytest.approx(0.3)
    assert pool_mass_summary(pools, torch.tensor([0, 0]), torch.tensor([1, 2]), None) == {}


# ------------------------------------------------------------------------------------- the GSS method
def _gss(variant: str, noise: float = 0.4, epochs: int = 3, n: int = 160, **opts):
    train, test = digits_data(n, 64, noise=noise)
    ctx = make_ctx(train, test, epochs=epochs, augment={"pad_crop": 0})
    o = GSSOptions(variant=variant, **opts)
    return REGISTRY["gss"].build(o, ctx), ctx


def test_db_updates_each_pool_from_the_peers_predictions():
    method, ctx = _gss("db", epochs=3, pool_probs="train")
    for e in range(2):
        method.train_epoch(e)
    before = method.pools.clone()
    method.train_epoch(2)
    seen = method.seen  # each network's softmax of every sample from this epoch's training passes
    assert not torch.allclose(seen[0], seen[1])  # differently initialised networks disagree somewhat
    y, o = ctx.train.labels, method.options
    from_peer = update_pools(before, y, seen.flip(0), 2, 3, o.lambda1, o.lambda2)
    from_self = update_pools(before, y, seen, 2, 3, o.lambda1, o.lambda2)
    torch.testing.assert_close(method.pools, from_peer)
    assert not torch.allclose(method.pools, from_self)


def test_sb_updates_from_its_own_predictions_and_eval_mode_uses_an_eval_pass():
    method, ctx = _gss("sb", epochs=2, pool_probs="eval")
    method.train_epoch(0)
    before = method.pools.clone()
    method.train_epoch(1)
    probs = predict(method.nets[0], ctx.train, ctx)[None]  # eval mode, no augmentation, after the epoch
    torch.testing.assert_close(method.pools, update_pools(before, ctx.train.labels, probs, 1, 2, 2.0, 1.0))


def test_labels_switch_away_from_the_given_one_as_pools_spread():
    method, ctx = _gss("sb", epochs=4)
    res = [method.train_epoch(e) for e in range(4)]
    assert res[0].extra["switched"] == 0  # one-hot pools: every draw is the given label
    assert res[-1].extra["switched"] > 0.05
    assert res[-1].steps["switched"].shape == (len(list(ctx.batches())),)


def test_history_and_exports_validate():
    method, ctx = _gss("db", epochs=2, history=True)
    fit(method, ctx, name="gss", epochs=2)
    out = method.export()
    frame = scores_frame("gss", ctx, out, 0.5)
    validate(frame, score_schema("gss"), 10, "scores/gss.parquet")
    pools = np.stack(frame["direction_pool"].to_list())
    np.testing.assert_allclose(pools, normalise(method.pools[0]).numpy(), atol=1e-6)
    mass = 0.5 * (pools + np.stack(frame["direction_pool_peer"].to_list()))
    given = frame["given_label"].to_numpy()
    np.testing.assert_allclose(1 - mass[np.arange(len(given)), given], frame["noise_score"], atol=1e-5)
    hist = out.history
    validate(hist, POOL_HISTORY, 10, "scores/pool_history/gss.parquet")
    assert hist.height == 2 * len(ctx.train) and hist["epoch"].unique().sort().to_list() == [1, 2]
    last = np.stack(hist.filter(pl.col("epoch") == 2)["pool"].to_list())
    np.testing.assert_allclose(last, pools, atol=2e-3)  # stored as float16
    assert REGISTRY["gss"].build(GSSOptions(variant="sb"), ctx).export().history is None


def test_state_round_trip_keeps_pools_and_the_sampling_generator():
    method, ctx = _gss("db", epochs=2)
    method.train_epoch(0)
    clone = REGISTRY["gss"].build(method.options, ctx)
    clone.load_state_dict(method.state_dict())
    assert torch.equal(clone.pools, method.pools)
    rows = torch.arange(len(ctx.train))
    assert torch.equal(
        sample_pools(clone.pools[:, rows], clone.gen), sample_pools(method.pools[:, rows], method.gen)
    )


# ------------------------------------------------------------------------------------------- DivideMix
def test_gmm_clean_probability_separates_two_loss_modes():
    rng = np.random.default_rng(0)
    losses = np.concatenate([rng.normal(0.1, 0.05, 300), rng.normal(2.5, 0.4, 200)]).clip(0)
    p = gmm_clean_probability(losses)
    assert p.shape == (500,) and ((p >= 0) & (p <= 1)).all()
    assert (p[:300] > 0.5).mean() > 0.98 and (p[300:] < 0.5).mean() > 0.98
    assert (gmm_clean_probability(np.full(5, 0.3)) == 1).all()  # no evidence: everything clean


def test_gmm_clean_probability_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite value at row 2"):
        gmm_clean_probability(np.array([0.1, 0.2, np.nan, 0.3]))
    with pytest.raises(ValueError, match="1-D array of at least 2"):
        gmm_clean_probability(np.array([[0.1, 0.2]]))


def test_sharpen_lowers_entropy_and_keeps_the_argmax():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    q = sharpen(p, 0.5)
    torch.testing.assert_close(q, torch.tensor([[25.0, 9.0, 4.0]]) / 38)
    assert q.argmax() == 0


def test_dividemix_divides_clean_from_noisy_samples():
    """After the warm-up the labeled sets (the peer's GMM) hold mostly clean samples; the exported clean
    probability ranks the noisy ones low."""
    train, test = digits_data(800, 128, noise=0.4)
    ctx = make_ctx(
        train, test, epochs=6, augment={"pad_crop": 0}, model_kwargs={"channels": [16, 32, 64, 128]}
    )
    method = REGISTRY["dividemix"].build(DivideMixOptions(warmup_epochs=3, rampup_epochs=2), ctx)
    res = fit(method, ctx, name="dividemix", epochs=6)
    post = res.log[3:]
    print([round(r["label_precision"], 3) for r in res.log], [round(r["test_acc"], 3) for r in res.log])
    assert res.log[0]["label_precision"] < 0.65  # everything kept during the warm-up: 1 - realised noise
    assert all(r["label_precision"] > 0.85 for r in post), [r["label_precision"] for r in post]
    assert all(0.3 < r["labeled_fraction"] < 0.8 for r in post)
    assert all(
        r["gmm_seconds"] < 0.25 * (res.log[i + 2]["seconds"] - res.log[i + 1]["seconds"])
        for i, r in enumerate(post)
    )
    out = method.export()
    noisy = (train.labels != train.true_labels).numpy()
    assert roc_auc_score(noisy, out.noise_score.numpy()) > 0.9
    frame = scores_frame("dividemix", ctx, out, 0.5)
    validate(frame, SCORES, 10, "scores/dividemix.parquet")


def test_gss_ssl_runs_and_draws_from_two_pools():
    method, ctx = _gss("ssl", noise=0.4, epochs=4, n=240, dividemix={"warmup_epochs": 2, "rampup_epochs": 1})
    res = fit(method, ctx, name="gss", epochs=4)
    assert res.log[-1]["labeled_fraction"] < 1 and np.isfinite(res.log[-1]["loss_u"])
    assert not torch.equal(method.upools, method.pools)  # the two pools follow different λ
    out = method.export()
    frame = scores_frame("gss", ctx, out, 0.5)
    validate(frame, score_schema("gss"), 10, "scores/gss.parquet")
    assert {"direction_pool", "direction_pool_peer", "clean_probability"} <= set(frame.columns)
    active = method.active_pools()
    assert torch.equal(active[0][method.labeled[0]], method.pools[0][method.labeled[0]])
    assert torch.equal(active[0][~method.labeled[0]], method.upools[0][~method.labeled[0]])


# ------------------------------------------------------------------------------------------------ params
def test_a_warm_up_as_long_as_the_run_is_an_error_naming_the_key():
    base = {"train": {"epochs": 5}, "methods": ["dividemix"], "clean": {"methods": ["dividemix"]}}
    with pytest.raises(ConfigError, match=r"method.dividemix.warmup_epochs: 5 warm-up epochs"):
        parse_params({**base, "method": {"dividemix": {"warmup_epochs": 5}}})
    ssl = {"gss": {"variant": "ssl", "dividemix": {"warmup_epochs": 6}}}
    with pytest.raises(ConfigError, match=r"method.gss.dividemix.warmup_epochs: 6"):
        parse_params({**base, "methods": ["gss"], "clean": {"methods": ["gss"]}, "method": ssl})
    # the nested DivideMix section only matters for ssl: sb with its default (10) is fine at 5 epochs
    parse_params(
        {**base, "methods": ["gss"], "clean": {"methods": ["gss"]}, "method": {"gss": {"variant": "sb"}}}
    )
    with pytest.raises(ConfigError, match=r"method.gss: variant"):
        parse_params(
            {**base, "methods": ["gss"], "clean": {"methods": ["gss"]}, "method": {"gss": {"variant": "xb"}}}
        )


# --------------------------------------------------------------------------------------------- behaviour
def _final_accuracy(name: str, opts: dict, noise: float) -> float:
    assert noise == 0.4  # the shared, cached setting of tests.test_train.trained_at_40
    return trained_at_40(name, tuple(sorted(opts.items())))[2].log[-1]["test_acc"]


@pytest.mark.slow
@pytest.mark.xdist_group("ce_at_40")  # one worker: CE trains once (trained_at_40)
def test_gss_sb_and_db_beat_ce_at_40_percent_noise():
    ce = _final_accuracy("ce", {}, 0.4)
    sb = _final_accuracy("gss", {"variant": "sb"}, 0.4)
    db = _final_accuracy("gss", {"variant": "db"}, 0.4)
    print(f"40% symmetric: ce {ce:.3f}, gss-sb {sb:.3f}, gss-db {db:.3f}")
    assert sb > ce + 0.05 and db > ce + 0.05


def test_paper_preset_is_valid_and_has_the_papers_settings():
    from pathlib import Path

    from pipeline.params import load_params

    p = load_params(Path(__file__).resolve().parents[1] / "experiments" / "gss_cifar10.yaml")
    t = p.train
    assert (p.data.source, t.backbone, t.small_stem, t.image_size, t.batch_size) == (
        "cifar10",
        "resnet18",
        True,
        32,
        128,
    )
    assert (t.optimizer, t.lr, t.schedule, t.momentum, t.weight_decay) == ("sgd", 0.01, "cosine", 0.9, 5e-4)
    gss = REGISTRY["gss"].options.model_validate(p.method["gss"])
    assert gss.variant == "ssl" and (gss.labeled_lambda1, gss.labeled_lambda2) == (0.1, 0.0)
    assert (gss.unlabeled_lambda1, gss.unlabeled_lambda2) == (0.2, 0.5)
    assert {"gss", "dividemix", "ce"} <= set(p.methods) and p.noise.rate == 0.4
