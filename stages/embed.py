"""Stage embed: params `embed` + ingested splits + weights file -> features/embeddings.parquet."""

import sys
from pathlib import Path

from stages._cli import run_stage


def _args(p):
    p.add_argument("--ingested", type=Path, default=Path("data/ingested"))
    p.add_argument("--out", type=Path, default=Path("features/embeddings.parquet"))


def _run(a, params) -> None:
    from pipeline.runs.embed import run_embed

    run_embed(params, a.ingested, a.out)


def main(argv=None) -> int:
    return run_stage(__doc__, _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
