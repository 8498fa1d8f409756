"""What every bench script that prints a markdown table does with it."""

from __future__ import annotations

from pathlib import Path


def emit(lines: list[str], out: Path | None) -> None:
    """Print the table's lines and, when `out` is given, write them there too (for docs/results.md)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.write_text(text)


def table(head: str, rows: list[dict], fmt=str) -> list[str]:
    """A markdown table of `rows` (one dict each, the first one's keys as columns) under the line `head`
    (the command and the host), each cell written by `fmt`."""
    cols = list(rows[0])
    return [
        head,
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *("| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows),
    ]
