"""Stage weights: the packaged EfficientNet-Lite0 ImageNet weights -> a timm-format .safetensors file."""

import sys
from pathlib import Path

from stages._cli import run_stage


def _args(p):
    p.add_argument("--out", type=Path, default=Path("models/efficientnet_lite0.safetensors"))


def _run(a, params) -> None:
    from pipeline.runs.weights import run_weights

    run_weights(a.out)


def main(argv=None) -> int:
    return run_stage(__doc__, _args, _run, argv, backbones=False)


if __name__ == "__main__":
    sys.exit(main())
