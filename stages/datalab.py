"""Stage datalab: params `datalab` + ingested splits + embeddings -> issues/datalab.parquet (near-duplicate
sets and outliers, train and test searched together)."""

import sys
from pathlib import Path

from stages._cli import run_stage


def _args(p):
    p.add_argument("--ingested", type=Path, default=Path("data/ingested"))
    p.add_argument("--embeddings", type=Path, default=Path("features/embeddings.parquet"))
    p.add_argument("--out", type=Path, default=Path("issues/datalab.parquet"))


def _run(a, params) -> None:
    from pipeline.datalab import run_datalab

    run_datalab(params, a.ingested, a.embeddings, a.out)


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
