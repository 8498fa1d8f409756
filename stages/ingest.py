"""Stage ingest: params `data` -> data/ingested/{train,test}.parquet."""

import sys
from pathlib import Path

from stages._cli import run_stage


def main(argv=None) -> int:
    from pipeline.runs.ingest import run_ingest

    return run_stage(
        __doc__,
        lambda p: p.add_argument("--out", type=Path, default=Path("data/ingested")),
        lambda a, params: run_ingest(params, a.out),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
