"""The review round trip: the ranked queue (formula pinned), the decisions read back in (CSV, Label Studio
exports) and refused by name, reviewed decisions beating the vote in clean, reviewed samples left out of
the next queue, and the simulated reviewer's labels-fixed curve."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.datasets import load_digits

from pipeline.clean import clean_labels
from pipeline.detectors import DETECTORS, DetectorInput
from pipeline.errors import DataError
from pipeline.io import read_table, write_table
from pipeline.methods.base import score_table
from pipeline.params import parse_params
from pipeline.registry import score_schema
from pipeline.review.decisions import read_decisions
from pipeline.review.queue import review_priority, reviews_to_reach, simulate_reviews
from pipeline.review.simulation import review_simulation
from pipeline.runs.clean import run_clean
from pipeline.runs.ingest import run_ingest
from pipeline.runs.review import run_review
from pipeline.schemas import CLEANED, INGESTED, REVIEW_QUEUE

CLASSES = [str(i) for i in range(10)]


def _scores(name: str, given, noise, probs=None, flagged=None) -> pl.DataFrame:
    given = np.asarray(given)
    n = len(given)
    probs = np.full((n, 10), 0.1) if probs is None else np.asarray(probs)
    noise = np.asarray(noise, dtype=float)
    return score_table(
        name, np.arange(n), given, probs, noise_score=noise, flagged=flagged, flag_threshold=0.5, extra={}
    )


# --------------------------------------------------------------------------------------------- the queue
def test_priority_follows_the_documented_formula_with_pinned_numbers():
    given = [0, 1, 2, 3]
    probs = np.full((4, 10), 0.05)
    probs[:, 7] = 0.5  # the most likely class other than the given one
    probs[3, 3] = 0.9  # given class most likely: the suggestion is still another class
    a = _scores("a", given, [0.9, 0.2, 0.6, 0.1], probs)
    b = _scores("b", given, [0.9, 0.8, 0.2, 0.1], probs)
    out = review_priority({"a": a, "b": b}, CLASSES, disagreement_weight=0.5).sort("sample_id")
    p = np.array([0.9, 0.5, 0.4, 0.1])
    d = np.array([0.0, 0.6, 0.4, 0.0])  # 2 x std of two values = |a - b|
    gain = p * (1 + 0.5 * d) / 1.5
    np.testing.assert_allclose(out["p_wrong"], p, atol=1e-6)
    np.testing.assert_allclose(out["disagreement"], d, atol=1e-6)
    np.testing.assert_allclose(out["expected_gain"], gain, atol=1e-6)
    assert out["rank"].to_list() == [1, 2, 3, 4] and gain[1] > gain[2]
    assert out["suggested_label"].to_list() == [7, 7, 7, 7] and out["voters_wrong"].to_list() == [2, 1, 1, 0]
    assert out["opinions"][0] == "a: wrong (0.90, predicts '7'); b: wrong (0.90, predicts '7')"
    one = review_priority({"a": a}, disagreement_weight=0.5).sort("sample_id")
    assert (one["disagreement"] == 0).all() and one.sort("rank")["sample_id"].to_list() == [0, 2, 1, 3]


def test_simulated_reviews_count_fixes_and_the_reviews_to_a_target_accuracy():
    wrong = np.array([True, False, True, True, False])
    fixed = simulate_reviews(np.array([0, 2, 3, 1, 4]), wrong)
    assert fixed.tolist() == [0, 1, 2, 3, 3, 3]
    assert reviews_to_reach(fixed, 3, 5, 0.99) == 3 and reviews_to_reach(fixed, 3, 5, 0.7) == 2
    assert reviews_to_reach(np.zeros(6), 3, 5) is None


# ------------------------------------------------------------------------------------------- decisions
IDS, GIVEN = np.arange(5), np.array([0, 1, 2, 3, 4])


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_decisions_csv_and_label_studio_exports_read_back(tmp_path):
    _write(
        tmp_path,
        "a.csv",
        "sample_id,decision,new_label,reviewer,note\n0,keep,,ann,\n1,relabel,7,ann,cat\n2,,,,\n",
    )
    ls = [
        {"data": {"sample_id": 3}, "annotations": [
            {"completed_by": {"email": "bo@x"}, "updated_at": "2026-12-01T10:00:00Z",
             "result": [{"type": "choices", "value": {"choices": ["[drop]"]}}]}]},
        {"data": {"sample_id": 4}, "annotations": [
            {"completed_by": 3, "result": [{"type": "choices", "value": {"choices": ["4"]}}]}]},
    ]  # fmt: skip
    _write(tmp_path, "b.json", json.dumps(ls))
    _write(tmp_path, "README.md", "skipped")
    out, log = read_decisions(tmp_path, IDS, GIVEN, CLASSES)
    assert out["sample_id"].to_list() == [0, 1, 3, 4] and log == []
    assert out["decision"].to_list() == ["keep", "relabel", "drop", "keep"]
    assert out["new_label"].to_list() == [None, 7, None, None]
    assert out["reviewer"].to_list() == ["ann", "ann", "bo@x", "3"]
    assert out["decided_at"][2] == "2026-12-01T10:00:00+00:00" and out["note"][1] == "cat"
    mini = _write(tmp_path / "m", "min.json", "") if (tmp_path / "m").mkdir() is None else None
    mini.write_text(json.dumps([{"sample_id": 2, "label": "[unsure]", "annotator": "cy"}]))
    out, _ = read_decisions(mini, IDS, GIVEN, CLASSES)
    assert out.row(0, named=True) | {"where": ""} == {
        "sample_id": 2, "decision": "unsure", "new_label": None, "reviewer": "cy", "decided_at": None,
        "note": None, "where": "",
    }  # fmt: skip


def test_different_reviewers_the_later_wins_and_it_is_logged(tmp_path):
    _write(
        tmp_path, "1.csv", "sample_id,decision,new_label,reviewer,decided_at\n0,drop,,ann,2026-12-01T12:00\n"
    )
    _write(
        tmp_path, "2.csv", "sample_id,decision,new_label,reviewer,decided_at\n0,keep,,bo,2026-12-01T09:00\n"
    )
    out, log = read_decisions(tmp_path, IDS, GIVEN, CLASSES)
    assert out["decision"].to_list() == ["drop"] and out["reviewer"].to_list() == ["ann"]
    assert len(log) == 1 and "ann" in log[0] and "overrules bo" in log[0]


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("u.csv", "sample_id,decision\n99,keep\n", "row 2: unknown sample_id 99"),
        (
            "c.csv",
            "sample_id,decision,new_label\n1,relabel,zebra\n",
            "row 2: new_label 'zebra' is not a known",
        ),
        ("r.csv", "sample_id,decision\n1,relabel\n", "row 2: relabel without a new_label"),
        ("d.csv", "sample_id,decision\n1,maybe\n", "row 2: decision 'maybe' must be one of"),
        ("t.csv", "sample_id,decision,decided_at\n1,keep,yesterday\n", "row 2: decided_at 'yesterday'"),
        ("m.csv", "id,verdict\n1,keep\n", "decisions need columns ['sample_id', 'decision']"),
        (
            "s.csv",
            "sample_id,decision,reviewer\n1,keep,ann\n1,drop,ann\n",
            "row 3: ann decided sample 1 differently",
        ),
        ("e.csv", "sample_id,decision,note\n1,keep,caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
        ("j.json", '{"data": 1}', "a JSON list of tasks"),
        ("k.json", '[{"data": {"id": 3}, "annotations": []}]', "task 0: no sample_id"),
        ("x.txt", "sample_id,decision\n", "must be a .csv or Label Studio .json"),
    ],
)
def test_bad_decision_files_are_refused_by_name(tmp_path, name, text, needle):
    path = _write(tmp_path, name, text)
    with pytest.raises(DataError) as e:
        read_decisions(path, IDS, GIVEN, CLASSES)
    assert str(e.value).startswith(str(path)) and needle in str(e.value), str(e.value)


def test_reviewed_decisions_beat_the_vote_and_unsure_leaves_it():
    given = np.array([0, 1, 2, 3, 4, 5])
    probs = np.full((6, 10), 0.02)
    probs[:, 9] = 0.82
    noise = [0.95, 0.95, 0.95, 0.1, 0.1, 0.95]
    votes = {"a": _scores("a", given, noise, probs), "b": _scores("b", given, noise, probs)}
    decisions = pl.DataFrame(
        {"sample_id": [0, 3, 4, 5], "decision": ["keep", "relabel", "drop", "unsure"],
         "new_label": [None, 8, None, None], "reviewer": ["ann", "ann", "bo", "cy"],
         "decided_at": [None, None, "2026-12-01T10:00:00", None]},
        schema_overrides={"new_label": pl.Int32},
    )  # fmt: skip
    kw = dict(relabel_confidence=0.8, drop_noise_score=0.5, agreement="all")
    out = clean_labels(votes, CLASSES, **kw, decisions=decisions)
    assert out["action"].to_list() == ["keep", "relabel", "relabel", "relabel", "drop", "relabel"]
    assert out["cleaned_label"].to_list() == [0, 9, 9, 8, None, 9]
    assert out["decided_by"].to_list() == ["review", "vote", "vote", "review", "review", "vote"]
    assert out["reviewer"].to_list() == ["ann", None, None, "ann", "bo", "cy"]
    assert (
        out["reason"][0] == "reviewed by ann: keep" and "cy: unsure, so the vote stands" in out["reason"][5]
    )
    capped = clean_labels(votes, CLASSES, **kw, max_share=0.34, decisions=decisions)  # 2 of 6 rows
    assert capped["action"].to_list()[3:5] == ["relabel", "drop"]  # reviewed: outside the cap
    assert (capped["action"] != "keep").sum() == 4  # 2 of the 3 vote changes + the 2 reviewed


# ---------------------------------------------------------------------------------- the stages, end to end
@pytest.fixture()
def workspace(tmp_path) -> tuple[Path, object, np.ndarray]:
    """Digits (100 training images) with 40% of the labels flipped, knn and probe score tables on the raw
    pixels, and the clean stage's cleaned file: the review stage's inputs."""
    raw = {
        "data": {"max_per_split": 100},
        "detectors": ["knn", "probe"],
        "clean": {"methods": ["knn", "probe"]},
    }
    params = parse_params(raw, backbones=False)
    run_ingest(params, tmp_path / "ingested")
    train, _ = read_table(tmp_path / "ingested/train.parquet", INGESTED)
    test, _ = read_table(tmp_path / "ingested/test.parquet", INGESTED)
    digits = load_digits()
    ids = train["sample_id"].to_numpy()
    assert np.array_equal(digits.target[ids], train["label"].to_numpy())  # digits ids are load_digits() rows
    rng = np.random.default_rng(0)
    truth = train["label"].to_numpy()
    flip = rng.random(len(ids)) < 0.4
    given = np.where(flip, (truth + rng.integers(1, 10, len(ids))) % 10, truth)

    def feats(rows):
        x = digits.data[rows].astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    data = DetectorInput(feats(ids), given, feats(test["sample_id"].to_numpy()), 10, seed=0)
    for name in ("knn", "probe"):
        spec = DETECTORS[name]
        res = spec.detect(spec.options(), data)
        frame = score_table(name, ids, given, res.probs, noise_score=res.noise_score, flagged=res.flagged,
                            flag_threshold=0.5, extra=res.extra)  # fmt: skip
        write_table(tmp_path / f"scores/{name}.parquet", frame, score_schema(name), CLASSES)
    run_clean(params, tmp_path / "scores", tmp_path / "c/labels.parquet", tmp_path / "c/labels.csv",
              ingested_dir=tmp_path / "ingested")  # fmt: skip
    return tmp_path, params, given != truth


def test_review_stage_writes_the_queue_page_and_label_studio_files(workspace):
    ws, params, wrong = workspace
    run_review(params, ws / "scores", ws / "c/labels.parquet", ws / "ingested", ws / "review")
    queue, _ = read_table(ws / "review/queue.parquet", REVIEW_QUEUE)
    assert queue.height == 100 and queue["rank"].to_list() == list(range(1, 101))  # budget 200 > 100 rows
    assert queue["expected_gain"].is_sorted(descending=True)
    assert (queue["source_index"] == queue["sample_id"]).all() and queue["decision"].null_count() == 100
    ids = queue["sample_id"].to_numpy()
    pos = {s: i for i, s in enumerate(read_table(ws / "ingested/train.parquet", INGESTED)[0]["sample_id"])}
    first = np.array([wrong[pos[s]] for s in ids[:20]])
    assert first.mean() >= 0.85, first.mean()  # the queue's head holds the wrong labels
    assert pl.read_csv(ws / "review/queue.csv").columns == list(queue.columns)
    tasks = json.loads((ws / "review/label_studio.json").read_text())
    assert len(tasks) == 100 and tasks[0]["data"]["image"].startswith("data:image/png;base64,")
    pred = tasks[0]["predictions"][0]
    assert pred["model_version"] == "gradclean: knn+probe" and pred["score"] == pytest.approx(
        queue["expected_gain"][0], abs=1e-6
    )
    assert pred["result"][0]["value"]["choices"] == [queue["suggested_class"][0]]
    xml = (ws / "review/label_studio.xml").read_text()
    assert '<Choice value="9"/>' in xml and '<Choice value="[drop]"/>' in xml
    page = (ws / "review/review.html").read_text()
    assert "gradcleanDecisionsCSV" in page and "http" not in page.replace("http-equiv", "")  # no network


def test_decisions_round_trip_through_clean_and_leave_the_queue(workspace):
    ws, params, wrong = workspace
    run_review(params, ws / "scores", ws / "c/labels.parquet", ws / "ingested", ws / "review")
    queue = pl.read_csv(ws / "review/queue.csv")
    top = queue.head(3)
    edited = top.with_columns(
        pl.Series("decision", ["relabel", "keep", "drop"]),
        pl.Series("new_label", [str(top["suggested_class"][0]), None, None], dtype=pl.String),
        pl.lit("ann").alias("reviewer"),
    )
    (ws / "decisions").mkdir()
    edited.write_csv(ws / "decisions/ann.csv")
    before = (ws / "c/labels.parquet").read_bytes()
    bad = ws / "bad"
    bad.mkdir()
    (bad / "x.csv").write_text("sample_id,decision\n123456,keep\n")
    with pytest.raises(DataError, match="row 2: unknown sample_id 123456"):
        run_clean(params, ws / "scores", ws / "c/labels.parquet", ws / "c/labels.csv",
                  ingested_dir=ws / "ingested", decisions=bad)  # fmt: skip
    assert (ws / "c/labels.parquet").read_bytes() == before  # nothing written on a refusal
    run_clean(params, ws / "scores", ws / "c/labels.parquet", ws / "c/labels.csv",
              ingested_dir=ws / "ingested", decisions=ws / "decisions")  # fmt: skip
    cleaned, _ = read_table(ws / "c/labels.parquet", CLEANED)
    got = cleaned.filter(pl.col("sample_id").is_in(top["sample_id"].implode())).sort("sample_id")
    want = dict(zip(top["sample_id"].to_list(), ["relabel", "keep", "drop"], strict=True))
    assert got["action"].to_list() == [want[s] for s in got["sample_id"]]
    assert set(got["decided_by"]) == {"review"} and set(got["reviewer"]) == {"ann"}
    assert (cleaned["decided_by"] == "review").sum() == 3
    run_review(params, ws / "scores", ws / "c/labels.parquet", ws / "ingested", ws / "review")
    again, _ = read_table(ws / "review/queue.parquet", REVIEW_QUEUE)
    assert again.height == 97 and not set(again["sample_id"]) & set(top["sample_id"])


def test_simulated_reviewer_fixes_more_with_the_queue_than_at_random(workspace):
    ws, params, wrong = workspace
    scores = {m: read_table(ws / f"scores/{m}.parquet", score_schema(m))[0] for m in ("knn", "probe")}
    ids = scores["knn"]["sample_id"]
    noisy = pl.DataFrame({"sample_id": ids, "is_noisy": wrong})
    metrics, html = review_simulation(noisy, scores, params)
    g, r = metrics["orders"]["gradclean"], metrics["orders"]["random"]
    assert set(metrics["orders"]) == {"gradclean", "random"}  # no CE table here: no CE order
    assert metrics["wrong_labels"] == int(wrong.sum()) == 34
    assert g["fixed_at_50"] >= 31 > 25 > r["fixed_at_50"]  # 31 = 90% of the 34 a perfect order fixes
    assert g["fixed_at_100"] == int(wrong.sum())  # 100 reviews of 100 rows fix every label
    assert g["reviews_to_99pct_accuracy"] < r["reviews_to_99pct_accuracy"]
    assert "What a review buys" in html and "data:image/png;base64" in html
    none, empty = review_simulation(
        noisy.with_columns(pl.lit(None, pl.Boolean).alias("is_noisy")), scores, params
    )
    assert none is None and empty == ""


# ------------------------------------------------------------------------------- the page, in a browser
def _chromium():
    """A headless Chromium driven by Selenium, or a skip naming what is missing."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])"
    )
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_bin = shutil.which("chromedriver")
    if not browser or not driver_bin:
        pytest.skip("no Chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    return webdriver, browser, driver_bin


def test_review_page_in_headless_chromium_exports_decisions_that_clean_applies(workspace, tmp_path_factory):
    webdriver, browser, driver_bin = _chromium()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ws, params, _ = workspace
    run_review(params, ws / "scores", ws / "c/labels.parquet", ws / "ingested", ws / "review")
    queue, _ = read_table(ws / "review/queue.parquet", REVIEW_QUEUE)
    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,560"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    try:
        driver.get((ws / "review/review.html").as_uri())
        driver.find_element(By.ID, "reviewer").send_keys("tester")
        driver.find_element(By.ID, "img").click()  # focus leaves the text box: keys now decide
        ActionChains(driver).send_keys("k").send_keys("r").send_keys("d").perform()
        assert driver.find_element(By.ID, "progress").text == f"3 of {queue.height} decided"
        shot = ws / "review_page.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("GRADCLEAN_SCREENSHOT"):  # how the README's screenshot is made
            shutil.copy(shot, os.environ["GRADCLEAN_SCREENSHOT"])
        driver.find_element(By.ID, "export").click()
        for _ in range(100):
            if (downloads / "decisions.csv").exists():
                break
            time.sleep(0.1)
        exported = (downloads / "decisions.csv").read_text()
    finally:
        driver.quit()
    rows = pl.read_csv(io.StringIO(exported), infer_schema=False)
    assert rows["sample_id"].to_list() == [str(s) for s in queue["sample_id"][:3]]
    assert rows["decision"].to_list() == ["keep", "relabel", "drop"] and set(rows["reviewer"]) == {"tester"}
    assert rows["new_label"][1] == queue["suggested_class"][1] and rows["decided_at"].null_count() == 0
    (ws / "decisions").mkdir()
    (ws / "decisions/page.csv").write_text(exported)
    run_clean(params, ws / "scores", ws / "c/labels.parquet", ws / "c/labels.csv",
              ingested_dir=ws / "ingested", decisions=ws / "decisions")  # fmt: skip
    cleaned, _ = read_table(ws / "c/labels.parquet", CLEANED)
    got = {r["sample_id"]: r for r in cleaned.filter(pl.col("decided_by") == "review").iter_rows(named=True)}
    first = queue["sample_id"].to_list()[:3]
    assert sorted(got) == sorted(first) and [got[s]["action"] for s in first] == ["keep", "relabel", "drop"]
    assert (
        got[first[1]]["cleaned_class"] == queue["suggested_class"][1]
        and got[first[0]]["reviewer"] == "tester"
    )
