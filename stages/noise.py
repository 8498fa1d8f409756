"""Stage noise: params `seed`, `noise`, `train`, `detector.probe` + ingested data (+ embeddings) ->
data/noisy/ (train, noise_report.json, oof_probs)."""

import sys
from pathlib import Path

from stages._cli import run_stage


def _args(p):
    p.add_argument("--ingested", type=Path, default=Path("data/ingested"))
    p.add_argument("--out", type=Path, default=Path("data/noisy/train.parquet"))
    p.add_argument("--report", type=Path, default=Path("data/noisy/noise_report.json"))
    p.add_argument("--oof", type=Path, default=Path("data/noisy/oof_probs.parquet"))
    p.add_argument("--embeddings", type=Path, default=None, help="embed stage's table (probe estimate)")


def _run(a, params) -> None:
    from pipeline.runs.noise import run_noise

    run_noise(params, a.ingested, a.out, a.report, a.oof, a.embeddings)


def main(argv=None) -> int:
    return run_stage(
        __doc__,
        _args,
        _run,
        argv,
        backbones=False,  # the K-fold estimate checks them itself (the probe builds no network)
    )


if __name__ == "__main__":
    sys.exit(main())
