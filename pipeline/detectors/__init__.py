"""Label-error detectors on the `embed` stage's features: no network is trained.

Each detector is one file that registers a `DetectorSpec` in `DETECTORS`; the `detect@<name>` stage runs it
and writes the same SCORES table as a trained method, so detectors vote in `clean`, and appear in the
metrics and the report like any method.
"""

from pipeline.detectors.base import DETECTORS, DetectorInput, DetectorResult, DetectorSpec, register_detector

# Importing a detector module registers it.
from pipeline.detectors import knn, probe  # noqa: E402,F401  isort: skip

__all__ = ["DETECTORS", "DetectorInput", "DetectorResult", "DetectorSpec", "register_detector"]
