"""Reviewed decisions in: the decisions CSV (edited by hand or exported by the review page) and Label
Studio's JSON export, checked and resolved to one decision per sample.

A decision is `keep` (the given label is right), `relabel` (to `new_label`, a class name or index),
`drop` (no class fits) or `unsure` (seen, no verdict: the vote stands). Rows with an empty `decision` are
not reviewed yet and are skipped. Refused by name, before anything is written: a file that is not UTF-8,
missing columns, an unknown sample id, an unknown decision or class, a relabel without a new label, a bad
time, and two different decisions for one sample by the same reviewer. When different reviewers disagree,
the later decision wins (by `decided_at` when both have one, else by file and row order) and the clean
stage says so in its log.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.errors import DataError

DECISIONS = ("keep", "relabel", "drop", "unsure")
CSV_COLUMNS = ("sample_id", "decision", "new_label", "reviewer", "note", "decided_at")
DROP_CHOICE, UNSURE_CHOICE = "[drop]", "[unsure]"  # the Label Studio choices besides the classes


def decision_files(path: Path) -> list[Path]:
    """`review.decisions` -> the files to read: the file itself, or a folder's `*.csv` and `*.json` files in
    name order (hidden files and anything else, such as a README, are skipped)."""
    if path.is_dir():
        return sorted(
            f
            for f in path.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix in (".csv", ".json")
        )
    if not path.exists():
        raise DataError(f"{path}: review.decisions file not found")
    if path.suffix not in (".csv", ".json"):
        raise DataError(f"{path}: review.decisions must be a .csv or Label Studio .json file (or a folder)")
    return [path]


def _text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text (byte {e.start}); save the decisions file as UTF-8"
        ) from None


def _time(value: str | None, where: str) -> str | None:
    if value is None or not str(value).strip():
        return None
    try:
        return datetime.fromisoformat(str(value).strip().replace("Z", "+00:00")).isoformat()
    except ValueError:
        raise DataError(f"{where}: decided_at {value!r} is not an ISO 8601 time") from None


def _class(value: Any, class_names: list[str], where: str) -> int:
    v = str(value).strip()
    if v in class_names:
        return class_names.index(v)
    if v.isdigit() and int(v) < len(class_names):
        return int(v)
    raise DataError(f"{where}: new_label {v!r} is not a known class (classes: {class_names})")


def _csv_records(path: Path) -> list[dict]:
    try:
        df = pl.read_csv(io.StringIO(_text(path)), infer_schema=False)
    except pl.exceptions.PolarsError as e:
        raise DataError(f"{path}: cannot read as CSV ({str(e)[:200]})") from None
    missing = [c for c in ("sample_id", "decision") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: decisions need columns {missing} (found {df.columns})")
    out = []
    for i, row in enumerate(df.iter_rows(named=True)):
        if not (row["decision"] or "").strip():
            continue  # not reviewed yet
        out.append(
            {
                "where": f"{path}: row {i + 2}",
                "sample_id": row["sample_id"],
                "decision": row["decision"].strip().lower(),
                "new_label": row.get("new_label"),
                "reviewer": row.get("reviewer"),
                "note": row.get("note"),
                "decided_at": row.get("decided_at"),
            }
        )
    return out


def _choice_record(choice: str, given: int | None, class_names: list[str]) -> tuple[str, Any]:
    if choice == DROP_CHOICE:
        return "drop", None
    if choice == UNSURE_CHOICE:
        return "unsure", None
    return ("keep" if given is not None and class_names[given] == choice else "relabel"), choice


def _label_studio_records(path: Path, given: dict[int, int], class_names: list[str]) -> list[dict]:
    try:
        tasks = json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(tasks, list):
        raise DataError(f"{path}: a Label Studio export is a JSON list of tasks")
    out = []
    for t, task in enumerate(tasks):
        where = f"{path}: task {t}"
        if not isinstance(task, dict):
            raise DataError(f"{where}: not a task object")
        data = task.get("data", task)  # JSON-MIN exports put the data keys at the top level
        if "sample_id" not in data:
            raise DataError(f"{where}: no sample_id in the task data (import review/label_studio.json)")
        sid = data["sample_id"]
        if "annotations" in task:
            annotations = [
                (a, next((r for r in a.get("result", []) if r.get("type") == "choices"), None))
                for a in task["annotations"]
                if not a.get("was_cancelled")
            ]
            for a, result in annotations:
                if result is None:
                    continue
                choices = result.get("value", {}).get("choices") or []
                if len(choices) != 1:
                    raise DataError(f"{where}: expected one choice, got {choices}")
                who = a.get("completed_by")
                who = who.get("email") or who.get("id") if isinstance(who, dict) else who
                decision, label = _choice_record(choices[0], given.get(_int(sid, where)), class_names)
                out.append(
                    {"where": where, "sample_id": sid, "decision": decision, "new_label": label,
                     "reviewer": None if who is None else str(who), "note": None,
                     "decided_at": a.get("updated_at") or a.get("created_at")}
                )  # fmt: skip
        elif "label" in task:
            decision, label = _choice_record(str(task["label"]), given.get(_int(sid, where)), class_names)
            out.append(
                {"where": where, "sample_id": sid, "decision": decision, "new_label": label,
                 "reviewer": None if task.get("annotator") is None else str(task["annotator"]), "note": None,
                 "decided_at": task.get("updated_at") or task.get("created_at")}
            )  # fmt: skip
        else:
            raise DataError(f"{where}: neither 'annotations' (JSON export) nor 'label' (JSON-MIN export)")
    return out


def _int(value: Any, where: str) -> int:
    try:
        f = float(str(value).strip())
    except ValueError:
        raise DataError(f"{where}: sample_id {value!r} is not an integer") from None
    if not f.is_integer():
        raise DataError(f"{where}: sample_id {value!r} is not an integer")
    return int(f)


def read_decisions(
    path: Path, sample_ids: np.ndarray, given_labels: np.ndarray, class_names: list[str]
) -> tuple[pl.DataFrame, list[str]]:
    """Read and check every decision under `path` (see `decision_files`) and resolve them to one per sample.

    Args:
        path: `review.decisions` (a file or a folder).
        sample_ids: (N,) the training sample ids.
        given_labels: (N,) their given labels.
        class_names: K names, index = label.

    Returns:
        (decisions, log): one row per reviewed sample (`sample_id`, `decision`, `new_label` (null unless
        relabel), `reviewer`, `decided_at` (ISO 8601 or null), `note`, `where`), and the log lines that
        name the overruled decisions.

    Raises:
        DataError: naming the file and row or task (see the module docstring).
    """
    given = dict(zip(np.asarray(sample_ids).tolist(), np.asarray(given_labels).tolist(), strict=True))
    records = []
    for f in decision_files(path):
        records += _csv_records(f) if f.suffix == ".csv" else _label_studio_records(f, given, class_names)
    chosen: dict[int, dict] = {}
    log = []
    for order, r in enumerate(records):
        where = r["where"]
        sid = _int(r["sample_id"], where)
        if sid not in given:
            raise DataError(f"{where}: unknown sample_id {sid} (not a training sample of this run)")
        if r["decision"] not in DECISIONS:
            raise DataError(f"{where}: decision {r['decision']!r} must be one of {', '.join(DECISIONS)}")
        new = None
        if r["decision"] == "relabel":
            if r["new_label"] is None or not str(r["new_label"]).strip():
                raise DataError(f"{where}: relabel without a new_label")
            new = _class(r["new_label"], class_names, where)
        decision = "keep" if new is not None and new == given[sid] else r["decision"]
        rec = {
            "sample_id": sid,
            "decision": decision,
            "new_label": None if decision != "relabel" else new,
            "reviewer": (str(r["reviewer"]).strip() if r["reviewer"] else "") or "anonymous",
            "decided_at": _time(r["decided_at"], where),
            "note": (str(r["note"]).strip() or None) if r["note"] else None,
            "where": where,
            "order": order,
        }
        old = chosen.get(sid)
        if old is None:
            chosen[sid] = rec
            continue
        same = (old["decision"], old["new_label"]) == (rec["decision"], rec["new_label"])
        if old["reviewer"] == rec["reviewer"]:
            if not same:
                raise DataError(
                    f"{where}: {rec['reviewer']} decided sample {sid} differently in {old['where']} "
                    f"({old['decision']} against {rec['decision']}); keep one of the two"
                )
            continue
        later = rec
        if old["decided_at"] and rec["decided_at"] and _after(old["decided_at"], rec["decided_at"]):
            later = old
        if not same:
            loser = old if later is rec else rec
            log.append(
                f"review: sample {sid}: {later['reviewer']} ({later['where']}, {later['decision']}) "
                f"overrules {loser['reviewer']} ({loser['where']}, {loser['decision']}): the later one wins"
            )
        chosen[sid] = later
    rows = sorted(chosen.values(), key=lambda r: r["sample_id"])
    frame = pl.DataFrame(
        {
            "sample_id": pl.Series([r["sample_id"] for r in rows], dtype=pl.Int64),
            "decision": pl.Series([r["decision"] for r in rows], dtype=pl.String),
            "new_label": pl.Series([r["new_label"] for r in rows], dtype=pl.Int32),
            "reviewer": pl.Series([r["reviewer"] for r in rows], dtype=pl.String),
            "decided_at": pl.Series([r["decided_at"] for r in rows], dtype=pl.String),
            "note": pl.Series([r["note"] for r in rows], dtype=pl.String),
            "where": pl.Series([r["where"] for r in rows], dtype=pl.String),
        }
    )
    return frame, log


def _after(a: str, b: str) -> bool:
    """ISO time `a` is later than `b` (naive times are taken as UTC)."""

    def parse(s: str) -> datetime:
        t = datetime.fromisoformat(s)
        return t if t.tzinfo else t.replace(tzinfo=timezone.utc)

    return parse(a) > parse(b)
