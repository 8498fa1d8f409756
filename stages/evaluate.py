"""Stage evaluate: metrics.json (every figure), summary.json (the headline ones), DVC plot data and
report.html from every earlier output."""

import sys
from pathlib import Path

from stages._cli import optional_path, run_stage


def _args(p):
    p.add_argument("--ingested", type=Path, default=Path("data/ingested"))
    p.add_argument("--noisy", type=Path, default=Path("data/noisy/train.parquet"))
    p.add_argument("--noise-report", type=Path, default=Path("data/noisy/noise_report.json"))
    p.add_argument("--scores-dir", type=Path, default=Path("scores"))
    p.add_argument("--logs-dir", type=Path, default=Path("logs"))
    p.add_argument("--cleaned", type=Path, default=Path("cleaned/labels.parquet"))
    p.add_argument("--retrain", type=Path, default=Path("reports/retrain.json"))
    p.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"))
    p.add_argument("--summary", type=Path, default=Path("reports/summary.json"))
    p.add_argument("--retrain-log", type=Path, default=Path("logs/retrain.csv"), help="'' = no curve")
    p.add_argument("--plots-dir", type=Path, default=Path("reports/plots/pr"))
    p.add_argument("--report", type=Path, default=Path("reports/report.html"))
    p.add_argument(
        "--datalab",
        type=Path,
        default=None,
        help="the datalab stage's table (default: no data-issues section)",
    )


def _run(a, params) -> None:
    from pipeline.runs.evaluate import run_evaluate

    run_evaluate(
        params,
        a.ingested,
        a.noisy,
        a.noise_report,
        a.scores_dir,
        a.logs_dir,
        a.cleaned,
        a.retrain,
        a.metrics,
        a.plots_dir,
        a.report,
        optional_path(a.datalab),
        a.summary,
        optional_path(a.retrain_log),
    )


def main(argv=None) -> int:
    return run_stage(
        __doc__,
        _args,
        _run,
        argv,
        backbones=False,  # builds no network
    )


if __name__ == "__main__":
    sys.exit(main())
