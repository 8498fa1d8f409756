"""Stage ingest: params `data` -> data/ingested/{train,test}.parquet."""

import sys
from pathlib import Path

from stages._cli import run_stage


def _run(a, params) -> None:
    from pipeline.runs.ingest import run_ingest

    run_ingest(params, a.out)


def main(argv=None) -> int:
    return run_stage(
        __doc__,
        lambda p: p.add_argument("--out", type=Path, default=Path("data/ingested")),
        _run,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
