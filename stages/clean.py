"""Stage clean: params `clean` (+ `data` for the source root) + scores/*.parquet (+ the noise report's
estimated rate, the ingested tables, the reviewed decisions) -> cleaned/labels.parquet, cleaned/labels.csv,
cleaned/manifest.csv."""

import sys
from pathlib import Path

from stages._cli import run_stage


def _args(p):
    p.add_argument("--scores-dir", type=Path, default=Path("scores"))
    p.add_argument("--out", type=Path, default=Path("cleaned/labels.parquet"))
    p.add_argument("--csv", type=Path, default=Path("cleaned/labels.csv"))
    p.add_argument("--noise-report", type=Path, default=None, help="its estimate caps clean.max_share: auto")
    p.add_argument("--ingested", type=Path, default=None, help="adds each sample's source path / index")
    p.add_argument("--manifest", type=Path, default=None, help="the cleaned dataset as path,label,split")
    p.add_argument("--decisions", type=Path, default=None, help="reviewed decisions (file or folder)")


def _run(a, params) -> None:
    from pipeline.runs.clean import run_clean

    run_clean(params, a.scores_dir, a.out, a.csv, a.noise_report, a.ingested, a.manifest, a.decisions)


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
