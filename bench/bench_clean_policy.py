"""How the cleaning policy's thresholds trade relabels for drops on real label noise, with no training.

For each CIFAR-N label set (`data.noisy_label_key`) the script builds a `bench_clean_retrain.py`-style
workspace with the params file's detection stages only (ingest, embed once, the noise estimate, the
`detectors`), then applies `pipeline.clean.clean_labels` over the `clean.methods` score tables at every
`clean.relabel_confidence` in `--relabel` and every cap in `--caps` (`auto`: the estimated rate, as
`clean.max_share: auto`; `none`: no cap). It prints (and with `--out` writes) a markdown table: the
relabels and drops, how many relabels give the true class, how many drops were wrong labels, the label
accuracy before and after, and the wrong labels left among the kept rows. The params file's own setting is
marked with *. A second table asks whether another vote could find more wrong labels within the same
cap: for each `clean.methods` score table alone (its `noise_score` ranking) and for their mean rank, the
AUROC for the wrong labels and how many wrong labels its first k rows hold, k being the rows the own
setting changes; each table's `probs` ranked by each of cleanlab's label-quality scorings in `--scorings`
(the probe's `scoring` option: which one to pick) follow, and the vote's own count of changed rows that
were wrong closes each label set. `--features`
reuses the embeddings parquet of an earlier run over the same images and embed settings (a workspace's
`embeddings.parquet`), and skips the embed pass.

    python bench/bench_clean_policy.py --params presets/cifar10n_cpu.yaml \
        --keys worse_label,random_label1,aggre_label --out /tmp/clean_policy.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import yaml  # noqa: E402
from _markdown import emit, table  # noqa: E402  bench/, on the path when a script runs
from bench_clean_retrain import detect  # noqa: E402
from scipy.stats import rankdata  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from pipeline.clean import clean_labels  # noqa: E402
from pipeline.config import Params  # noqa: E402
from pipeline.detectors.base import LabelQualityScoring, label_quality  # noqa: E402
from pipeline.evaluate import cleaning_figures  # noqa: E402
from pipeline.io import read_table  # noqa: E402
from pipeline.params import parse_params  # noqa: E402
from pipeline.registry import score_schema  # noqa: E402
from pipeline.schemas import NOISY  # noqa: E402


@dataclass
class Workspace:
    """A detection workspace's tables, read once: the truth, the `clean.methods` score tables (all sorted by
    sample_id), the class names and the noise stage's estimated rate."""

    truth: pl.DataFrame
    scores: dict[str, pl.DataFrame]
    names: list[str]
    rate: float | None


def read_workspace(params: Params, d: Path) -> Workspace:
    """The workspace `d`'s tables; a score table whose sample ids differ from the truth's is refused."""
    truth = read_table(d / "noisy/train.parquet", NOISY)[0].sort("sample_id")
    scores, names = {}, []
    for m in params.clean.methods:
        frame, names = read_table(d / f"scores/{m}.parquet", score_schema(m))
        scores[m] = frame.sort("sample_id")
        if not scores[m]["sample_id"].equals(truth["sample_id"]):
            raise ValueError(f"{d / f'scores/{m}.parquet'}: sample ids differ from noisy/train.parquet")
    rate = (json.loads((d / "noisy/noise_report.json").read_text()).get("estimate") or {}).get("rate")
    return Workspace(truth, scores, names, rate)


def clean_at(
    params: Params, ws: Workspace, relabel_confidence: float, max_share: float | None
) -> pl.DataFrame:
    """The cleaning of `ws` at this threshold and cap, with the params' other `clean` settings."""
    return clean_labels(
        ws.scores,
        ws.names,
        relabel_confidence=relabel_confidence,
        drop_noise_score=params.clean.drop_noise_score,
        agreement=params.clean.agreement,
        max_share=max_share,
    )


def sweep(params: Params, ws: Workspace, relabel: list[float], caps: list[str]) -> list[dict]:
    """One row per (relabel_confidence, cap) over the workspace's score tables."""
    own_cap = {"auto": "auto", None: "none"}.get(params.clean.max_share, str(params.clean.max_share))
    rows = []
    for cap in caps:
        for conf in relabel:
            f = cleaning_figures(clean_at(params, ws, conf, ws.rate if cap == "auto" else None), ws.truth)
            right = round((f["relabel_accuracy"] or 0.0) * f["relabel"])
            wrong_drops = round((f["drop_precision"] or 0.0) * f["drop"])
            own = conf == params.clean.relabel_confidence and cap == own_cap
            rows.append(
                {
                    "labels": params.data.noisy_label_key,
                    "relabel_confidence": f"{conf}{' *' if own else ''}",
                    "cap": f"auto ({ws.rate:.3f})" if cap == "auto" else cap,
                    "relabel / drop": f"{f['relabel']} / {f['drop']}",
                    "relabels to the true class": f"{right} of {f['relabel']}",
                    "drops of wrong labels": f"{wrong_drops} of {f['drop']}",
                    "label acc: noisy → kept": f"{f['label_accuracy_before']:.3f} → "
                    f"{f['label_accuracy_after']:.3f}",
                    "wrong labels left": f["noisy_remaining"],
                }
            )
    return rows


def rankings(params: Params, ws: Workspace, scorings: list[str]) -> list[dict]:
    """Wrong labels within the own setting's changed-row count: each score table's ranking, their mean
    rank, each table's `probs` under each cleanlab label-quality scoring in `scorings`, and the vote itself
    (the params' own `clean` settings)."""
    wrong = ws.truth["is_noisy"].to_numpy()
    share = ws.rate if params.clean.max_share == "auto" else params.clean.max_share
    cleaned = clean_at(params, ws, params.clean.relabel_confidence, share).sort("sample_id")
    changed = cleaned["action"].to_numpy() != "keep"
    k = int(changed.sum())
    ranks = {m: rankdata(f["noise_score"].to_numpy()) / f.height for m, f in ws.scores.items()}
    if len(ranks) > 1:
        ranks["mean rank of " + " + ".join(ranks)] = np.mean(list(ranks.values()), axis=0)
    for m, f in ws.scores.items():
        probs, given = np.stack(f["probs"].to_list()), f["given_label"].to_numpy()
        for how in scorings:  # low quality first, as the noise_score rankings above
            ranks[f"{m} probs, cleanlab {how}"] = -label_quality(given, probs, scoring=how)
    rows = [
        {
            "labels": params.data.noisy_label_key,
            "ranking": name,
            "AUROC": f"{roc_auc_score(wrong, r):.3f}",
            "wrong labels in the first k": f"{int(wrong[np.argsort(-r, kind='stable')[:k]].sum())} of {k}",
        }
        for name, r in ranks.items()
    ]
    rows.append(
        {
            "labels": params.data.noisy_label_key,
            "ranking": f"the vote's changes (agreement {params.clean.agreement})",
            "AUROC": "–",
            "wrong labels in the first k": f"{int(wrong[changed].sum())} of {k}",
        }
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("presets/cifar10n_cpu.yaml"))
    ap.add_argument("--keys", default="worse_label,random_label1,aggre_label")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gradclean-clean-policy"))
    ap.add_argument("--features", type=Path, default=None, help="reuse these embeddings (same images)")
    ap.add_argument("--relabel", default="0.9,0.8,0.7,0.6", help="relabel_confidence values")
    ap.add_argument("--caps", default="auto,none", help="auto (the estimated rate) and/or none")
    ap.add_argument(
        "--scorings",
        default="self_confidence,normalized_margin,confidence_weighted_entropy",
        help="cleanlab label-quality scorings to rank each score table's probs by",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    a = ap.parse_args()
    relabel = [float(v) for v in a.relabel.split(",")]
    caps = a.caps.split(",")
    scorings = [v for v in a.scorings.split(",") if v]
    known = get_args(LabelQualityScoring)
    if any(v not in known for v in scorings):
        ap.error(f"--scorings takes any of {', '.join(known)}")
    if any(not 0.0 <= v <= 1.0 for v in relabel) or any(c not in ("auto", "none") for c in caps):
        ap.error("--relabel takes values in [0, 1]; --caps takes auto and/or none")
    if a.features is not None and not a.features.is_file():
        ap.error(f"--features: no such file: {a.features}")
    raw = yaml.safe_load(a.params.read_text())
    raw["methods"] = ["ce"]  # no method trains here; the detectors score
    features = None
    if a.features is not None:  # a copy first: the workspaces below are rebuilt, and it may lie in one
        a.work.mkdir(parents=True, exist_ok=True)
        features = Path(shutil.copy(a.features, a.work / "features.parquet"))
    rows, ranked, wrong = [], [], []
    for key in a.keys.split(","):
        raw["data"]["noisy_label_key"] = key
        params = parse_params(json.loads(json.dumps(raw)))
        features = detect(params, a.work / key, features)
        ws = read_workspace(params, a.work / key)
        rows += sweep(params, ws, relabel, caps)
        ranked += rankings(params, ws, scorings)
        wrong.append(f"{key}: {int(ws.truth['is_noisy'].sum())} wrong")
    head = (
        f"`{' '.join(sys.argv)}`: {platform.processor() or platform.machine()}; clean.methods "
        f"{', '.join(params.clean.methods)}, agreement {params.clean.agreement}, drop_noise_score "
        f"{params.clean.drop_noise_score}; * = the params file's own setting"
    )
    lines = (
        table(head, rows)
        + [""]
        + table(f"Each ranking within the own setting's k changes ({'; '.join(wrong)}):", ranked)
    )
    emit(lines, a.out)


if __name__ == "__main__":
    main()
