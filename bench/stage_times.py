"""Per-stage wall time of a finished `dvc repro`, read from its outputs: the seconds between the newest
output file of each stage and of the stage before it (DVC's own work between stages included; the first
stage has no figure). Prints a markdown table.

    git worktree add /tmp/def HEAD && cd /tmp/def && date && dvc repro && date
    python bench/stage_times.py /tmp/def
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def finish_times(repo: Path) -> dict[str, float]:
    """{stage: modification time of its newest output} from `repo/dvc.lock`."""
    out = {}
    for name, stage in yaml.safe_load((repo / "dvc.lock").read_text())["stages"].items():
        times = []
        for o in stage.get("outs", []):
            p = repo / o["path"]
            files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p] * p.exists()
            times += [f.stat().st_mtime for f in files]
        if times:
            out[name] = max(times)
    return out


def main() -> None:
    repo = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    done = sorted(finish_times(repo).items(), key=lambda kv: kv[1])
    names = [n.replace("train@", "") for n, _ in done]
    secs = ["–"] + [f"{b - a:.0f}" for (_, a), (_, b) in zip(done, done[1:], strict=False)]
    print("| " + " | ".join(names) + " |\n|" + "---|" * len(names) + "\n| " + " | ".join(secs) + " |")
    print(f"\nfirst to last output: {done[-1][1] - done[0][1]:.0f} s")


if __name__ == "__main__":
    main()
