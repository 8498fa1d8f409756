"""Cleaning policy: turn one or several methods' score tables into the cleaned label file.

Per method and sample the policy proposes:
  * relabel to pseudo_label  when pseudo_label != given_label and confidence >= relabel_confidence;
  * drop                     else when noise_score >= drop_noise_score;
  * keep                     otherwise.
With several methods a strict majority decides: relabel to L when more than half propose L; else drop when
more than half call the label wrong (drop or any relabel) but do not agree on a target; else keep (ties
keep the given label). A single method is the same rule with one vote.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.errors import DataError


def _check_frames(scores: dict[str, pl.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    if not scores:
        raise DataError("clean: no score tables given")
    first_name, first = next(iter(scores.items()))
    first = first.sort("sample_id")
    ids, given = first["sample_id"].to_numpy(), first["given_label"].to_numpy()
    for name, df in scores.items():
        df = df.sort("sample_id")
        if df.height != len(ids) or not np.array_equal(df["sample_id"].to_numpy(), ids):
            raise DataError(f"scores/{name}.parquet: sample ids differ from scores/{first_name}.parquet")
        if not np.array_equal(df["given_label"].to_numpy(), given):
            row = int(np.flatnonzero(df["given_label"].to_numpy() != given)[0])
            raise DataError(
                f"scores/{name}.parquet: given_label differs from scores/{first_name}.parquet "
                f"at sample_id {ids[row]}"
            )
    return ids, given


def propose(
    given: np.ndarray,
    pseudo: np.ndarray,
    confidence: np.ndarray,
    noise_score: np.ndarray,
    *,
    relabel_confidence: float,
    drop_noise_score: float,
) -> np.ndarray:
    """One method's proposals: 0 keep, 1 relabel (to pseudo), 2 drop. Pure; shapes (N,) -> (N,)."""
    for name, a in (("pseudo", pseudo), ("confidence", confidence), ("noise_score", noise_score)):
        if len(a) != len(given):
            raise ValueError(f"propose: {name} has length {len(a)}, expected {len(given)}")
    if np.isnan(confidence).any() or np.isnan(noise_score).any():
        raise ValueError("propose: NaN in confidence or noise_score")
    relabel = (pseudo != given) & (confidence >= relabel_confidence)
    drop = ~relabel & (noise_score >= drop_noise_score)
    return np.where(relabel, 1, np.where(drop, 2, 0))


def clean_labels(
    scores: dict[str, pl.DataFrame],
    class_names: list[str],
    *,
    relabel_confidence: float,
    drop_noise_score: float,
) -> pl.DataFrame:
    """Apply the policy (majority vote across methods) and return the CLEANED table.

    Args:
        scores: method name -> SCORES frame (same sample ids and given labels in each).
        class_names: K names, index = label.
        relabel_confidence: relabel threshold on the pseudo-label's confidence.
        drop_noise_score: drop threshold on noise_score.

    Returns:
        One row per sample, sorted by sample_id, in the CLEANED schema.
    """
    ids, given = _check_frames(scores)
    names = list(scores)
    m, n, k = len(names), len(ids), len(class_names)
    prop, target = np.empty((m, n), dtype=np.int64), np.empty((m, n), dtype=np.int64)
    conf, noise = np.empty((m, n)), np.empty((m, n))
    for j, name in enumerate(names):
        df = scores[name].sort("sample_id")
        target[j] = df["pseudo_label"].to_numpy()
        # compare in the stored float32, as `propose` on the columns would (0.7 stored is 0.7 >= 0.7)
        c32 = df["confidence"].cast(pl.Float32).to_numpy()
        n32 = df["noise_score"].cast(pl.Float32).to_numpy()
        conf[j], noise[j] = c32, n32
        prop[j] = propose(
            given,
            target[j],
            c32,
            n32,
            relabel_confidence=relabel_confidence,
            drop_noise_score=drop_noise_score,
        )
    # votes for each relabel target: (K, N)
    rel_votes = np.stack([((prop == 1) & (target == c)).sum(0) for c in range(k)])
    best = rel_votes.argmax(0)
    best_votes = rel_votes.max(0)
    wrong_votes = (prop != 0).sum(0)
    half = m / 2
    action = np.where(best_votes > half, 1, np.where(wrong_votes > half, 2, 0))
    cleaned = np.where(action == 1, best, given)
    agree = np.where(action == 1, (prop == 1) & (target == best), np.where(action == 2, prop != 0, prop == 0))
    agreeing = agree.sum(0)
    score_of = np.where(action == 1, conf, np.where(action == 2, noise, 1.0 - noise))  # (M, N)
    confidence = (score_of * agree).sum(0) / np.maximum(agreeing, 1)
    reasons = _reasons(
        action, agree, names, given, best, confidence, class_names, relabel_confidence, drop_noise_score
    )
    acts = np.asarray(["keep", "relabel", "drop"])[action]
    return pl.DataFrame(
        {
            "sample_id": pl.Series(ids, dtype=pl.Int64),
            "given_label": pl.Series(given.astype(np.int32)),
            "given_class": pl.Series([class_names[g] for g in given], dtype=pl.String),
            "cleaned_label": pl.Series(
                [None if a == 2 else int(c) for a, c in zip(action, cleaned, strict=True)], dtype=pl.Int32
            ),
            "cleaned_class": pl.Series(
                [None if a == 2 else class_names[c] for a, c in zip(action, cleaned, strict=True)],
                dtype=pl.String,
            ),
            "action": pl.Series(acts, dtype=pl.String),
            "confidence": pl.Series(confidence.clip(0, 1).astype(np.float32)),
            "reason": pl.Series(reasons, dtype=pl.String),
            "methods_agreeing": pl.Series(agreeing.astype(np.int32)),
        }
    )


def _reasons(action, agree, names, given, best, confidence, class_names, thr_rel, thr_drop) -> list[str]:
    m = len(names)
    out = []
    for i in range(len(action)):
        who = [names[j] for j in range(m) if agree[j, i]]
        votes = f"{len(who)}/{m} ({', '.join(who)})" if m > 1 else who[0] if who else names[0]
        if action[i] == 1:
            out.append(
                f"{votes} predict '{class_names[best[i]]}' instead of '{class_names[given[i]]}' "
                f"with confidence {confidence[i]:.2f} >= {thr_rel:.2f}"
            )
        elif action[i] == 2:
            out.append(
                f"{votes} score the label '{class_names[given[i]]}' as wrong (noise_score "
                f"{confidence[i]:.2f} >= {thr_drop:.2f}) with no confident relabel agreed"
            )
        else:
            out.append(f"{votes} accept '{class_names[given[i]]}' (mean 1 - noise_score {confidence[i]:.2f})")
    return out
