"""The package's imports form no cycle: `pipeline.config` is data and knows no method, the methods import it,
and `pipeline.params` (which reads params against the registries) sits above both.

Every `import` and `from ... import` of a project module counts, at module level and inside functions.
"""

from __future__ import annotations

import graphlib
import subprocess
import sys

import helpers
import pytest
from helpers import import_graph


def test_the_walker_sees_imports_inside_functions():
    graph = import_graph()
    assert "pipeline.runs.ingest" in graph["stages.ingest"]  # imported inside a function
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


_HELP_PROBE = """
import contextlib, importlib, io, pathlib, sys
for f in sorted(pathlib.Path("stages").glob("*.py")):
    if f.name.startswith("_"):
        continue
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            importlib.import_module(f"stages.{f.stem}").main(["--help"])
        except SystemExit as e:
            assert e.code == 0, (f.stem, e.code)
        else:
            raise AssertionError(f"{f.stem} --help did not exit")
    assert out.getvalue().startswith("usage:"), f.stem
    print(f.stem)
print("torch" in sys.modules)
"""


def test_stage_help_does_not_import_torch():
    """`--help` on every stage script prints usage without loading torch (which takes seconds)."""
    done = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE], cwd=helpers.ROOT, capture_output=True, text=True, check=True
    )
    *stages, torch_loaded = done.stdout.split()
    assert {"train", "ingest", "evaluate"} <= set(stages), stages
    assert torch_loaded == "False", done.stdout
