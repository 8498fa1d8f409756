"""Shared CLI plumbing for stage scripts: params loading and one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def run_stage(
    description: str,
    add_args: Callable[[argparse.ArgumentParser], None],
    body: Callable[[argparse.Namespace, object], None],
    argv: list[str] | None = None,
    *,
    backbones: bool = True,
) -> int:
    """Parse argv (always with --params), load params, run `body(args, params)`; GradcleanError -> exit 2.

    `body` imports its `pipeline` module itself, inside the function: argv is parsed first, so `--help` and
    usage errors answer without loading torch (which `pipeline.params` does, through the method registry).

    `backbones: False` is for stages that build no network: they skip the timm model-name check
    (`pipeline.params.check_backbones`), which the first stage and every training stage run.
    """
    from pipeline.errors import GradcleanError

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    add_args(parser)
    args = parser.parse_args(argv)
    from pipeline.params import load_params

    try:
        params = load_params(args.params, backbones=backbones)
        body(args, params)
    except GradcleanError as e:
        print(f"gradclean: error: {e}", file=sys.stderr)
        return 2
    return 0


def optional_path(path: Path | None) -> Path | None:
    """A path flag where `''` (or no value) means "none": argparse turns `''` into `Path('.')`."""
    return None if path is None or str(path) in ("", ".") else path
