"""GAL: the planted agreement gate, CDAS batches, the cosines, and the method under the epoch driver."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from test_train import digits_data, make_ctx, trained_at_40
from torch import nn

from pipeline.methods import REGISTRY, scores_frame
from pipeline.methods.gal import (
    CDASampler,
    GALOptions,
    agreement_update,
    masked_step,
    pair_cosines,
    unit_cosines,
)
from pipeline.registry import score_schema
from pipeline.train import fit
from pipeline.validation import validate


# ------------------------------------------------------------------------------------------ planted gate
def _twins(opt_cls=torch.optim.SGD, **kw):
    """Two identical Linear-Linear nets with optimisers that already hold state from one shared step."""
    torch.manual_seed(0)
    net_a = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    net_b = copy.deepcopy(net_a)
    kw = kw or dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_a, opt_b = opt_cls(net_a.parameters(), **kw), opt_cls(net_b.parameters(), **kw)
    for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        g = torch.randn_like(pa)
        pa.grad, pb.grad = g.clone(), g.clone()
    opt_a.step()
    opt_b.step()
    return net_a, net_b, opt_a, opt_b


def _snap(net, opt):
    return [p.detach().clone() for p in net.parameters()], [
        {k: v.clone() for k, v in opt.state[p].items()} for p in net.parameters()
    ]


def test_planted_disagreeing_tensor_is_frozen_bit_for_bit_with_momentum_and_weight_decay():
    net_a, net_b, opt_a, opt_b = _twins()
    pa, pb = list(net_a.parameters()), list(net_b.parameters())
    for opt, params in ((opt_a, pa), (opt_b, pb)):  # a previous step left non-zero momentum buffers
        assert all(opt.state[p]["momentum_buffer"].abs().sum() > 0 for p in params)
    # tensor 0 (first weight): opposite gradients (cos -1); every other tensor: the same gradient (cos 1)
    torch.manual_seed(1)
    for i, (a, b) in enumerate(zip(pa, pb, strict=True)):
        g = torch.randn_like(a)
        a.grad, b.grad = g.clone(), (-g if i == 0 else g.clone())
    before_a, before_b = _snap(net_a, opt_a), _snap(net_b, opt_b)
    stats = agreement_update(opt_a, opt_b, pa, pb, tau=0.4, granularity="tensor")
    for net, opt, (params0, state0) in ((net_a, opt_a, before_a), (net_b, opt_b, before_b)):
        params = list(net.parameters())
        assert torch.equal(params[0], params0[0])  # disagreeing: untouched (no step, no weight decay)
        assert torch.equal(opt.state[params[0]]["momentum_buffer"], state0[0]["momentum_buffer"])
        for i in (1, 2, 3):  # agreeing tensors moved, momentum too
            assert not torch.equal(params[i], params0[i])
            assert not torch.equal(opt.state[params[i]]["momentum_buffer"], state0[i]["momentum_buffer"])
    for i in (1, 2, 3):  # same gradient, same start: the twins stay identical where updated
        assert torch.equal(pa[i], pb[i])
    total = sum(p.numel() for p in pa)
    assert stats.updated.item() == pytest.approx((total - pa[0].numel()) / total)
    assert stats.gate.item() == pytest.approx(stats.updated.item())


def test_planted_gate_per_channel():
    net_a, net_b, opt_a, opt_b = _twins()
    pa, pb = list(net_a.parameters()), list(net_b.parameters())
    for a, b in zip(pa, pb, strict=True):
        g = torch.randn_like(a)
        a.grad, b.grad = g.clone(), g.clone()
    pb[0].grad[1] = -pa[0].grad[1]  # row 1 of the first weight disagrees, rows 0 and 2 agree
    w0, buf0 = pa[0].detach().clone(), opt_a.state[pa[0]]["momentum_buffer"].clone()
    agreement_update(opt_a, opt_b, pa, pb, tau=0.4, granularity="channel")
    for p, opt in ((pa[0], opt_a), (pb[0], opt_b)):
        assert torch.equal(p[1], w0[1]) and torch.equal(opt.state[p]["momentum_buffer"][1], buf0[1])
        assert not torch.equal(p[0], w0[0]) and not torch.equal(p[2], w0[2])


def test_masked_step_restores_adam_state_and_fresh_state():
    net_a, _, opt_a, _ = _twins(torch.optim.Adam, lr=0.01, weight_decay=5e-4)
    params = list(net_a.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    before = _snap(net_a, opt_a)
    masks = [torch.tensor(False)] + [torch.tensor(True)] * 3
    masked_step(opt_a, params, masks)
    assert torch.equal(params[0], before[0][0])
    assert all(torch.equal(opt_a.state[params[0]][k], v) for k, v in before[1][0].items())
    assert not torch.equal(params[1], before[0][1])
    # a fresh SGD optimiser: a blocked tensor gets no momentum buffer (or a zero one: the same) and no change
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    w = net.weight.detach().clone()
    net.weight.grad, net.bias.grad = torch.ones_like(net.weight), torch.ones_like(net.bias)
    masked_step(opt, [net.weight, net.bias], [torch.tensor(False), torch.tensor(True)])
    assert torch.equal(net.weight, w)
    assert not opt.state.get(net.weight, {}).get("momentum_buffer", torch.zeros(1)).any()


def test_sync_free_masked_step_ends_where_the_flagged_one_does():
    """The CUDA path (no host sync: every tensor snapshotted and restored) against the CPU path (fully blocked
    tensors skipped), over three SGD steps with momentum and weight decay, masks fully blocked, fully
    passed and mixed: parameters and momentum buffers equal bit for bit."""
    nets, opts = [], []
    for _ in range(2):
        net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        net.load_state_dict(nets[0].state_dict()) if nets else None
        nets.append(net)
        opts.append(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4))
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        masks = [
            torch.tensor(step != 1),
            torch.rand(3, generator=g) < 0.5,
            torch.rand(2, 1, generator=g) < 0.5,
        ]
        masks.append(torch.tensor(step == 0))
        grads = [torch.randn(p.shape, generator=g) for p in nets[0].parameters()]
        for net, opt, free in zip(nets, opts, (False, True), strict=True):
            for p, gr in zip(net.parameters(), grads, strict=True):
                p.grad = gr.clone()
            masked_step(opt, list(net.parameters()), masks, sync_free=free)
    for pa, pb in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(pa, pb)
        ma = opts[0].state.get(pa, {}).get("momentum_buffer")
        mb = opts[1].state[pb]["momentum_buffer"]
        assert torch.equal(mb, torch.zeros_like(mb) if ma is None else ma)


# ------------------------------------------------------------------------------------------------ CDAS
def _labels(n=203, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(torch.tensor([0.4, 0.25, 0.15, 0.15, 0.05]), n, True, generator=g)[:n] % k


def _epoch(mode, labels, bs=16, seed=0):
    s = CDASampler(labels, 5, bs, mode)
    return list(s.epoch(torch.Generator().manual_seed(seed)))


def test_cdas_pairs_match_classes_are_disjoint_reverse_and_cover_the_same_multiset():
    labels = _labels()
    pairs = _epoch("cdas", labels)
    assert len(pairs) >= 8 and len(pairs) % 2 == 0
    for a, b in pairs:
        assert torch.equal(torch.bincount(labels[a], minlength=5), torch.bincount(labels[b], minlength=5))
        assert not set(a.tolist()) & set(b.tolist())
        assert len(a) >= 2
    for k in range(0, len(pairs), 2):  # step 2 (4) is step 1 (3) reversed
        assert torch.equal(pairs[k + 1][0], pairs[k][1]) and torch.equal(pairs[k + 1][1], pairs[k][0])
    seen_a = Counter(torch.cat([a for a, _ in pairs]).tolist())
    seen_b = Counter(torch.cat([b for _, b in pairs]).tolist())
    assert seen_a == seen_b
    assert len(seen_a) > 0.9 * len(labels)  # one pass over (nearly) all data
    # steps 1 and 3: the random side is X^a in step 1 and X^b in step 3; both sizes equal the batch
    assert len(pairs[0][0]) == 16 and len(pairs[2][1]) == 16


def test_cdas_no_reverse_identical_and_random():
    labels = _labels()
    nr = _epoch("cdas_no_reverse", labels)
    for (a, b), (a2, _) in zip(nr, nr[1:], strict=False):
        assert torch.equal(torch.bincount(labels[a], minlength=5), torch.bincount(labels[b], minlength=5))
        assert not set(a.tolist()) & set(b.tolist())
        assert not torch.equal(a2, b)  # no reversed step
    ident = _epoch("identical", labels)
    assert all(torch.equal(a, b) for a, b in ident)
    assert sorted(torch.cat([a for a, _ in ident]).tolist()) == list(range(len(labels)))
    rnd = _epoch("random", labels)
    for side in (0, 1):  # each network makes its own full pass
        assert sorted(torch.cat([p[side] for p in rnd]).tolist()) == list(range(len(labels)))
    assert not any(torch.equal(a, b) for a, b in rnd)
    assert sum(len(set(a.tolist()) & set(b.tolist())) for a, b in rnd) < len(labels) // 2


def test_cdas_class_short_falls_back_and_state_round_trips():
    labels = torch.tensor([0] * 30 + [1] * 3)  # class 1 is nearly exhausted at once
    s = CDASampler(labels, 2, 8, "cdas")
    gen = torch.Generator().manual_seed(3)
    pairs = list(s.epoch(gen))
    for a, b in pairs:
        assert torch.equal(torch.bincount(labels[a], minlength=2), torch.bincount(labels[b], minlength=2))
        assert not set(a.tolist()) & set(b.tolist())
    # resume mid-epoch from the state + generator
    s = CDASampler(labels, 2, 8, "cdas")
    gen = torch.Generator().manual_seed(5)
    s.start_epoch()
    head = [s.next(gen) for _ in range(3)]
    st, gst = copy.deepcopy(s.state_dict()), gen.get_state()
    tail = [s.next(gen) for _ in range(3)]
    s2 = CDASampler(labels, 2, 8, "cdas")
    s2.load_state_dict(st)
    gen2 = torch.Generator()
    gen2.set_state(gst)
    assert head
    for x, y in zip(tail, [s2.next(gen2) for _ in range(3)], strict=True):
        assert (x is None and y is None) or all(torch.equal(u, v) for u, v in zip(x, y, strict=True))


# --------------------------------------------------------------------------------------------- cosines
def test_cosines_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4, 2, 2), (3,), (5, 6), ()]
    va = [torch.randn(s, generator=g) for s in shapes]
    vb = [torch.randn(s, generator=g) for s in shapes]
    vb[2][1] = 0.0  # a zero row: cosine 0 by convention
    vb[1] = 2.5 * va[1]  # parallel: cosine 1
    tensor = pair_cosines(va, vb, "tensor")
    for c, a, b in zip(tensor, va, vb, strict=True):
        assert c.shape == () and c.item() == pytest.approx(
            F.cosine_similarity(a.flatten(), b.flatten(), 0).item(), abs=1e-6
        )
    assert tensor[1].item() == pytest.approx(1.0, abs=1e-6)
    channel = pair_cosines(va, vb, "channel")
    for c, a, b in zip(channel, va, vb, strict=True):
        rows = a.shape[0] if a.dim() else 1
        ref = F.cosine_similarity(a.reshape(rows, -1), b.reshape(rows, -1), dim=1, eps=1e-30)
        assert torch.allclose(c.reshape(-1), ref, atol=1e-6)
    assert channel[2][1].item() == 0.0
    element = pair_cosines(va, vb, "element")
    for c, a, b in zip(element, va, vb, strict=True):
        assert c.shape == a.shape and torch.equal(c, torch.sign(a * b))
    cos, sizes = unit_cosines(va, vb, "channel")
    assert len(cos) == 3 + 3 + 5 + 1 and sizes.tolist() == [16] * 3 + [1] * 3 + [6] * 5 + [1]


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def trained():
    train, test = digits_data(96, 32, noise=0.4)
    ctx = make_ctx(train, test, epochs=3)
    opts = GALOptions(warmup_epochs=1)
    method = REGISTRY["gal"].build(opts, ctx)
    res = fit(method, ctx, name="gal", epochs=3)
    return method, ctx, res, opts


def test_gal_runs_logs_agreement_and_round_trips_state(trained):
    method, ctx, res, opts = trained
    assert [r["epoch"] for r in res.log] == [1, 2, 3]
    assert np.isnan(res.log[0]["agreement_ratio"])
    assert all(0.0 <= r["agreement_ratio"] <= 1.0 for r in res.log[1:])
    assert all(np.isfinite(r["c_loss"]) and np.isfinite(r["train_loss"]) for r in res.log[1:])
    assert [r["step"] for r in res.steps] == list(range(len(res.steps)))
    warm = [r for r in res.steps if r["epoch"] == 1]
    assert warm and all(np.isnan(r["agreement_ratio"]) and np.isfinite(r["loss"]) for r in warm)
    log = [r for r in res.steps if r["epoch"] > 1]
    assert {r["epoch"] for r in log} == {2, 3}
    assert all(r["agreement_ratio"] == r["gate_ratio"] for r in log)
    for e in (2, 3):
        mean = np.mean([r["agreement_ratio"] for r in log if r["epoch"] == e])
        assert res.log[e - 1]["agreement_ratio"] == pytest.approx(mean, rel=1e-5)
    out = method.export()
    assert out.probs.shape == (96, 10)
    assert torch.allclose(out.probs, method.predict(ctx.train))
    assert set(out.extra) == {"joint_pseudo_label", "joint_confidence", "ab_disagree"}
    clone = REGISTRY["gal"].build(opts, ctx)
    clone.load_state_dict(method.state_dict())
    assert torch.equal(clone.predict(ctx.test), method.predict(ctx.test))
    assert clone.cloned
    for x, y in zip(clone.net_a.parameters(), method.net_a.parameters(), strict=True):
        assert torch.equal(x, y)
    assert clone.opt_a.param_groups[0]["lr"] == method.opt_a.param_groups[0]["lr"]


def test_scores_frame_with_the_joint_columns_validates(trained):
    method, ctx, _, _ = trained
    out = method.export()
    frame = scores_frame("gal", ctx, out, 0.5)
    validate(frame, score_schema("gal"), 10, "x")
    assert frame["ab_disagree"].dtype == pl.Boolean
    conf = frame["joint_confidence"].to_numpy()
    assert conf.dtype == np.float32 and (conf > 0).all() and (conf <= 1).all()
    pl_ = frame["joint_pseudo_label"].to_numpy()
    assert pl_.dtype == np.int32 and ((pl_ >= 0) & (pl_ < 10)).all()
    assert frame["pseudo_label"].to_list() == method.predict(ctx.train).argmax(-1).tolist()  # θC's


def test_clone_gives_identical_twins_and_identical_sampling_keeps_them_identical():
    train, test = digits_data(64, 16)
    ctx = make_ctx(train, test, epochs=2)
    method = REGISTRY["gal"].build(GALOptions(warmup_epochs=1, sampling="identical"), ctx)
    method.train_epoch(0)
    assert not method.cloned
    method._clone()
    for x, y, z in zip(
        method.net_a.parameters(), method.net_b.parameters(), method.theta.parameters(), strict=True
    ):
        assert torch.equal(x, y) and torch.equal(x, z) and x is not z
    assert method.opt_a.param_groups[0]["lr"] == method.opt.param_groups[0]["lr"] and not method.opt_a.state
    res = method.train_epoch(1)  # same batch, same augmentation, same weights: full agreement
    assert res.extra["agreement_ratio"] > 0.99
    for x, y in zip(method.net_a.parameters(), method.net_b.parameters(), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    "over",
    [
        dict(update="random"),
        dict(agreement_on="update", granularity="channel"),
        dict(granularity="element", third_net=False, sampling="random"),
        dict(sampling="cdas_no_reverse", tau=1.0),
        dict(joint_from="train"),
        dict(joint_from="train", sampling="identical"),
    ],
)
def test_option_variants_run(over):
    train, test = digits_data(64, 16, noise=0.4)
    ctx = make_ctx(train, test, epochs=1)
    opts = GALOptions(warmup_epochs=0, **over)
    method = REGISTRY["gal"].build(opts, ctx)
    res = fit(method, ctx, name="gal", epochs=1)
    assert 0.0 <= res.log[0]["agreement_ratio"] <= 1.0
    assert res.steps and all(
        0.0 <= r["agreement_ratio"] <= 1.0 and 0.0 <= r["gate_ratio"] <= 1.0 for r in res.steps
    )
    probs = method.predict(test)
    assert probs.shape == (16, 10) and torch.allclose(probs.sum(-1), torch.ones(16), atol=1e-5)
    if not opts.third_net:
        assert method.net_c is None
    clone = REGISTRY["gal"].build(opts, ctx)
    clone.load_state_dict(method.state_dict())
    assert torch.equal(clone.predict(test), probs)


def _forward_counts(method) -> dict[str, int]:
    """Hooks counting forward calls per network and mode: keys like 'a.eval', 'c.train'."""
    counts: dict[str, int] = {}

    def hook(name):
        def count(module, args, out):
            key = f"{name}.{'train' if module.training else 'eval'}"
            counts[key] = counts.get(key, 0) + 1

        return count

    for name in ("a", "b", "c"):
        getattr(method, f"net_{name}").register_forward_hook(hook(name))
    return counts


@pytest.mark.parametrize("sampling", ["cdas", "identical"])
def test_joint_from_train_drops_the_eval_forwards_and_keeps_thetac_steps(sampling):
    """`joint_from: train` trains θC from A's and B's own training passes: no eval-mode forward of A or B
    during the epoch, and θC takes as many steps as with the eval-mode joint (an even number of CDAS steps
    here), on targets that are a mean of two distributions."""
    train, test = digits_data(128, 16, noise=0.4)
    runs = {}
    for joint in ("eval", "train"):
        ctx = make_ctx(train, test, epochs=2)
        method = REGISTRY["gal"].build(GALOptions(warmup_epochs=0, sampling=sampling, joint_from=joint), ctx)
        method._clone()
        counts = _forward_counts(method)
        res = method.train_epoch(0)
        steps = len(res.steps["agreement_ratio"])
        runs[joint] = (counts, steps)
    (eval_counts, steps), (train_counts, steps_t) = runs["eval"], runs["train"]
    assert steps == steps_t and steps % 2 == 0
    assert eval_counts["a.eval"] == eval_counts["b.eval"] == steps
    assert "a.eval" not in train_counts and "b.eval" not in train_counts
    assert train_counts["c.train"] == eval_counts["c.train"] == steps


def test_joint_from_train_needs_reversed_or_identical_batches():
    for sampling in ("random", "cdas_no_reverse"):
        with pytest.raises(ValueError, match=f"joint_from: train needs .* not sampling {sampling}"):
            GALOptions(joint_from="train", sampling=sampling)


class _Killed(Exception):
    pass


def _gal_run(tmp_path, kill_after=None):
    train, test = digits_data(96, 32, noise=0.4)
    ctx = make_ctx(train, test, epochs=4)
    method = REGISTRY["gal"].build(GALOptions(warmup_epochs=1, update="random"), ctx)

    def on_epoch(row):
        if row["epoch"] == kill_after:
            raise _Killed

    kw = dict(name="gal", epochs=4, checkpoint=tmp_path / "gal.pt", fingerprint="fp", resume=True)
    return fit(method, ctx, on_epoch=on_epoch, **kw), method


def test_resume_after_the_clone_matches_the_uninterrupted_run(tmp_path):
    full, m_full = _gal_run(tmp_path / "a")
    with pytest.raises(_Killed):
        _gal_run(tmp_path / "b", kill_after=3)  # killed after two post-warm-up epochs
    res, m_res = _gal_run(tmp_path / "b")
    assert [r["epoch"] for r in res.log] == [1, 2, 3, 4]
    assert len(res.steps) == len(full.steps) > 0 and res.steps[0].keys() == full.steps[0].keys()
    for key in full.steps[0]:  # NaN during the warm-up: compare as arrays
        np.testing.assert_array_equal([r[key] for r in res.steps], [r[key] for r in full.steps])
    assert torch.equal(m_res.predict(m_res.ctx.test), m_full.predict(m_full.ctx.test))
    assert [r["agreement_ratio"] for r in res.log[1:]] == [r["agreement_ratio"] for r in full.log[1:]]


# ------------------------------------------------------------------------------------------- behaviour
def _accuracies(name: str, opts: dict, noise: float, epochs: int = 12) -> list[float]:
    if noise == 0.4 and epochs == 12:  # the shared setting: CE trains once per session
        return [r["test_acc"] for r in trained_at_40(name, tuple(sorted(opts.items())))[2].log]
    train, test = digits_data(800, 400, noise=noise)
    ctx = make_ctx(
        train, test, epochs=epochs, augment={"pad_crop": 0}, model_kwargs={"channels": [16, 32, 64, 128]}
    )
    spec = REGISTRY[name]
    method = spec.build(spec.options(**opts), ctx)
    return [r["test_acc"] for r in fit(method, ctx, name=name, epochs=epochs).log]


@pytest.mark.parametrize(
    "noise",  # 40%: the shared setting, on the worker where CE trains once (trained_at_40); 60%: its own
    [pytest.param(0.4, marks=pytest.mark.xdist_group("ce_at_40")), 0.6],
)
def test_gal_beats_ce_and_keeps_its_best_accuracy_under_symmetric_noise(noise):
    ce = _accuracies("ce", {}, noise)
    gal = _accuracies("gal", {"warmup_epochs": 4}, noise)
    print(f"{noise:.0%}: ce last {ce[-1]:.3f} best {max(ce):.3f}; gal last {gal[-1]:.3f} best {max(gal):.3f}")
    assert gal[-1] > ce[-1] + 0.05
    assert max(gal) - gal[-1] < max(ce) - ce[-1]  # CE memorises the noise after its best epoch, GAL does not


@pytest.mark.xdist_group("ce_at_40")  # one worker: CE trains once (trained_at_40)
def test_gal_with_training_pass_joint_beats_ce_at_40_percent():
    ce = _accuracies("ce", {}, 0.4)
    gal = _accuracies("gal", {"warmup_epochs": 4, "joint_from": "train"}, 0.4)
    print(f"ce last {ce[-1]:.3f} best {max(ce):.3f}; gal last {gal[-1]:.3f} best {max(gal):.3f}")
    assert gal[-1] > ce[-1] + 0.05
    assert max(gal) - gal[-1] < max(ce) - ce[-1]


def _last_epoch_agreement(noise: float) -> dict[str, float]:
    train, test = digits_data(800, 200, noise=noise)
    ctx = make_ctx(
        train, test, epochs=8, augment={"pad_crop": 0}, model_kwargs={"channels": [16, 32, 64, 128]}
    )
    method = REGISTRY["gal"].build(GALOptions(warmup_epochs=4, update="all", third_net=False), ctx)
    steps = pl.DataFrame(fit(method, ctx, name="gal", epochs=8).steps)
    assert (steps.filter(pl.col("epoch") > 4)["agreement_ratio"] == 1.0).all()  # every pair updated
    last = steps.filter(pl.col("epoch") == 8)
    return {c: last[c].mean() for c in ("gate_ratio", "unit_gate_ratio", "mean_cosine")}


def test_figure_1_agreement_falls_with_noise():
    """The paper's Figure 1 experiment: both networks train freely on class-matched batches; with noisy
    labels their gradients agree less (lower share of tensors passing τ, lower mean cosine)."""
    clean, noisy = _last_epoch_agreement(0.0), _last_epoch_agreement(0.5)
    print(f"last-epoch agreement: clean {clean}, 50% noise {noisy}")
    # Measured on an AMD EPYC host: scalar share 0.0122 clean against 0.0018 at 50%, mean cosine 0.124 against
    # 0.079. The same code on an Intel host gave a mean-cosine gap above 0.05 and a falling tensor share; the
    # share of *tensors* passing τ sits on a floor (the small tensors pass at any noise): 0.117 against 0.125
    # on the EPYC host. It must not rise past that floor's spread.
    assert noisy["gate_ratio"] < clean["gate_ratio"] / 3
    assert clean["mean_cosine"] > noisy["mean_cosine"] + 0.03
    assert noisy["unit_gate_ratio"] < clean["unit_gate_ratio"] + 0.02


def test_agreement_summary_takes_the_last_epoch_per_rate():
    from experiments.gal_figure1 import summary as agreement_summary

    rows = [
        dict(
            noise_rate=r,
            realised_rate=r,
            step=s,
            epoch=1 + s // 2,
            loss=1.0,
            agreement_ratio=v,
            gate_ratio=v,
            unit_gate_ratio=2 * v,
            mean_cosine=v - 0.5,
        )
        for r, vals in ((0.0, [0.9, 0.9, 0.4, 0.6]), (0.5, [0.2, 0.2, 0.1, 0.0]))
        for s, v in enumerate(vals)
    ]
    summ = agreement_summary(pl.DataFrame(rows))
    assert list(summ) == ["0", "0.5"]
    assert summ["0"]["gate_ratio"] == pytest.approx(0.5) and summ["0.5"]["unit_gate_ratio"] == pytest.approx(
        0.1
    )
    assert summ["0.5"]["mean_cosine"] == pytest.approx(-0.45) and summ["0.5"]["realised_rate"] == 0.5
    assert agreement_summary(pl.DataFrame(rows[:0], schema=pl.DataFrame(rows).schema)) == {}


def test_paper_preset_is_valid_and_builds_the_preact_backbone():
    from pathlib import Path

    from pipeline.models import build_model
    from pipeline.params import load_params

    p = load_params(Path(__file__).resolve().parents[1] / "experiments" / "gal_cifar10.yaml")
    t, g = p.train, REGISTRY["gal"].options.model_validate(p.method["gal"])
    assert (p.data.source, t.image_size, t.epochs, t.batch_size) == ("cifar10", 32, 200, 128)
    assert (t.lr, t.schedule, t.milestones, t.gamma, t.momentum, t.weight_decay) == (
        0.06,
        "step",
        [80, 150],
        0.1,
        0.9,
        5e-4,
    )
    assert (g.warmup_epochs, g.tau, g.epsilon, g.sampling, g.third_net) == (80, 0.4, 0.8, "cdas", True)
    net = build_model(t, 10, 3, seed=0)
    assert isinstance(net.stem.pool, nn.Identity) and net.stem.conv.stride == (1, 1)
    assert net.forward_features(torch.zeros(1, 3, 32, 32)).shape[-1] == 4  # 32 px / 8: no stem downsampling
