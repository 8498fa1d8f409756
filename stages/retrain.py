"""Stage retrain: a fresh CE model on the cleaned labels -> reports/retrain.json and logs/retrain.csv."""

import sys
from pathlib import Path

from stages._cli import run_stage


def _args(p):
    p.add_argument("--ingested", type=Path, default=Path("data/ingested"))
    p.add_argument("--noisy", type=Path, default=Path("data/noisy/train.parquet"))
    p.add_argument("--cleaned", type=Path, default=Path("cleaned/labels.parquet"))
    p.add_argument("--summary", type=Path, default=Path("reports/retrain.json"))
    p.add_argument("--log", type=Path, default=Path("logs/retrain.csv"))
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/retrain.pt"))


def _run(a, params) -> None:
    from pipeline.runs.retrain import run_retrain

    run_retrain(params, a.ingested, a.noisy, a.cleaned, a.summary, a.log, a.checkpoint)


def main(argv=None) -> int:
    return run_stage(
        __doc__,
        _args,
        _run,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
