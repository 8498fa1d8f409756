"""Stage weights: the packaged EfficientNet-Lite0 ImageNet weights -> a timm-format .safetensors file."""

import sys
from pathlib import Path

from stages._cli import run_stage


def _args(p):
    p.add_argument("--out", type=Path, default=Path("models/efficientnet_lite0.safetensors"))


def main(argv=None) -> int:
    from pipeline.runs.weights import run_weights

    return run_stage(__doc__, _args, lambda a, params: run_weights(a.out), argv, backbones=False)


if __name__ == "__main__":
    sys.exit(main())
