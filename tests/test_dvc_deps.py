"""dvc.yaml's code deps are exactly what each stage imports: a stage that imports a project file its deps do
not list would not re-run when that file changes, and one that lists a file it does not import re-runs for
nothing.

Each stage's command names its script (`python -m stages.<name>`); its import closure over `pipeline/` and
`stages/` (module level and inside functions, `tests/test_imports.py`'s walker) is the set of code files it
runs. A package directory stands for its files when the stage imports every one of them. When this test
fails it prints the deps to paste.
"""

from __future__ import annotations

import re

import helpers
import pytest
import yaml
from helpers import import_graph, project_modules


def closure(module: str, graph: dict[str, set[str]]) -> set[str]:
    """`module` and every project module importing it runs, parent packages (their `__init__.py`) included."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
            parent = m.rpartition(".")[0]
            if parent and parent in graph:
                todo.append(parent)
    return seen


def code_deps(module: str) -> list[str]:
    """The files `module` runs, relative to the repo, with whole packages folded into their directory."""
    mods = project_modules()
    root = helpers.ROOT
    files = {mods[m].relative_to(root).as_posix() for m in closure(module, import_graph())}
    packages = sorted({p.parent.relative_to(root).as_posix() for p in root.glob("pipeline/**/__init__.py")})
    for pkg in sorted(packages, key=lambda p: p.count("/")):  # outermost first
        if pkg == "pipeline":
            continue
        inside = {p.relative_to(root).as_posix() for p in (root / pkg).rglob("*.py")}
        if inside and inside <= files:
            files = (files - inside) | {pkg}
    return sorted(files)


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((helpers.ROOT / "dvc.yaml").read_text())["stages"]
    return {name: st.get("do", st) for name, st in raw.items()}


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_lists_exactly_the_code_it_imports(name):
    stage = stages()[name]
    module = re.search(r"-m (stages\.\w+)", stage["cmd"]).group(1)
    listed = sorted(d for d in stage.get("deps", []) if str(d).startswith(("pipeline/", "stages/")))
    want = code_deps(module)
    missing, extra = sorted(set(want) - set(listed)), sorted(set(listed) - set(want))
    assert not missing and not extra, (
        f"{name}: imports but does not list {missing}; lists but does not import {extra}. Its code deps:\n"
        + "\n".join(f"      - {d}" for d in want)
    )
