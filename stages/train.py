"""Stage train@<method>: params `seed`, `train`, `method.<method>` -> scores, epoch/step logs, pool history,
checkpoint."""

import sys
from pathlib import Path

from stages._cli import run_stage


def _args(p):
    p.add_argument("method", help="registry name, e.g. ce")
    p.add_argument("--ingested", type=Path, default=Path("data/ingested"))
    p.add_argument("--noisy", type=Path, default=Path("data/noisy/train.parquet"))
    p.add_argument("--noise-report", type=Path, default=Path("data/noisy/noise_report.json"))
    p.add_argument("--oof", type=Path, default=Path("data/noisy/oof_probs.parquet"), help="out-of-fold probs")
    p.add_argument("--scores-dir", type=Path, default=Path("scores"))
    p.add_argument("--logs-dir", type=Path, default=Path("logs"))
    p.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"))
    p.add_argument("--steps-dir", type=Path, default=Path("logs/steps"), help="per-step logs")
    p.add_argument("--history-dir", type=Path, default=Path("scores/pool_history"), help="GSS pool histories")


def _run(a, params) -> None:
    from pipeline.runs.train import run_train

    run_train(
        params,
        a.method,
        a.ingested,
        a.noisy,
        a.scores_dir / f"{a.method}.parquet",
        a.logs_dir / f"{a.method}.csv",
        a.checkpoint_dir / f"{a.method}.pt",
        a.steps_dir / f"{a.method}.csv",
        a.history_dir / f"{a.method}.parquet",
        noise_report=a.noise_report,
        oof_path=a.oof,
    )


def main(argv=None) -> int:
    return run_stage(
        __doc__,
        _args,
        _run,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
