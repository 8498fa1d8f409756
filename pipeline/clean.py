"""Cleaning policy: turn one or several methods' score tables into the cleaned label file.

Per method and sample the policy proposes:
  * relabel to pseudo_label  when pseudo_label != given_label and confidence >= relabel_confidence;
  * drop                     else when noise_score >= drop_noise_score;
  * keep                     otherwise.
With several methods, `agreement` says how many must call the label wrong (propose drop or any relabel):
`all` (every voter) or `majority` (more than half). When they do, relabel to L if more than half of the
voters propose L, else drop; otherwise keep: a sample the voters disagree on keeps its label (it is
the first thing a reviewer should look at). A single method is the same rule with one vote.

`max_share` caps the share of rows relabelled or dropped (the noise stage's estimated rate by default):
when more rows qualify, the ones with the highest mean noise_score over the voters are changed and the
rest are kept, so the amount changed follows the estimated noise and does not run past it.

Reviewed decisions (`decisions`, from `pipeline.review.decisions`) beat the vote: a reviewed keep, relabel
or drop is applied as decided (`decided_by: review`), and those rows neither count against nor are changed
by the cap. An `unsure` review leaves the vote's action, and names the reviewer.
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
    agreement: str = "majority",
    max_share: float | None = None,
    decisions: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Apply the policy (a vote across methods, see the module docstring) and return the CLEANED table.

    Args:
        scores: method name -> SCORES frame (same sample ids and given labels in each).
        class_names: K names, index = label.
        relabel_confidence: relabel threshold on the pseudo-label's confidence.
        drop_noise_score: drop threshold on noise_score.
        agreement: "all" or "majority" of the voters must concur before a label is changed.
        max_share: at most this share of the rows is relabelled or dropped (None = no cap).
        decisions: reviewed decisions, one row per sample (`sample_id`, `decision`, `new_label`, `reviewer`,
            `decided_at`), as `pipeline.review.decisions.read_decisions` returns them. When given (also
            empty), the result gains `decided_by`, `reviewer` and `decided_at`; None = no review columns.

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
    if agreement not in ("all", "majority"):
        raise ValueError(f"clean_labels: agreement must be 'all' or 'majority', not {agreement!r}")
    need = m if agreement == "all" else m // 2 + 1
    wrong = wrong_votes >= need
    action = np.where(wrong & (best_votes >= m // 2 + 1), 1, np.where(wrong, 2, 0))
    reviewed = _reviewed(decisions, ids, k)  # decision code per row: -1 none, 0-2 as action, 3 unsure
    decided = (reviewed >= 0) & (reviewed <= 2)
    capped = np.zeros(n, dtype=bool)
    if max_share is not None:
        if not 0.0 <= max_share <= 1.0 or np.isnan(max_share):
            raise ValueError(f"clean_labels: max_share must be in [0, 1], not {max_share}")
        acted = np.flatnonzero((action != 0) & ~decided)
        cap = int(np.floor(max_share * n + 1e-9))
        if len(acted) > cap:
            order = acted[np.argsort(-noise.mean(0)[acted], kind="stable")]
            capped[order[cap:]] = True
            action[capped] = 0
    if decided.any():
        new_label = _column(decisions, ids, "new_label", -1).astype(np.int64)
        action = np.where(decided, reviewed, action)
        best = np.where(decided & (reviewed == 1), new_label, best)
        capped &= ~decided
    cleaned = np.where(action == 1, best, given)
    agree = np.where(action == 1, (prop == 1) & (target == best), np.where(action == 2, prop != 0, prop == 0))
    agreeing = agree.sum(0)
    score_of = np.where(action == 1, conf, np.where(action == 2, noise, 1.0 - noise))  # (M, N)
    confidence = np.where(decided, 1.0, (score_of * agree).sum(0) / np.maximum(agreeing, 1))
    reviewer = _column(decisions, ids, "reviewer", None)
    decided_at = _column(decisions, ids, "decided_at", None)
    reasons = _reasons(
        action, agree, names, given, best, confidence, class_names, relabel_confidence, drop_noise_score,
        wrong_votes, capped, max_share,
    )  # fmt: skip
    for i in np.flatnonzero(reviewed >= 0):
        what = ["keep", f"relabel to '{class_names[best[i]]}'", "drop", "unsure"][reviewed[i]]
        reasons[i] = (
            f"reviewed by {reviewer[i]}: {what}"
            if decided[i]
            else f"{reasons[i]}; reviewed by {reviewer[i]}: unsure, so the vote stands"
        )
    acts = np.asarray(["keep", "relabel", "drop"])[action]
    review = {  # only when decisions were given (the clean stage always gives them; the folder may be empty)
        "decided_by": pl.Series(np.where(decided, "review", "vote"), dtype=pl.String),
        "reviewer": pl.Series(reviewer.tolist(), dtype=pl.String),
        "decided_at": pl.Series(decided_at.tolist(), dtype=pl.String),
    }
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
            **(review if decisions is not None else {}),
        }
    )


def _reviewed(decisions: pl.DataFrame | None, ids: np.ndarray, k: int) -> np.ndarray:
    """(N,) decision code per sample in `ids` order: -1 not reviewed, 0 keep, 1 relabel, 2 drop, 3 unsure."""
    out = np.full(len(ids), -1, dtype=np.int64)
    if decisions is None or decisions.height == 0:
        return out
    pos = {int(s): i for i, s in enumerate(ids)}
    codes = {"keep": 0, "relabel": 1, "drop": 2, "unsure": 3}
    for sid, decision, new in decisions.select("sample_id", "decision", "new_label").iter_rows():
        if sid not in pos:
            raise DataError(f"review decisions: unknown sample_id {sid}")
        if decision not in codes:
            raise DataError(f"review decisions: sample {sid}: unknown decision {decision!r}")
        if decision == "relabel" and (new is None or not 0 <= new < k):
            raise DataError(f"review decisions: sample {sid}: relabel needs a class in [0, {k - 1}]")
        out[pos[sid]] = codes[decision]
    return out


def _column(decisions: pl.DataFrame | None, ids: np.ndarray, name: str, missing) -> np.ndarray:
    """(N,) object array: the decisions' column `name` per sample in `ids` order, `missing` elsewhere."""
    out = np.full(len(ids), missing, dtype=object)
    if decisions is None or decisions.height == 0:
        return out
    pos = {int(s): i for i, s in enumerate(ids)}
    for sid, value in decisions.select("sample_id", name).iter_rows():
        out[pos[sid]] = missing if value is None else value
    return out


def _reasons(
    action, agree, names, given, best, confidence, class_names, thr_rel, thr_drop, wrong, capped, share
) -> list[str]:
    m = len(names)
    out = []
    for i in range(len(action)):
        who = [names[j] for j in range(m) if agree[j, i]]
        votes = f"{len(who)}/{m} ({', '.join(who)})" if m > 1 else who[0] if who else names[0]
        if capped[i]:
            out.append(
                f"{wrong[i]}/{m} call '{class_names[given[i]]}' wrong, but more rows qualified than "
                f"clean.max_share {share:.3f} allows and this one is among the least suspicious: kept"
            )
            continue
        if action[i] == 0 and wrong[i] > 0:
            out.append(
                f"{votes} accept '{class_names[given[i]]}', {wrong[i]}/{m} call it wrong: the voters "
                f"disagree, so it is kept (worth a review)"
            )
            continue
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
