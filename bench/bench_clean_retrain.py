"""Does cleaning pay for the model trained on it? CE on the noisy labels against CE on the cleaned labels,
per CIFAR-N label set, with a params file's own pipeline (by default the real-noise preset).

For each label set (`data.noisy_label_key`) the script runs the preset's stages through their pipeline
functions, as `dvc repro` would with `methods: [ce]`: ingest, embed (once: the images, and so the
features, are the same for every label set), the noise estimate, the `clean.methods` detectors, CE on
the noisy labels, clean, and the retrain on the cleaned labels. It prints (and with `--out` writes) a
markdown table: the true and estimated rate, the share changed, the label accuracy before and after
cleaning, the two test accuracies, and the labels a simulated reviewer fixes in its first 100 reviews when
it walks gradclean's review queue, CE's noise_score ranking and a random order (`pipeline.review`).
`--no-retrain` skips the retrain (detection and review only); `--embed-size` overrides `embed.image_size`.
`--seeds N` repeats the CE pair (noisy labels, cleaned labels) at training seeds seed+F .. seed+F+N-1
(F = `--first-seed`, default 0) over the same cleaning (made at the params' own seed), and reports the
mean and standard deviation of both and of their paired difference: one seed's test accuracy on 508
images moves by a few points from run to run.

    python -m stages.weights --out models/efficientnet_lite0.safetensors   # once: the preset's weights
    python bench/bench_clean_retrain.py --params presets/cifar10n_cpu.yaml \
        --keys worse_label,random_label1,aggre_label --out /tmp/clean_retrain.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import polars as pl
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from _markdown import emit, table  # noqa: E402  bench/, on the path when a script runs

from pipeline.config import Params  # noqa: E402
from pipeline.evaluate import cleaning_figures  # noqa: E402
from pipeline.io import read_table  # noqa: E402
from pipeline.params import parse_params  # noqa: E402
from pipeline.registry import score_schema  # noqa: E402
from pipeline.review.simulation import review_simulation  # noqa: E402
from pipeline.run import (  # noqa: E402
    run_clean,
    run_detect,
    run_embed,
    run_ingest,
    run_noise,
    run_retrain,
    run_train,
)
from pipeline.schemas import CLEANED, NOISY  # noqa: E402


def ce_run(params: Params, d: Path, out: Path) -> float:
    """CE on the noisy labels of the run in `d`, its scores and logs under `out`; its last test accuracy."""
    noisy, report, oof = d / "noisy/train.parquet", d / "noisy/noise_report.json", d / "noisy/oof.parquet"
    run_train(
        params, "ce", d / "ingested", noisy, out / "scores/ce.parquet", out / "logs/ce.csv", None,
        out / "logs/steps/ce.csv", out / "scores/history.parquet", noise_report=report, oof_path=oof,
    )  # fmt: skip
    return float(pl.read_csv(out / "logs/ce.csv")["test_acc"][-1])


def ce_retrain(params: Params, d: Path, out: Path) -> float:
    """CE on the cleaned labels of the run in `d`, its summary and log under `out`; its last test accuracy."""
    run_retrain(
        params, d / "ingested", d / "noisy/train.parquet", d / "cleaned/labels.parquet", out / "retrain.json",
        out / "logs/retrain.csv", None,
    )  # fmt: skip
    return float(json.loads((out / "retrain.json").read_text())["test_acc_last"])


def mean_sd(values: list[float], signed: bool = False) -> float | str:
    """One value as it is; several as 'mean ± sd (n)', the sd over runs (ddof 1)."""
    if len(values) == 1:
        return values[0]
    sign = "+" if signed else ""
    return f"{statistics.fmean(values):{sign}.3f} ± {statistics.stdev(values):.3f} ({len(values)})"


def detect(params: Params, d: Path, features: Path | None) -> Path:
    """A fresh workspace `d` with the run's detection stages: ingest, embed (or a copy of `features`, the
    embeddings of the same images), the noise estimate and the detectors' score tables. Returns the
    embeddings' path."""
    shutil.rmtree(d, ignore_errors=True)
    run_ingest(params, d / "ingested")
    emb = d / "embeddings.parquet"
    if features is None:
        run_embed(params, d / "ingested", emb)
    else:
        shutil.copy(features, emb)
    noisy, report, oof = d / "noisy/train.parquet", d / "noisy/noise_report.json", d / "noisy/oof.parquet"
    run_noise(params, d / "ingested", noisy, report, oof, emb)
    for det in params.detectors:
        run_detect(
            params, det, d / "ingested", noisy, emb, d / f"scores/{det}.parquet", d / f"logs/{det}.csv",
            oof, report,
        )  # fmt: skip
    return emb


def one_label_set(
    raw: dict,
    key: str,
    work: Path,
    features: Path | None,
    retrain: bool = True,
    seeds: int = 1,
    first_seed: int = 0,
) -> tuple[dict, Path]:
    raw = json.loads(json.dumps(raw))
    raw["data"]["noisy_label_key"] = key
    raw["methods"] = ["ce"]
    params = parse_params(raw)
    d = work / key
    t0 = time.perf_counter()
    emb = detect(params, d, features)
    noisy, report = d / "noisy/train.parquet", d / "noisy/noise_report.json"
    run_clean(params, d / "scores", d / "cleaned/labels.parquet", d / "cleaned/labels.csv", report)
    accs, outs = [], []
    for s in range(first_seed, first_seed + seeds):  # the same cleaning, each training seed
        p_s = params if s == 0 else parse_params({**raw, "seed": raw.get("seed", 0) + s})
        outs.append(d if s == 0 else d / f"seed{p_s.seed}")
        accs.append((ce_run(p_s, d, outs[-1]), ce_retrain(p_s, d, outs[-1]) if retrain else None))
        print(f"{key} seed {p_s.seed}: CE test acc, noisy → cleaned labels: {' → '.join(map(str, accs[-1]))}")
    truth, _ = read_table(noisy, NOISY)
    cleaned, _ = read_table(d / "cleaned/labels.parquet", CLEANED)
    cl = cleaning_figures(cleaned, truth)
    row = {
        "labels": key,
        "true rate": float(truth["is_noisy"].mean()),
        "estimated": json.loads(report.read_text())["estimate"]["rate"],
        "changed": (cl["relabel"] + cl["drop"]) / cleaned.height,
        "relabel / drop": f"{cl['relabel']} / {cl['drop']}",
        "label acc: noisy → kept": f"{cl['label_accuracy_before']:.3f} → {cl['label_accuracy_after']:.3f}",
        "CE test acc: noisy labels": mean_sd([a for a, _ in accs]),
        "CE test acc: cleaned labels": mean_sd([b for _, b in accs]) if retrain else None,
    }
    if len(accs) > 1:
        row["cleaned − noisy (paired)"] = mean_sd([b - a for a, b in accs], signed=True)
    scores = {  # the detectors' scores from the detection, CE's from the first training seed
        m: read_table((d if m in params.detectors else outs[0]) / f"scores/{m}.parquet", score_schema(m))[0]
        for m in params.scored
    }
    review, _ = review_simulation(truth, scores, params)
    for order, m in review["orders"].items():  # a simulated reviewer walks each order (labels fixed)
        row[f"fixed in 100 reviews: {order}"] = m["fixed_at_100"]
    row["s"] = time.perf_counter() - t0
    return row, emb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("presets/cifar10n_cpu.yaml"))
    ap.add_argument("--keys", default="worse_label,random_label1,aggre_label")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gradclean-clean-retrain"))
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--max-per-split", type=int, default=None, help="a quick check on fewer images")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs (a quick check)")
    ap.add_argument("--embed-size", type=int, default=None, help="override embed.image_size (px)")
    ap.add_argument("--no-retrain", action="store_true", help="skip the retrain (detection and review only)")
    ap.add_argument("--seeds", type=int, default=1, help="CE pairs at this many training seeds (mean ± sd)")
    ap.add_argument("--first-seed", type=int, default=0, help="offset of the first training seed")
    a = ap.parse_args()
    if a.seeds < 1 or a.first_seed < 0 or ((a.seeds > 1 or a.first_seed) and a.no_retrain):
        ap.error("--seeds must be >= 1 and --first-seed >= 0; other training seeds need the retrain")
    raw = yaml.safe_load(a.params.read_text())
    if a.max_per_split:
        raw["data"]["max_per_split"] = a.max_per_split
    if a.epochs:
        raw["train"]["epochs"] = a.epochs
    if a.embed_size:
        raw["embed"]["image_size"] = a.embed_size
    rows, features = [], None
    for key in a.keys.split(","):
        row, features = one_label_set(raw, key, a.work, features, not a.no_retrain, a.seeds, a.first_seed)
        rows.append(row)
        print(row, flush=True)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else "–" if v is None else str(v)  # noqa: E731
    head = (
        f"`{' '.join(sys.argv)}`: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"CPU threads, torch {torch.__version__}"
    )
    lines = table(head, rows, fmt)
    emit(lines, a.out)


if __name__ == "__main__":
    main()
