"""The review queue: which samples are worth a person's look, and what a review buys.

For each training sample and the voting score tables (`review.methods`, by default `clean.methods`):

    p_wrong       = mean over the voters of noise_score              (how likely the given label is wrong)
    disagreement  = 2 x standard deviation of the voters' noise_score (0 unanimous .. 1 split down the middle)
    expected_gain = p_wrong x (1 + w x disagreement) / (1 + w)        (w = review.disagreement_weight)

A review fixes a label with probability p_wrong, so p_wrong leads the ranking; disagreement lifts the
samples where the automatic vote is least reliable (the vote keeps a label the voters split on, so only
a person fixes it). With one voter, disagreement is 0 and the ranking is its noise_score. The suggested
label is the class with the highest mean probability over the voters other than the given one.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.errors import DataError


def review_priority(
    scores: dict[str, pl.DataFrame], class_names: list[str] | None = None, *, disagreement_weight: float = 0.5
) -> pl.DataFrame:
    """Rank the samples for review (the module docstring's formula). Pure.

    Args:
        scores: voter name -> SCORES frame (the same sample ids in each).
        class_names: K names for the opinions text (class indices when None).
        disagreement_weight: w >= 0 in the formula.

    Returns:
        One row per sample, highest expected gain first: `sample_id`, `rank` (1 = review first),
        `given_label`, `suggested_label`, `p_wrong`, `disagreement`, `expected_gain`, `voters_wrong` (how many
        flag it) and `opinions` (each voter's view).
    """
    if not scores:
        raise DataError("review: no score tables given")
    if not (disagreement_weight >= 0 and np.isfinite(disagreement_weight)):
        raise ValueError(f"review.disagreement_weight must be >= 0, not {disagreement_weight}")
    frames = {m: df.sort("sample_id") for m, df in scores.items()}
    first = next(iter(frames.values()))
    ids, given = first["sample_id"].to_numpy(), first["given_label"].to_numpy()
    for m, df in frames.items():
        if not np.array_equal(df["sample_id"].to_numpy(), ids):
            raise DataError(f"scores/{m}.parquet: sample ids differ from the other voters'")
    noise = np.stack([df["noise_score"].to_numpy().astype(np.float64) for df in frames.values()])  # (M, N)
    flagged = np.stack([df["is_flagged"].to_numpy() for df in frames.values()]).sum(0)
    if np.isnan(noise).any():
        raise DataError("review: NaN in a voter's noise_score")
    probs = np.stack([np.stack(df["probs"].to_numpy()) for df in frames.values()]).mean(0)  # (N, K)
    p_wrong = noise.mean(0)
    disagreement = np.clip(2.0 * noise.std(0), 0.0, 1.0)
    gain = p_wrong * (1.0 + disagreement_weight * disagreement) / (1.0 + disagreement_weight)
    other = probs.copy()
    other[np.arange(len(ids)), given] = -np.inf
    suggested = other.argmax(1)
    order = np.lexsort((ids, -gain))  # highest gain first, ties by sample id
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(1, len(ids) + 1)
    name = (lambda c: class_names[c]) if class_names else str
    views = [
        list(
            zip(
                df["is_flagged"].to_list(),
                df["noise_score"].to_list(),
                df["pseudo_label"].to_list(),
                strict=True,
            )
        )
        for df in frames.values()
    ]
    opinions = [
        "; ".join(
            f"{m}: {'wrong' if flag else 'ok'} ({score:.2f}, predicts '{name(pred)}')"
            for m, (flag, score, pred) in zip(frames, (v[i] for v in views), strict=True)
        )
        for i in range(len(ids))
    ]
    return pl.DataFrame(
        {
            "sample_id": pl.Series(ids, dtype=pl.Int64),
            "rank": pl.Series(rank, dtype=pl.Int32),
            "given_label": pl.Series(given, dtype=pl.Int32),
            "suggested_label": pl.Series(suggested, dtype=pl.Int32),
            "p_wrong": pl.Series(p_wrong, dtype=pl.Float32),
            "disagreement": pl.Series(disagreement, dtype=pl.Float32),
            "expected_gain": pl.Series(gain.clip(0, 1), dtype=pl.Float32),
            "voters_wrong": pl.Series(flagged, dtype=pl.Int32),
            "opinions": pl.Series(opinions, dtype=pl.String),
        }
    ).sort("rank")


def build_queue(
    priority: pl.DataFrame, cleaned: pl.DataFrame, class_names: list[str], *, budget: int, voters: int
) -> pl.DataFrame:
    """The REVIEW_QUEUE table: the `budget` highest-gain samples nobody has reviewed yet, best first.

    Args:
        priority: `review_priority`'s table.
        cleaned: the CLEANED table (the vote's action, the source identity, who reviewed what).
        class_names: K names, index = label.
        budget: queue length.
        voters: how many score tables ranked it (for the reason text).
    """
    keep = ["sample_id", "action", "cleaned_class"]
    extra = [c for c in ("reviewer", "source_path", "source_index") if c in cleaned.columns]
    j = priority.join(cleaned.select(keep + extra), on="sample_id", how="left", maintain_order="left")
    if j["action"].null_count():
        missing = j.filter(pl.col("action").is_null())["sample_id"][0]
        raise DataError(f"review: sample {missing} is scored but not in the cleaned file (re-run clean)")
    if "reviewer" in j.columns:
        j = j.filter(pl.col("reviewer").is_null())  # reviewed samples are trusted: never queued again
    j = j.head(budget)
    verbs = {"keep": "keeps it", "drop": "drops it"}
    reasons = [
        f"{w}/{voters} voters call '{class_names[g]}' wrong (p_wrong {p:.2f}, disagreement {d:.2f}); "
        "the vote " + verbs.get(a, f"relabels it to '{c}'")
        for w, g, p, d, a, c in j.select(
            "voters_wrong", "given_label", "p_wrong", "disagreement", "action", "cleaned_class"
        ).iter_rows()
    ]
    names = np.asarray(class_names, dtype=object)
    blank = pl.Series([None] * j.height, dtype=pl.String)
    return pl.DataFrame(
        {
            "sample_id": j["sample_id"],
            "rank": pl.Series(np.arange(1, j.height + 1), dtype=pl.Int32),
            "source_path": j["source_path"] if "source_path" in j.columns else blank,
            "source_index": j["source_index"] if "source_index" in j.columns else blank.cast(pl.Int64),
            "given_label": j["given_label"],
            "given_class": pl.Series(names[j["given_label"].to_numpy()].tolist(), dtype=pl.String),
            "suggested_label": j["suggested_label"],
            "suggested_class": pl.Series(names[j["suggested_label"].to_numpy()].tolist(), dtype=pl.String),
            "p_wrong": j["p_wrong"],
            "disagreement": j["disagreement"],
            "expected_gain": j["expected_gain"],
            "vote_action": j["action"],
            "opinions": j["opinions"],
            "reason": pl.Series(reasons, dtype=pl.String),
            "decision": blank,
            "new_label": blank,
            "reviewer": blank,
            "note": blank,
        }
    )


def simulate_reviews(order: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """A reviewer who answers with the true label walks `order` (sample positions, review first first):
    (len(order) + 1,) labels fixed after 0, 1, 2, ... reviews (each review of a wrong label fixes it). Pure.
    """
    wrong = np.asarray(wrong, dtype=bool)
    return np.concatenate([[0], np.cumsum(wrong[np.asarray(order)])])


def reviews_to_reach(fixed: np.ndarray, n_wrong: int, n: int, accuracy: float = 0.99) -> int | None:
    """Fewest reviews after which the label accuracy (n - n_wrong + fixed) / n reaches `accuracy`, or None
    when walking the whole order does not."""
    acc = (n - n_wrong + np.asarray(fixed)) / n
    hit = np.flatnonzero(acc >= accuracy - 1e-12)
    return int(hit[0]) if len(hit) else None
