"""What every bench script that prints a markdown table does with it."""

from __future__ import annotations

from pathlib import Path


def emit(lines: list[str], out: Path | None) -> None:
    """Print the table's lines and, when `out` is given, write them there too (for docs/results.md)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.write_text(text)
