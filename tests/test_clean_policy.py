"""The safe cleaning policy: every voter must agree before a label changes, the share changed is capped at
the estimated noise rate, and the noise estimate warns when its models are too weak to trust."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from helpers import TINY_ARCH, digits

from pipeline.clean import clean_labels
from pipeline.config import TrainParams
from pipeline.noise.estimate import fold_estimate, model_warning

NAMES = ["a", "b", "c"]


def _scores(name, given, pseudo, conf, noise):
    n = len(given)
    probs = np.full((n, 3), 0.0, dtype=np.float32)
    for i, (p, c) in enumerate(zip(pseudo, conf, strict=True)):
        probs[i] = (1 - c) / 2
        probs[i, p] = c
    return pl.DataFrame(
        {
            "sample_id": np.arange(n), "method": [name] * n, "given_label": np.asarray(given, dtype=np.int32),
            "pseudo_label": np.asarray(pseudo, dtype=np.int32),
            "confidence": np.asarray(conf, dtype=np.float32),
            "noise_score": np.asarray(noise, dtype=np.float32), "is_flagged": np.asarray(noise) >= 0.5,
            "probs": list(probs),
        }
    )  # fmt: skip


def _two():
    given = [0, 0, 0, 0, 0]
    return {  # rows: both relabel to 1; both say wrong (one relabels, one drops); only x; only y; neither
        "x": _scores("x", given, [1, 1, 1, 0, 0], [0.9, 0.9, 0.9, 0.6, 0.9], [0.9, 0.8, 0.9, 0.2, 0.1]),
        "y": _scores("y", given, [1, 2, 0, 2, 0], [0.9, 0.4, 0.6, 0.5, 0.9], [0.9, 0.7, 0.2, 0.6, 0.1]),
    }


def test_all_voters_must_call_the_label_wrong():
    out = clean_labels(_two(), NAMES, relabel_confidence=0.8, drop_noise_score=0.5, agreement="all")
    assert out["action"].to_list() == ["relabel", "drop", "keep", "keep", "keep"]
    reasons = out["reason"].to_list()
    assert "disagree" in reasons[2] and "disagree" in reasons[3] and "disagree" not in reasons[4]
    majority = clean_labels(_two(), NAMES, relabel_confidence=0.8, drop_noise_score=0.5, agreement="majority")
    assert majority["action"].to_list()[:2] == ["relabel", "drop"]  # two voters: a majority is both


def test_the_share_changed_is_capped_most_suspicious_first():
    given = [0] * 10
    noise = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.1, 0.1]
    s = {"x": _scores("x", given, [0] * 10, [0.5] * 10, noise)}
    free = clean_labels(s, NAMES, relabel_confidence=0.8, drop_noise_score=0.5)
    assert (free["action"] == "drop").sum() == 8
    capped = clean_labels(s, NAMES, relabel_confidence=0.8, drop_noise_score=0.5, max_share=0.3)
    assert capped["action"].to_list() == ["drop"] * 3 + ["keep"] * 7
    assert "max_share 0.300" in capped["reason"][3] and "max_share" not in capped["reason"][8]
    with pytest.raises(ValueError, match="max_share"):
        clean_labels(s, NAMES, relabel_confidence=0.8, drop_noise_score=0.5, max_share=1.5)


def test_weak_estimate_models_are_warned_about_in_words():
    assert model_warning(0.55, 0.40, 0.7) is None  # implied 0.92 on the true labels
    msg = model_warning(0.20, 0.40, 0.7)
    assert "0.20 held-out accuracy" in msg and "about 0.33 on the true labels" in msg
    assert "noise.min_model_accuracy 0.7" in msg


def test_fold_models_stop_early_and_keep_their_best_epoch():
    train, _ = digits(128, 0, noise=0.4)
    cfg = TrainParams(**TINY_ARCH, image_size=8, batch_size=32, lr=0.1, progress=False, epochs=6)
    probs, accs, epochs = fold_estimate(
        train, cfg, num_classes=10, folds=2, epochs=6, seed=0, device=torch.device("cpu"), patience=1
    )
    assert probs.shape == (128, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert all(1 <= e <= 6 for e in epochs) and all(0 <= a <= 1 for a in accs)
    held = [np.arange(128)]  # every row was predicted by one fold model
    assert (probs[held[0]].max(1) > 0).all()
    fixed, _, fixed_epochs = fold_estimate(
        train, cfg, num_classes=10, folds=2, epochs=2, seed=0, device=torch.device("cpu"), patience=None
    )
    assert fixed_epochs == [2, 2]  # no early stopping: the last epoch is kept
