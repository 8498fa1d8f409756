"""Near-duplicate sets and outliers from the embeddings, found by cleanlab's Datalab.

Train and test rows are searched together, so a test image that (nearly) repeats a training image, the
leak that inflates test accuracy, is found like any other duplicate pair. Scores follow cleanlab:
`near_duplicate_score` is the distance to the nearest neighbour, squashed into [0, 1] (lower = closer to
another sample); a sample is in a near-duplicate set when its distance is below `threshold` × the median
nearest-neighbour distance. `outlier_score` is cleanlab's k-nearest-neighbour typicality (lower = more
atypical); samples far below the typical score are flagged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.config import DatalabParams, Params
from pipeline.io import read_table, staged_outputs
from pipeline.schemas import DATALAB, INGESTED
from pipeline.validation import check_values


def find_data_issues(features: np.ndarray, sample_ids: np.ndarray, opts: DatalabParams) -> pl.DataFrame:
    """Per-row near-duplicate and outlier evidence.

    Args:
        features: (N, D) float32 embeddings (train and test rows together).
        sample_ids: (N,) int64, row i's sample id.
        opts: neighbours and the duplicate threshold.

    Returns:
        A DATALAB-shaped frame without the `split` column: sample_id, is_near_duplicate,
        near_duplicate_score, near_duplicate_set (sample ids of the other members), nearest_sample_id,
        is_outlier, outlier_score.
    """
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # Datalab holds its data in a local `datasets` table
    from cleanlab import Datalab

    n = len(features)
    if n != len(sample_ids):
        raise ValueError(f"find_data_issues: {n} feature rows for {len(sample_ids)} sample ids")
    if n <= opts.k:
        raise ValueError(f"datalab.k: {opts.k} neighbours need more than {opts.k} samples (have {n})")
    lab = Datalab(data={"row": np.arange(n)}, verbosity=0)
    lab.find_issues(
        features=np.ascontiguousarray(features, dtype=np.float32),
        issue_types={"near_duplicate": {"k": opts.k, "threshold": opts.threshold}, "outlier": {"k": opts.k}},
    )
    dup = lab.get_issues("near_duplicate")
    out = lab.get_issues("outlier")
    nearest = np.asarray(lab.get_info("near_duplicate")["nearest_neighbor"], dtype=np.int64)
    ids = np.asarray(sample_ids, dtype=np.int64)
    return pl.DataFrame(
        {
            "sample_id": ids,
            "is_near_duplicate": dup["is_near_duplicate_issue"].to_numpy(dtype=bool),
            "near_duplicate_score": dup["near_duplicate_score"].to_numpy(dtype=np.float32),
            "near_duplicate_set": pl.Series(
                [ids[np.asarray(s, dtype=np.int64)].tolist() for s in dup["near_duplicate_sets"]],
                dtype=pl.List(pl.Int64),
            ),
            "nearest_sample_id": ids[nearest],
            "is_outlier": out["is_outlier_issue"].to_numpy(dtype=bool),
            "outlier_score": out["outlier_score"].to_numpy(dtype=np.float32),
        }
    )


def summarise(issues: pl.DataFrame) -> dict:
    """Headline counts for metrics.json: flagged rows, duplicate sets, train/test pairs."""
    dup = issues.filter(pl.col("is_near_duplicate"))
    split_of = dict(zip(issues["sample_id"].to_list(), issues["split"].to_list(), strict=True))
    cross = {
        tuple(sorted((a, b)))
        for a, s, group in dup.select("sample_id", "split", "near_duplicate_set").iter_rows()
        for b in group
        if split_of[b] != s
    }
    sets = {frozenset([a, *group]) for a, group in dup.select("sample_id", "near_duplicate_set").iter_rows()}
    return {
        "near_duplicates": dup.height,
        "near_duplicate_sets": len(sets),
        "train_test_pairs": len(cross),
        "outliers": int(issues["is_outlier"].sum()),
    }


def run_datalab(params: Params, ingested_dir: Path, embeddings: Path, out: Path) -> None:
    """The `datalab` stage: both ingested splits' embeddings -> issues/datalab.parquet (DATALAB)."""
    from pipeline.embed import load_features

    train, names = read_table(ingested_dir / "train.parquet", INGESTED)
    test, _ = read_table(ingested_dir / "test.parquet", INGESTED)
    feats = load_features(embeddings, train["sample_id"].to_numpy(), test["sample_id"].to_numpy())
    ids = np.concatenate([train["sample_id"].to_numpy(), test["sample_id"].to_numpy()])
    t0 = time.perf_counter()
    issues = find_data_issues(np.concatenate([feats.train, feats.test]), ids, params.datalab)
    split = pl.Series("split", ["train"] * train.height + ["test"] * test.height, dtype=pl.String)
    issues = issues.insert_column(1, split)
    check_values(issues, DATALAB, len(names), str(out))
    with staged_outputs() as outs:
        outs.write_table(out, issues, DATALAB, names)
    s = summarise(issues)
    print(
        f"datalab: {s['near_duplicates']} near duplicates in {s['near_duplicate_sets']} sets "
        f"({s['train_test_pairs']} train/test pairs), {s['outliers']} outliers of {issues.height} images, "
        f"{time.perf_counter() - t0:.1f}s"
    )


def report_section(issues: pl.DataFrame, images: pl.DataFrame, labels: dict[int, str], n: int) -> str:
    """The report's "Data issues" section: counts, then a gallery of the closest near-duplicate pairs and
    of the most atypical images (`n` each).

    Args:
        issues: the DATALAB table.
        images: INGESTED rows of both splits (sample_id, image, source_path[, file]).
        labels: sample_id -> the class name shown under the image (given label for train rows).
        n: gallery size per kind; 0 = counts only.
    """
    import html

    from pipeline.figures import image_cell

    s = summarise(issues)
    head = (
        "<h2>Data issues (cleanlab Datalab on the embeddings)</h2>"
        f"<p>{s['near_duplicates']} images in {s['near_duplicate_sets']} near-duplicate sets, "
        f"{s['train_test_pairs']} of them pairs across train and test (a test image repeating a training "
        f"image inflates test accuracy); {s['outliers']} outliers of {issues.height} images.</p>"
    )
    if n == 0:
        return head
    by_id = {r["sample_id"]: r for r in images.iter_rows(named=True)}
    split = dict(zip(issues["sample_id"].to_list(), issues["split"].to_list(), strict=True))

    def cell(i: int, note: str) -> str:
        caption = f"id {i} ({split[i]})<br>{html.escape(labels.get(i, '?'))}<br>{note}"
        return image_cell(by_id[i], caption, css="issue")

    pairs, seen = [], set()
    for r in issues.filter(pl.col("is_near_duplicate")).sort("near_duplicate_score").iter_rows(named=True):
        key = frozenset((r["sample_id"], r["nearest_sample_id"]))
        if key in seen:
            continue
        seen.add(key)
        note = f"dup score {r['near_duplicate_score']:.3f}"
        pairs.append(
            f'<div class="pair">{cell(r["sample_id"], note)}{cell(r["nearest_sample_id"], note)}</div>'
        )
        if len(pairs) == n:
            break
    odd = [
        cell(r["sample_id"], f"outlier score {r['outlier_score']:.3f}")
        for r in issues.filter(pl.col("is_outlier")).sort("outlier_score").head(n).iter_rows(named=True)
    ]
    return (
        head
        + "<h3>Closest near-duplicate pairs</h3>"
        + (f'<div class="gallery">{"".join(pairs)}</div>' if pairs else "<p>none</p>")
        + "<h3>Most atypical images</h3>"
        + (f'<div class="gallery">{"".join(odd)}</div>' if odd else "<p>none</p>")
    )
