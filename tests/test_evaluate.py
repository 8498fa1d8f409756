"""Metrics (`pipeline.evaluate`) and the HTML report (`pipeline.report`) on small hand-made tables."""

from __future__ import annotations

import base64
import io
import json
import math
import re

import numpy as np
import polars as pl
import pytest
from conftest import tiny_image
from PIL import Image

from pipeline.data.images import encode_png
from pipeline.evaluate import collect_metrics, detection_metrics, headline, pr_curve, similarity_detection
from pipeline.params import parse_params
from pipeline.report import render_report
from pipeline.schemas import CLEANED, INGESTED, NOISY, SCORES

NAMES = ["cat", "dog", "eel"]
K = len(NAMES)
IDS = [10, 11, 12, 13, 14, 15]


@pytest.fixture(scope="module")
def params():
    return parse_params({"evaluate": {"gallery_size": 3}})


# ------------------------------------------------------------------------------------ detection_metrics
def test_detection_metrics_known_values() -> None:
    is_noisy = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    flagged = np.array([1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    score = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05])
    d = detection_metrics(is_noisy, flagged, score)
    # TP 2, FP 1, FN 1
    assert d["precision"] == pytest.approx(2 / 3)
    assert d["recall"] == pytest.approx(2 / 3)
    assert d["f1"] == pytest.approx(2 / 3)
    # positive above negative in 5 + 5 + 3 of 15 pairs
    assert d["auroc"] == pytest.approx(13 / 15)
    # positives at ranks 1, 2, 5: (1 + 1 + 3/5) / 3
    assert d["average_precision"] == pytest.approx((1 + 1 + 0.6) / 3)
    assert d["flagged"] == 3


def test_similarity_detection_ranks_low_similarity_as_suspect() -> None:
    is_noisy = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    # the noise scores above, negated and shifted into [-1, 1]: same ranking, so the same AUROC and AP
    sim = -np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05]) + 0.5
    d = similarity_detection(is_noisy, sim)
    assert d["auroc"] == pytest.approx(13 / 15)
    assert d["average_precision"] == pytest.approx((1 + 1 + 0.6) / 3)
    assert d["mean_noisy"] == pytest.approx(0.5 - (0.9 + 0.8 + 0.3) / 3)
    assert d["mean_clean"] == pytest.approx(0.5 - (0.7 + 0.2 + 0.1 + 0.4 + 0.05) / 5)
    with_nan = similarity_detection(np.append(is_noisy, True), np.append(sim, np.nan))  # NaN rows left out
    assert with_nan["auroc"] == pytest.approx(13 / 15)
    assert math.isnan(similarity_detection(np.zeros(3, bool), np.zeros(3))["auroc"])
    with pytest.raises(ValueError, match="differ in length"):
        similarity_detection(is_noisy, sim[:3])


def test_detection_metrics_perfect_and_inverted() -> None:
    is_noisy = np.array([1, 0, 1, 0], dtype=bool)
    d = detection_metrics(is_noisy, is_noisy.copy(), np.array([0.9, 0.1, 0.8, 0.2]))
    assert (d["precision"], d["recall"], d["f1"], d["auroc"], d["average_precision"]) == (1, 1, 1, 1, 1)
    d = detection_metrics(is_noisy, ~is_noisy, np.array([0.1, 0.9, 0.2, 0.8]))
    assert (d["precision"], d["recall"], d["f1"], d["auroc"]) == (0, 0, 0, 0)
    d = detection_metrics(is_noisy, np.array([0, 0, 1, 0], dtype=bool), np.array([0.6, 0.4, 0.9, 0.5]))
    assert (d["precision"], d["recall"]) == (1.0, 0.5) and d["f1"] == pytest.approx(2 / 3)


def test_detection_metrics_single_class_gives_nan_auroc() -> None:
    d = detection_metrics(np.zeros(4, dtype=bool), np.zeros(4, dtype=bool), np.full(4, 0.2))
    assert d["precision"] == 0 and d["recall"] == 0 and d["f1"] == 0 and d["flagged"] == 0
    assert math.isnan(d["auroc"]) and math.isnan(d["average_precision"])


def test_detection_metrics_length_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        detection_metrics(np.zeros(3, dtype=bool), np.zeros(2, dtype=bool), np.zeros(3))


# ---------------------------------------------------------------------------------------- frames
def noisy_frame(known: bool = True) -> pl.DataFrame:
    given = [0, 1, 2, 0, 1, 2]
    true = [0, 1, 2, 1, 2, 0]  # the last three labels are wrong
    return pl.DataFrame(
        {
            "sample_id": pl.Series(IDS, dtype=pl.Int64),
            "given_label": pl.Series(given, dtype=pl.Int32),
            "true_label": pl.Series(true if known else [None] * 6, dtype=pl.Int32),
            "is_noisy": pl.Series(
                [g != t for g, t in zip(given, true, strict=True)] if known else [None] * 6, dtype=pl.Boolean
            ),
        }
    )


def scores_frame(method: str, pseudo: list[int], noise: list[float], flagged: list[bool]) -> pl.DataFrame:
    probs = [[0.8 if j == p else 0.1 for j in range(K)] for p in pseudo]
    return pl.DataFrame(
        {
            "sample_id": pl.Series(IDS, dtype=pl.Int64),
            "method": [method] * 6,
            "given_label": pl.Series([0, 1, 2, 0, 1, 2], dtype=pl.Int32),
            "pseudo_label": pl.Series(pseudo, dtype=pl.Int32),
            "confidence": pl.Series([0.8] * 6, dtype=pl.Float32),
            "noise_score": pl.Series(noise, dtype=pl.Float32),
            "is_flagged": flagged,
            "probs": pl.Series(probs, dtype=pl.List(pl.Float32)),
            "grad_similarity": pl.Series([None] * 6, dtype=pl.Float32),
        }
    )


def all_scores() -> dict[str, pl.DataFrame]:
    return {
        # ce: flags 12, 13, 14 (TP 13, 14; FP 12; FN 15); pseudo right on 10, 11, 13, 14 (4/6)
        "ce": scores_frame(
            "ce", [0, 1, 0, 1, 2, 2], [0.1, 0.2, 0.6, 0.9, 0.8, 0.3], [False, False, True, True, True, False]
        ),
        # alt: perfect detector; pseudo equals truth everywhere
        "alt": scores_frame(
            "alt", [0, 1, 2, 1, 2, 0], [0.1, 0.2, 0.3, 0.9, 0.8, 0.7], [False, False, False, True, True, True]
        ),
    }


def cleaned_frame() -> pl.DataFrame:
    # 10, 11 keep (right); 12 keep (right); 13 relabel to 1 (right); 14 relabel to 0 (wrong); 15 drop
    return pl.DataFrame(
        {
            "sample_id": pl.Series(IDS, dtype=pl.Int64),
            "given_label": pl.Series([0, 1, 2, 0, 1, 2], dtype=pl.Int32),
            "given_class": ["cat", "dog", "eel", "cat", "dog", "eel"],
            "cleaned_label": pl.Series([0, 1, 2, 1, 0, None], dtype=pl.Int32),
            "cleaned_class": ["cat", "dog", "eel", "dog", "cat", None],
            "action": ["keep", "keep", "keep", "relabel", "relabel", "drop"],
            "confidence": pl.Series([0.9, 0.8, 0.7, 0.9, 0.85, 0.7], dtype=pl.Float32),
            "reason": ["r"] * 6,
            "methods_agreeing": pl.Series([1] * 6, dtype=pl.Int32),
        }
    )


def logs() -> dict[str, pl.DataFrame]:
    return {
        "ce": pl.DataFrame(
            {
                "epoch": [1, 2, 3],
                "test_acc": [0.5, 0.8, 0.7],
                "seconds": [1.0, 2.0, 3.0],
                "label_precision": [0.6, 0.7, 0.8],
            }
        ),
        "alt": pl.DataFrame(
            {"epoch": [1, 2], "test_acc": [0.6, 0.9], "seconds": [3.0, 6.0], "label_precision": [0.7, 0.9]}
        ),
    }


RETRAIN = {"test_acc_last": 0.85, "test_acc_best": 0.9, "train_samples": 5, "seconds": 2.5, "dropped": 1}
REPORT = {
    "kind": "symmetric",
    "requested_rate": 0.4,
    "realised_rate": 0.5,
    "estimate": None,
    "realised_matrix": [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]],
}


def test_hand_made_frames_satisfy_the_schemas() -> None:
    NOISY.check(noisy_frame().to_arrow(), "noisy")
    NOISY.check(noisy_frame(False).to_arrow(), "noisy")
    for s in all_scores().values():
        SCORES.check(s.to_arrow(), "scores")
    CLEANED.check(cleaned_frame().to_arrow(), "cleaned")


# ---------------------------------------------------------------------------------------------- pr_curve
def test_pr_curve_points_and_order() -> None:
    c = pr_curve(noisy_frame(), all_scores()["alt"])
    assert c is not None and c.columns == ["recall", "precision"]
    assert c["recall"].is_sorted()
    assert c["recall"].min() == 0.0 and c["recall"].max() == 1.0
    assert c.filter(pl.col("recall") == 1.0)["precision"].max() == 1.0  # perfect detector
    c = pr_curve(noisy_frame(), all_scores()["ce"])
    # ce ranks 13 (noisy), 14 (noisy), 12 (clean), 15 (noisy): at recall 2/3 precision is 1
    assert c.filter((pl.col("recall") - 2 / 3).abs() < 1e-4)["precision"].max() == pytest.approx(1.0)
    assert c.filter(pl.col("recall") == 1.0)["precision"].max() == pytest.approx(0.75)


def test_pr_curve_down_samples() -> None:
    rng = np.random.default_rng(0)
    n = 500
    noisy = pl.DataFrame(
        {
            "sample_id": np.arange(n),
            "true_label": np.zeros(n, dtype=np.int32),
            "is_noisy": rng.random(n) < 0.3,
        }
    )
    scores = pl.DataFrame({"sample_id": np.arange(n), "noise_score": rng.random(n).astype(np.float32)})
    c = pr_curve(noisy, scores, points=21)
    assert c is not None and c.height <= 21


def test_pr_curve_none_without_truth_or_without_both_classes() -> None:
    assert pr_curve(noisy_frame(known=False), all_scores()["ce"]) is None
    clean = noisy_frame().with_columns(
        pl.col("given_label").alias("true_label"), pl.lit(False).alias("is_noisy")
    )
    assert pr_curve(clean, all_scores()["ce"]) is None


# --------------------------------------------------------------------------------------- collect_metrics
def test_collect_metrics_known_truth(params) -> None:
    m = collect_metrics(noisy_frame(), all_scores(), logs(), cleaned_frame(), RETRAIN, REPORT, params)
    json.dumps(m, allow_nan=False)  # JSON-ready
    assert m["noise"] == {
        "kind": "symmetric",
        "requested_rate": 0.4,
        "realised_rate": 0.5,
        "estimated_rate": None,
    }
    ce = m["methods"]["ce"]
    assert ce["test_acc_last"] == pytest.approx(0.7) and ce["test_acc_best"] == pytest.approx(0.8)
    assert ce["best_minus_last"] == pytest.approx(0.1)
    assert ce["seconds"] == 3.0 and ce["epochs"] == 3
    d = ce["detection"]
    assert d["precision"] == pytest.approx(2 / 3) and d["recall"] == pytest.approx(2 / 3)
    assert d["flagged"] == 3
    # noisy 13 (0.9), 14 (0.8), 15 (0.3) vs clean 10 (0.1), 11 (0.2), 12 (0.6): 3 + 3 + 2 of 9 pairs
    assert d["auroc"] == pytest.approx(8 / 9)
    assert ce["pseudo_label_accuracy"] == pytest.approx(4 / 6)
    alt = m["methods"]["alt"]
    assert alt["detection"]["f1"] == 1.0 and alt["detection"]["auroc"] == 1.0
    assert alt["pseudo_label_accuracy"] == 1.0
    assert alt["epochs"] == 2 and alt["seconds"] == 6.0 and alt["best_minus_last"] == 0.0
    c = m["cleaning"]
    assert c["methods"] == ["ce"]
    assert (c["keep"], c["relabel"], c["drop"]) == (3, 2, 1)
    assert c["label_accuracy_before"] == pytest.approx(0.5)
    assert c["label_accuracy_after"] == pytest.approx(4 / 5)  # 5 kept, 14 relabelled wrongly
    assert c["relabel_accuracy"] == pytest.approx(0.5)
    assert c["drop_precision"] == 1.0
    assert c["noisy_remaining"] == 1
    assert m["retrain"] == {
        "test_acc_last": 0.85,
        "test_acc_best": 0.9,
        "train_samples": 5,
        "seconds": 2.5,
        "ce_noisy_test_acc_last": pytest.approx(0.7),
    }


def test_collect_metrics_truth_unknown_omits_detection(params) -> None:
    report = {
        "kind": "none",
        "requested_rate": None,
        "realised_rate": None,
        "estimate": None,
        "realised_matrix": None,
    }
    m = collect_metrics(
        noisy_frame(known=False), all_scores(), logs(), cleaned_frame(), RETRAIN, report, params
    )
    json.dumps(m, allow_nan=False)
    for row in m["methods"].values():
        assert "detection" not in row and "pseudo_label_accuracy" not in row
        assert "test_acc_last" in row
    c = m["cleaning"]
    assert (c["keep"], c["relabel"], c["drop"]) == (3, 2, 1)
    for key in ("label_accuracy_before", "label_accuracy_after", "relabel_accuracy", "drop_precision"):
        assert key not in c


def test_collect_metrics_nan_becomes_null(params) -> None:
    noisy = noisy_frame().with_columns(
        pl.col("given_label").alias("true_label"), pl.lit(False).alias("is_noisy")
    )
    m = collect_metrics(noisy, all_scores(), logs(), cleaned_frame(), RETRAIN, REPORT, params)
    assert m["methods"]["ce"]["detection"]["auroc"] is None
    assert m["cleaning"]["drop_precision"] == 0.0
    json.dumps(m, allow_nan=False)


def test_headline_keeps_the_few_numbers_dvc_metrics_show_prints(params) -> None:
    m = collect_metrics(noisy_frame(), all_scores(), logs(), cleaned_frame(), RETRAIN, REPORT, params)
    h = headline(m)
    assert h == {
        "noise": {"realised_rate": 0.5, "estimated_rate": None},
        "methods": {
            "ce": {
                "test_acc_last": pytest.approx(0.7),
                "f1": pytest.approx(2 / 3),
                "auroc": pytest.approx(8 / 9),
            },
            "alt": {"test_acc_last": m["methods"]["alt"]["test_acc_last"], "f1": 1.0, "auroc": 1.0},
        },
        "cleaning": {
            "relabel": 2,
            "drop": 1,
            "label_accuracy_before": pytest.approx(0.5),
            "label_accuracy_after": pytest.approx(4 / 5),
        },
        "retrain": {"test_acc_last": 0.85},
    }
    # truth unknown: no detection figures, no label accuracies, still a valid summary
    unknown = dict(REPORT, kind="none", realised_rate=None)
    h = headline(
        collect_metrics(noisy_frame(False), all_scores(), logs(), cleaned_frame(), RETRAIN, unknown, params)
    )
    assert set(h["methods"]["ce"]) == {"test_acc_last"} and set(h["cleaning"]) == {"relabel", "drop"}


# ------------------------------------------------------------------------------------------------ report
def images_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sample_id": pl.Series(IDS, dtype=pl.Int64),
            "label": pl.Series([0, 1, 2, 1, 2, 0], dtype=pl.Int32),
            "image": pl.Series([encode_png(tiny_image(i, size=8)) for i in range(6)], dtype=pl.Binary),
            "source_path": pl.Series([f"img/{i}.png" for i in IDS], dtype=pl.String),
            "noisy_label": pl.Series([None] * 6, dtype=pl.Int32),
        }
    )


def _report(params, known: bool = True) -> str:
    INGESTED.check(images_frame().to_arrow(), "images")
    noisy = noisy_frame(known)
    m = collect_metrics(noisy, all_scores(), logs(), cleaned_frame(), RETRAIN, REPORT, params)
    retrain_log = pl.DataFrame({"epoch": [1, 2], "test_acc": [0.7, 0.85], "seconds": [1.0, 2.5]})
    return render_report(
        metrics=m,
        noisy=noisy,
        scores=all_scores(),
        logs=logs(),
        cleaned=cleaned_frame(),
        retrain_log=retrain_log,
        report=REPORT if known else {**REPORT, "realised_matrix": None},
        class_names=NAMES,
        images=images_frame(),
        params=params,
    )


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_report_method_table_figures_and_gallery(params) -> None:
    html = _report(params)
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "<h2>Methods</h2>" in html and "<td>ce</td>" in html and "<td>alt</td>" in html
    assert "<th>AUROC</th>" in html and "<td>0.700</td>" in html  # ce test acc (last)
    assert "3 / 2 / 1" in html  # keep / relabel / drop
    assert "data:image/png;base64" in html
    gallery = html.split('<div class="gallery">', 1)[1]
    cells = gallery.count('<div class="cell">')
    assert cells == 3  # evaluate.gallery_size
    # most suspicious by mean noise_score over clean.methods (ce): 13 (0.9), 14 (0.8), 12 (0.6)
    order = [int(x) for x in re.findall(r"<br>id (\d+)<br>", gallery)]
    assert order == [13, 14, 12]
    assert (
        "given: <b>cat</b>" in gallery and "suggested: dog (relabel)" in gallery and "truth: dog" in gallery
    )
    pngs = _pngs(html)
    # test acc, label precision, PR, score histograms, realised matrix + 3 gallery thumbnails
    assert len(pngs) == 5 + 3
    for blob in pngs:
        Image.open(io.BytesIO(blob)).verify()


def test_report_truth_unknown(params) -> None:
    html = _report(params, known=False)
    assert "<td>ce</td>" in html
    assert "truth:" not in html
    assert len(_pngs(html)) == 1 + 3  # only the test-accuracy curve, plus the thumbnails


def test_report_escapes_class_names(params) -> None:
    noisy = noisy_frame()
    names = ["<b>x</b>", "dog", "eel"]
    cleaned = cleaned_frame().with_columns(
        pl.when(pl.col("given_label") == 0)
        .then(pl.lit(names[0]))
        .otherwise(pl.col("given_class"))
        .alias("given_class")
    )
    m = collect_metrics(noisy, all_scores(), logs(), cleaned, RETRAIN, REPORT, params)
    html = render_report(
        metrics=m,
        noisy=noisy,
        scores=all_scores(),
        logs=logs(),
        cleaned=cleaned,
        retrain_log=None,
        report=REPORT,
        class_names=names,
        images=images_frame(),
        params=params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"gallery_size": 6})}),
    )
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_report_shows_grad_similarity_detection_per_method(params) -> None:
    """A method whose grad_similarity is low exactly on the three wrong labels gets AUROC 1 in the report's
    gradient-similarity table and in metrics; a method without scores shows "–" and no histogram."""
    noisy = noisy_frame(True)
    scores = all_scores()
    scores["ce"] = scores["ce"].with_columns(
        grad_similarity=pl.Series([0.6, 0.5, 0.4, -0.2, 0.0, -0.1], dtype=pl.Float32)
    )
    m = collect_metrics(noisy, scores, logs(), cleaned_frame(), RETRAIN, REPORT, params)
    assert m["methods"]["ce"]["grad_similarity"]["auroc"] == pytest.approx(1.0)
    assert m["methods"]["alt"]["grad_similarity"]["auroc"] is None  # all null: not computed
    html = render_report(
        metrics=m,
        noisy=noisy,
        scores=scores,
        logs=logs(),
        cleaned=cleaned_frame(),
        retrain_log=None,
        report=REPORT,
        class_names=NAMES,
        images=images_frame(),
        params=params,
    )
    section = html.split("<h2>Gradient similarity</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<tr><td>ce</td><td>1.000</td>" in section and "<tr><td>alt</td><td>–</td>" in section
    assert len(_pngs(section)) == 1  # the clean / mislabeled histogram of the one method that has the column
