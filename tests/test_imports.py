"""The package's imports form no cycle: `pipeline.config` is data and knows no method, the methods import it,
and `pipeline.params` (which reads params against the registries) sits above both.

Every `import` and `from ... import` of a project module counts, at module level and inside functions.
"""

from __future__ import annotations

import graphlib

import helpers
import pytest
from helpers import import_graph


def test_the_walker_sees_imports_inside_functions():
    graph = import_graph()
    assert "pipeline.runs.ingest" in graph["stages.ingest"]  # imported inside main()
    assert {"pipeline.methods", "pipeline.detectors", "pipeline.config"} <= graph["pipeline.params"]


def test_no_import_cycle():
    try:
        tuple(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_config_knows_no_method():
    graph = import_graph()
    known = {d for d in graph["pipeline.config"] if d.startswith(("pipeline.methods", "pipeline.detectors"))}
    assert not known, known


def test_a_planted_cycle_is_found(tmp_path, monkeypatch):
    """The check can fail: two modules that import each other (one inside a function) are reported."""
    pkg = tmp_path / "pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pipeline.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from pipeline import a\n")
    (tmp_path / "stages").mkdir()
    monkeypatch.setattr(helpers, "ROOT", tmp_path)
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(import_graph()).static_order())
