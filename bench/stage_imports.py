"""How much of each stage's wall time is spent importing: every stage's command from `dvc.yaml` (one per
`foreach` item), run again by hand under `python -X importtime` in a workspace where `dvc repro` has
finished. Prints a markdown table: wall seconds, seconds in top-level imports (importtime's own bookkeeping
included, so an upper bound), and the largest imports.

It overwrites the stages' outputs in that workspace (same inputs, same outputs), so use a scratch one:

    git worktree add /tmp/def HEAD && cd /tmp/def && dvc repro
    python bench/stage_imports.py /tmp/def
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$")  # cumulative µs of a top-level import


def resolve(cmd: str, params: dict, item: str | None) -> str:
    """`cmd` with `${item}` and `${section.key}` replaced as DVC would."""

    def value(m: re.Match) -> str:
        v = params
        for k in m.group(1).split("."):
            v = v[k]
        return str(v)

    cmd = " ".join(cmd.split())
    if item is not None:
        cmd = cmd.replace("${item}", item)
    return re.sub(r"\$\{([^}]+)\}", value, cmd)


def commands(repo: Path) -> list[tuple[str, str]]:
    """[(stage name, command)] in dvc.yaml's order, `foreach` stages expanded."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    out = []
    for name, stage in stages.items():
        if "foreach" in stage:
            for item in params[stage["foreach"][2:-1]]:
                out.append((f"{name}@{item}", resolve(stage["do"]["cmd"], params, item)))
        else:
            out.append((name, resolve(stage["cmd"], params, None)))
    return out


def main() -> None:
    repo = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    rows, total_wall, total_imports = [], 0.0, 0.0
    for name, cmd in commands(repo):
        t0 = time.perf_counter()
        timed = cmd.replace("python ", "python -X importtime ", 1)
        res = subprocess.run(timed, shell=True, cwd=repo, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(f"{name} failed ({res.returncode}):\n{res.stderr[-3000:]}")
        found = map(IMPORT_LINE.match, res.stderr.splitlines())
        tops = [(m.group(2), int(m.group(1)) / 1e6) for m in found if m]
        imports = sum(s for _, s in tops)
        largest = ", ".join(f"{n} {s:.1f}" for n, s in sorted(tops, key=lambda t: -t[1])[:4])
        rows.append(f"| {name} | {wall:.1f} | {imports:.1f} | {largest} |")
        total_wall, total_imports = total_wall + wall, total_imports + imports
        print(rows[-1], file=sys.stderr, flush=True)
    print("| stage | wall s | imports s | largest imports (s) |\n|---|---|---|---|")
    print("\n".join(rows))
    print(f"| **all {len(rows)}** | **{total_wall:.0f}** | **{total_imports:.0f}** | |")


if __name__ == "__main__":
    main()
