"""Stage weights: the packaged EfficientNet-Lite0 ImageNet weights as a timm-format file.

The stage script calls the `run_*` function here; it writes through `staged_outputs()`, so nothing
appears unless it all succeeded.
"""

from __future__ import annotations

from pathlib import Path


def run_weights(out: Path) -> None:
    """Convert the packaged EfficientNet-Lite0 ImageNet weights into a timm-format file at `out`."""
    from pipeline.weights import convert_lite0

    digest = convert_lite0(out)
    print(f"weights: wrote {out} (timm efficientnet_lite0, sha256 {digest[:16]}…)")
