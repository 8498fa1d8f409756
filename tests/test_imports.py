"""The package's imports form no cycle: `pipeline.config` is data and knows no method, the methods import it,
and `pipeline.params` (which reads params against the registries) sits above both.

Every `import` and `from ... import` of a project module counts, at module level and inside functions.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("pipeline", "stages"):
        for f in (ROOT / top).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the project modules it imports}, a `from pkg import name` counted as importing `pkg.name`
    when that is a module, else `pkg`."""
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                dep = owner(t)
                if dep and dep != mod:
                    graph[mod].add(dep)
    return graph


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
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(import_graph()).static_order())
