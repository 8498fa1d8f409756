"""Stage detect@<detector>: params `seed`, `detector.<name>`, `train.flag_threshold` + embeddings and
noisy labels (+ optionally the noise stage's out-of-fold probabilities and report, which a detector may
reuse) -> scores/<name>.parquet and logs/<name>.csv."""

import sys
from pathlib import Path

from stages._cli import run_stage


def _args(p):
    p.add_argument("detector", help="detector registry name, e.g. knn")
    p.add_argument("--ingested", type=Path, default=Path("data/ingested"))
    p.add_argument("--noisy", type=Path, default=Path("data/noisy/train.parquet"))
    p.add_argument("--embeddings", type=Path, default=Path("features/embeddings.parquet"))
    p.add_argument("--scores-dir", type=Path, default=Path("scores"))
    p.add_argument("--logs-dir", type=Path, default=Path("logs"))
    p.add_argument("--oof", type=Path, default=None, help="the noise stage's out-of-fold probabilities")
    p.add_argument("--noise-report", type=Path, default=None, help="the noise stage's report")


def _run(a, params) -> None:
    from pipeline.runs.detect import run_detect

    run_detect(
        params,
        a.detector,
        a.ingested,
        a.noisy,
        a.embeddings,
        a.scores_dir / f"{a.detector}.parquet",
        a.logs_dir / f"{a.detector}.csv",
        a.oof,
        a.noise_report,
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
