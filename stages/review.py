"""Stage review: params `review` (+ `clean.methods`) + scores/*.parquet + cleaned/labels.parquet + the
ingested tables -> review/queue.parquet, queue.csv, review.html, label_studio.json, label_studio.xml."""

import sys
from pathlib import Path

from stages._cli import run_stage


def _args(p):
    p.add_argument("--scores-dir", type=Path, default=Path("scores"))
    p.add_argument("--cleaned", type=Path, default=Path("cleaned/labels.parquet"))
    p.add_argument("--ingested", type=Path, default=Path("data/ingested"))
    p.add_argument("--out-dir", type=Path, default=Path("review"))


def _run(a, params) -> None:
    from pipeline.runs.review import run_review

    run_review(params, a.scores_dir, a.cleaned, a.ingested, a.out_dir)


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
