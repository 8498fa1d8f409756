"""Metrics: test accuracy per method, label-error detection quality, cleaning and retraining outcomes.

Detection metrics are pure functions of (is_noisy, scores) and are only computed when the truth is known.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from pipeline.config import Params


def detection_metrics(is_noisy: np.ndarray, flagged: np.ndarray, noise_score: np.ndarray) -> dict[str, float]:
    """Precision/recall/F1 of the flags and AUROC/AP of the noise score as a label-error detector.

    Args:
        is_noisy: (N,) bool truth (given label wrong).
        flagged: (N,) bool method flags.
        noise_score: (N,) float, higher = more likely wrong.
    """
    if not (len(is_noisy) == len(flagged) == len(noise_score)):
        raise ValueError("detection_metrics: inputs differ in length")
    p, r, f, _ = precision_recall_fscore_support(is_noisy, flagged, average="binary", zero_division=0)
    both = 0 < is_noisy.sum() < len(is_noisy)
    return {
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
        "auroc": float(roc_auc_score(is_noisy, noise_score)) if both else float("nan"),
        "average_precision": float(average_precision_score(is_noisy, noise_score)) if both else float("nan"),
        "flagged": int(flagged.sum()),
    }


def similarity_detection(is_noisy: np.ndarray, grad_similarity: np.ndarray) -> dict[str, float]:
    """`grad_similarity` as a label-error detector (low similarity = suspect): AUROC and AP of its negation,
    and its mean over clean and over mislabeled samples. Samples without a score are left out.

    Args:
        is_noisy: (N,) bool truth.
        grad_similarity: (N,) float in [-1, 1], NaN = not computed.
    """
    if len(is_noisy) != len(grad_similarity):
        raise ValueError("similarity_detection: inputs differ in length")
    ok = np.isfinite(grad_similarity.astype(float))
    y, s = is_noisy[ok].astype(bool), grad_similarity[ok].astype(float)
    both = 0 < y.sum() < len(y)
    return {
        "auroc": float(roc_auc_score(y, -s)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, -s)) if both else float("nan"),
        "mean_clean": float(s[~y].mean()) if (~y).any() else float("nan"),
        "mean_noisy": float(s[y].mean()) if y.any() else float("nan"),
    }


def _truth(noisy: pl.DataFrame, scores: pl.DataFrame) -> pl.DataFrame | None:
    if noisy["true_label"].null_count():
        return None
    return scores.join(noisy.select("sample_id", "true_label", "is_noisy"), on="sample_id", how="inner")


def pr_curve(noisy: pl.DataFrame, scores: pl.DataFrame, points: int = 101) -> pl.DataFrame | None:
    """Precision-recall curve of noise_score (down-sampled to about `points` rows) for DVC plots."""
    j = _truth(noisy, scores)
    if j is None or j["is_noisy"].sum() in (0, j.height):
        return None
    prec, rec, _ = precision_recall_curve(j["is_noisy"].to_numpy(), j["noise_score"].to_numpy())
    keep = np.unique(np.linspace(0, len(prec) - 1, points).round().astype(int))
    return pl.DataFrame({"recall": rec[keep].round(5), "precision": prec[keep].round(5)}).sort("recall")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers `dvc metrics show` prints (`reports/summary.json`), taken from `collect_metrics`'s
    result: per method the final test accuracy and, when the truth is known, the detection F1 and AUROC; the
    noise rate realised and estimated; what cleaning changed and the label accuracy before and after; the
    retrained test accuracy. Everything else stays in `reports/metrics.json`."""
    methods = {}
    for m, row in metrics["methods"].items():
        det = row.get("detection") or {}
        methods[m] = {"test_acc_last": row["test_acc_last"]} | {
            k: det[k] for k in ("f1", "auroc") if k in det
        }
    cleaning = metrics["cleaning"]
    return {
        "noise": {k: metrics["noise"][k] for k in ("realised_rate", "estimated_rate")},
        "methods": methods,
        "cleaning": {
            k: cleaning[k]
            for k in ("relabel", "drop", "label_accuracy_before", "label_accuracy_after")
            if k in cleaning
        },
        "retrain": {"test_acc_last": metrics["retrain"]["test_acc_last"]},
    } | (
        {"review": {"gradclean_fixed_at_100": metrics["review"]["orders"]["gradclean"]["fixed_at_100"]}}
        if metrics.get("review")
        else {}
    )


def cleaning_figures(cleaned: pl.DataFrame, noisy: pl.DataFrame | None) -> dict[str, Any]:
    """What cleaning did: the keep / relabel / drop counts and, when `noisy` carries the truth
    (`true_label`, `is_noisy`), the label accuracy before and after, the relabels' accuracy, the drops'
    precision and the wrong labels left."""
    acts = cleaned["action"]
    out: dict[str, Any] = {a: int((acts == a).sum()) for a in ("keep", "relabel", "drop")}
    if noisy is None:
        return out
    c = cleaned.join(noisy.select("sample_id", "true_label", "is_noisy"), on="sample_id")
    kept = c.filter(pl.col("action") != "drop")
    rel = c.filter(pl.col("action") == "relabel")
    drop = c.filter(pl.col("action") == "drop")
    out.update(
        label_accuracy_before=float((c["given_label"] == c["true_label"]).mean()),
        label_accuracy_after=float((kept["cleaned_label"] == kept["true_label"]).mean())
        if kept.height
        else None,
        relabel_accuracy=float((rel["cleaned_label"] == rel["true_label"]).mean()) if rel.height else None,
        drop_precision=float(drop["is_noisy"].mean()) if drop.height else None,
        noisy_remaining=int((kept["cleaned_label"] != kept["true_label"]).sum()),
    )
    return out


def collect_metrics(
    noisy: pl.DataFrame,
    scores: dict[str, pl.DataFrame],
    logs: dict[str, pl.DataFrame],
    cleaned: pl.DataFrame,
    retrain: dict,
    report: dict,
    params: Params,
) -> dict[str, Any]:
    """Everything `reports/metrics.json` holds (JSON-ready; NaN becomes null)."""
    known = noisy["true_label"].null_count() == 0
    out: dict[str, Any] = {
        "noise": {
            "kind": report["kind"],
            "requested_rate": report.get("requested_rate"),
            "realised_rate": report.get("realised_rate"),
            "estimated_rate": (report.get("estimate") or {}).get("rate"),
        },
        "methods": {},
    }
    for m, s in scores.items():
        log = logs[m]
        row: dict[str, Any] = {
            "test_acc_last": float(log["test_acc"][-1]),
            "test_acc_best": float(log["test_acc"].max()),
            "best_minus_last": float(log["test_acc"].max() - log["test_acc"][-1]),
            "seconds": float(log["seconds"][-1]),
            "epochs": int(log.height),
        }
        j = _truth(noisy, s)
        if j is not None:
            row["detection"] = detection_metrics(
                j["is_noisy"].to_numpy(), j["is_flagged"].to_numpy(), j["noise_score"].to_numpy()
            )
            row["pseudo_label_accuracy"] = float((j["pseudo_label"] == j["true_label"]).mean())
            row["grad_similarity"] = similarity_detection(
                j["is_noisy"].to_numpy(), j["grad_similarity"].to_numpy()
            )
        out["methods"][m] = row
    out["cleaning"] = {"methods": params.clean.methods, **cleaning_figures(cleaned, noisy if known else None)}
    out["retrain"] = {
        k: retrain.get(k) for k in ("test_acc_last", "test_acc_best", "train_samples", "seconds")
    }
    if "ce" in out["methods"]:
        out["retrain"]["ce_noisy_test_acc_last"] = out["methods"]["ce"]["test_acc_last"]
    return _nan_to_none(out)
