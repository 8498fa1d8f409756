"""Gradient-similarity reweighting: the closed-form cosine against per-sample autograd, the weights,
the modes, the ranking figures, the grad_similarity scoring pass, and the method against CE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from test_train import TINY, digits_data, make_ctx, trained_at_40
from torch import nn
from torch.func import functional_call, grad, vmap

from pipeline.gradient_cosine import (
    features_and_logits,
    grad_similarity_scores,
    last_layer_cosine,
    similarity_weights,
    topk_mean,
)
from pipeline.methods import scores_frame
from pipeline.methods.gradsim import GradSimOptions, batch_weights, ranking_counts
from pipeline.models import build_model
from pipeline.registry import score_schema
from pipeline.validation import validate


def _autograd_cosine(head: nn.Linear, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients of CE w.r.t. the head's weight and bias with torch.func, then their cosines."""
    params = {k: v.detach() for k, v in head.named_parameters()}

    def loss(p, hi, yi):
        return F.cross_entropy(functional_call(head, p, (hi[None],)), yi[None])

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, h, y)
    flat = torch.cat([v.reshape(len(y), -1) for v in g.values()], 1).double()
    flat = flat / flat.norm(dim=1, keepdim=True)
    return flat @ flat.T


@pytest.mark.parametrize("bias", [True, False])
def test_closed_form_cosine_matches_per_sample_autograd(bias):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(12, 16), nn.ReLU())
    head = nn.Linear(16, 5, bias=bias)
    x, y = torch.randn(24, 12), torch.randint(0, 5, (24,))
    h = body(x).detach()
    probs = head(h).softmax(-1).detach()
    closed = last_layer_cosine(h, probs, y, bias=bias).double()
    assert closed.shape == (24, 24)
    assert torch.allclose(closed, _autograd_cosine(head, h, y), atol=1e-5)


def test_closed_form_on_a_timm_backbone_matches_autograd():
    """The same check through `features_and_logits` on the project's ResNet (eval mode: per-sample)."""
    from pipeline.config import TrainParams

    model = build_model(TrainParams(**TINY), 10, 1, seed=0).eval()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    with torch.no_grad():
        h, logits = features_and_logits(model, x)
        assert torch.allclose(logits, model(x), atol=1e-5)
    cos = last_layer_cosine(h, logits.softmax(-1), y).double()
    assert torch.allclose(cos, _autograd_cosine(model.get_classifier(), h, y), atol=1e-5)


def test_cosine_checks_its_inputs():
    h, p = torch.randn(4, 3), torch.full((4, 5), 0.2)
    with pytest.raises(ValueError, match="batch sizes differ"):
        last_layer_cosine(h, p, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\]"):
        last_layer_cosine(h, p, torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match="expected features"):
        last_layer_cosine(h[0], p, torch.zeros(4, dtype=torch.long))


def test_weights_follow_the_formula():
    cos = torch.tensor(
        [[1.0, 0.9, -0.2, 0.1], [0.9, 1.0, 0.3, 0.0], [-0.2, 0.3, 1.0, -0.5], [0.1, 0.0, -0.5, 1.0]]
    )
    # k = 1: w_i ∝ exp(a · max_{j≠i} cos_ij)
    w = similarity_weights(cos, k=1, a=2.0)
    want = torch.exp(2.0 * torch.tensor([0.9, 0.9, 0.3, 0.1]))
    assert torch.allclose(w, want / want.sum())
    # all partners, a = 1: the thesis' Eq. 1, w_i ∝ Σ_{j≠i} exp(cos_ij)
    w = similarity_weights(cos, k=None, a=1.0)
    e = torch.exp(cos) * (1 - torch.eye(4))
    assert torch.allclose(w, e.sum(1) / e.sum())
    assert torch.allclose(topk_mean(cos, 2), torch.tensor([0.5, 0.6, 0.05, 0.05]))
    with pytest.raises(ValueError, match="a must be > 0"):
        similarity_weights(cos, k=1, a=0.0)


def test_within_class_compares_only_same_label_partners():
    cos = torch.tensor([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    labels = torch.tensor([0, 1, 1])  # sample 0 has no same-label partner; 1 and 2 pair up
    sim = topk_mean(cos, 4, labels=labels)
    assert math.isnan(sim[0]) and sim[1] == pytest.approx(0.2) and sim[2] == pytest.approx(0.2)
    w = similarity_weights(cos, k=4, a=1.0, labels=labels)
    s = math.exp(0.2)  # both partners' unnormalised weight; the lone sample gets their mean
    assert torch.allclose(w, torch.full((3,), s) / (3 * s))


def test_gate_down_weights_samples_whose_gradients_disagree():
    """Clustered features and confident correct predictions: the flipped labels' gradients point away from
    everyone else's, so their weights (and top-k similarity) are the lowest of the batch."""
    g = torch.Generator().manual_seed(0)
    k, per = 4, 8
    truth = torch.arange(k).repeat_interleave(per)
    centres = torch.randn(k, 10, generator=g) * 3
    h = centres[truth] + 0.3 * torch.randn(len(truth), 10, generator=g)
    probs = torch.full((len(truth), k), 0.1 / (k - 1))
    probs[torch.arange(len(truth)), truth] = 0.9
    given = truth.clone()
    flipped = torch.tensor([0, 9, 18, 27])
    given[flipped] = (truth[flipped] + 1) % k
    w = similarity_weights(last_layer_cosine(h, probs, given), k=4, a=4.0)
    noisy = torch.zeros(len(truth), dtype=torch.bool)
    noisy[flipped] = True
    assert w[noisy].max() < w[~noisy].min()
    assert ranking_counts(w, noisy, window=4).tolist() == [0.0, 4.0]


@pytest.mark.parametrize("mode", ["weight", "drop_bottom", "score_only"])
def test_modes_set_the_training_weights(mode):
    g = torch.Generator().manual_seed(1)
    h, probs = torch.randn(20, 6, generator=g), torch.rand(20, 4, generator=g).softmax(-1)
    y = torch.randint(0, 4, (20,), generator=g)
    opts = GradSimOptions(mode=mode, drop_fraction=0.25)
    w, train_w = batch_weights(h, probs, y, opts, bias=True)
    assert w.sum().item() == pytest.approx(1.0) and train_w.sum().item() == pytest.approx(1.0)
    if mode == "weight":
        assert torch.equal(w, train_w)
    elif mode == "score_only":
        assert torch.allclose(train_w, torch.full((20,), 0.05))
    else:
        dropped = w.argsort()[:5]
        assert (train_w[dropped] == 0).all() and torch.allclose(
            train_w[train_w > 0], torch.full((15,), 1 / 15)
        )


def test_options_reject_bad_values():
    for bad in ({"k": 0}, {"a": 0.0}, {"mode": "drop"}, {"drop_fraction": 1.0}, {"unknown": 1}):
        with pytest.raises(ValueError):
            GradSimOptions(**bad)
    assert GradSimOptions(k="all").top_k is None


def test_grad_similarity_pass_is_seeded_bounded_and_covers_every_sample():
    train, test = digits_data(150, 32, noise=0.4)
    ctx = make_ctx(train, test)
    net = build_model(ctx.cfg, 10, 1, seed=0)
    a = grad_similarity_scores([net], train, ctx, k=4, seed=3)
    b = grad_similarity_scores([net], train, ctx, k=4, seed=3)
    c = grad_similarity_scores([net], train, ctx, k=4, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (150,) and torch.isfinite(a).all() and (a.abs() <= 1).all()
    assert net.training  # mode restored


@pytest.mark.xdist_group("ce_at_40")  # one worker: CE trains once (trained_at_40)
@pytest.mark.slow
def test_gradsim_beats_ce_at_40_percent_noise_and_its_scores_detect_the_noise():
    acc, sims = {}, {}
    for name in ("ce", "gradsim"):
        method, ctx, res = trained_at_40(name)
        train = ctx.train
        noisy = (train.labels != train.true_labels).numpy()
        acc[name] = res.log[-1]["test_acc"]
        sims[name] = grad_similarity_scores(method.networks(), train, ctx, k=4, seed=0)
        frame = scores_frame(name, ctx, method.export(), 0.5, sims[name])
        validate(frame, score_schema(name), 10, f"scores/{name}.parquet")
        if name == "gradsim":
            weight = frame["gradsim_weight"].to_numpy()
            rank = frame["gradsim_rank"].to_numpy()
            assert sorted(rank.tolist()) == list(range(1, len(rank) + 1))
            assert weight[rank == 1][0] == np.nanmax(weight)
            assert roc_auc_score(noisy, -weight) > 0.8  # mislabeled samples carry low weights
            last = res.log[-1]
            assert last["top10_noisy"] < last["bottom10_noisy"]
            assert last["weight_noisy"] < last["weight_clean"]
    print(f"40% symmetric: ce {acc['ce']:.3f}, gradsim {acc['gradsim']:.3f}")
    assert acc["gradsim"] > acc["ce"] + 0.03
    # Chance is 0.5. CE's score reads 0.696 on an AMD EPYC host and above 0.7 on an Intel one, the same code.
    for name, s in sims.items():
        assert roc_auc_score(noisy, -s.numpy()) > 0.65, name


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(2, 12),
    d=st.integers(1, 8),
    k=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
    bias=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_property_cosine_is_symmetric_bounded_and_unit_on_the_diagonal(b, d, k, seed, bias, scale):
    g = torch.Generator().manual_seed(seed)
    h = scale * torch.randn(b, d, generator=g)
    probs = torch.randn(b, k, generator=g).softmax(-1)
    labels = torch.randint(0, k, (b,), generator=g)
    cos = last_layer_cosine(h, probs, labels, bias=bias)
    assert torch.isfinite(cos).all() and (cos.abs() <= 1).all()
    assert torch.allclose(cos, cos.T, atol=1e-6)
    assert torch.allclose(cos.diagonal(), torch.ones(b), atol=1e-4)
    w = similarity_weights(cos, k=min(4, b - 1), a=4.0)
    assert (w >= 0).all() and w.sum().item() == pytest.approx(1.0, abs=1e-5)
