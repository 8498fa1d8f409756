"""Both registries in one place, for code that handles any scored name: the trained methods
(`pipeline.methods.REGISTRY`) and the embedding detectors (`pipeline.detectors.DETECTORS`)."""

from __future__ import annotations

from pipeline.detectors import DETECTORS
from pipeline.methods import REGISTRY
from pipeline.schemas import SCORES, TableSchema


def score_schema(name: str) -> TableSchema:
    """SCORES with the columns method or detector `name` declares in its own file.

    Raises:
        KeyError: `name` is neither a registered method nor a detector.
    """
    spec = REGISTRY.get(name) or DETECTORS.get(name)
    if spec is None:
        raise KeyError(f"'{name}' is neither a registered method nor a detector")
    return SCORES.with_extra(spec.columns)
