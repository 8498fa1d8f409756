"""Stage gal_agreement: params `gal_agreement`, `method.gal`, `train`, `noise`, `seed` -> a step table.

GAL's Figure 1: the agreement ratio per step of θA + θB at several symmetric noise rates.
"""

import sys
from pathlib import Path

from stages._cli import run_stage


def _args(p):
    p.add_argument("--ingested", type=Path, default=Path("data/ingested"))
    p.add_argument("--out", type=Path, default=Path("logs/gal_agreement.csv"))


def main(argv=None) -> int:
    from pipeline.runs.gal_agreement import run_gal_agreement

    return run_stage(__doc__, _args, lambda a, params: run_gal_agreement(params, a.ingested, a.out), argv)


if __name__ == "__main__":
    sys.exit(main())
