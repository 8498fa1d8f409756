"""Atomic writers and schema-checked readers.

Stages stage every output in a temporary file next to its destination and rename them all only when the
whole stage has succeeded (`Outputs`), so a failing stage leaves no partial output and does not damage an
earlier good one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import DataError, ValidationFailed
from pipeline.schemas import TableSchema, class_names_of
from pipeline.validation import check_values


class Outputs:
    """Collects a stage's outputs as temp files and publishes them together.

    Use through `staged_outputs()`; call `path(dest)` to get a temp path to write `dest` to.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def path(self, dest: str | os.PathLike) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        self._staged.append((Path(tmp), dest))
        return Path(tmp)

    def write_table(
        self,
        dest: str | os.PathLike,
        table: pa.Table | pl.DataFrame,
        schema: TableSchema,
        class_names: list[str] | None = None,
        metadata: dict[bytes, bytes] | None = None,
    ) -> None:
        _write_parquet(self.path(dest), table, schema, class_names, where=str(dest), metadata=metadata)

    def write_json(self, dest: str | os.PathLike, obj: Any) -> None:
        self.path(dest).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")

    def write_text(self, dest: str | os.PathLike, text: str) -> None:
        self.path(dest).write_text(text)

    def write_bytes(self, dest: str | os.PathLike, data: bytes) -> None:
        self.path(dest).write_bytes(data)

    def write_csv(self, dest: str | os.PathLike, df: pl.DataFrame) -> None:
        df.write_csv(self.path(dest))

    def _commit(self) -> None:
        umask = os.umask(0)
        os.umask(umask)
        for tmp, dest in self._staged:
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs are meant to be shared
            os.replace(tmp, dest)
        self._staged.clear()

    def _abort(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()


@contextmanager
def staged_outputs() -> Iterator[Outputs]:
    """Context manager: outputs appear only if the block finishes without an exception."""
    out = Outputs()
    try:
        yield out
    except BaseException:
        out._abort()
        raise
    out._commit()


def _write_parquet(
    path: Path,
    table: pa.Table | pl.DataFrame,
    schema: TableSchema,
    class_names: list[str] | None,
    where: str,
    metadata: dict[bytes, bytes] | None = None,
) -> None:
    if isinstance(table, pl.DataFrame):
        table = table.to_arrow()
    table = schema.check(table, where)
    meta = dict(table.schema.metadata or {}) | dict(metadata or {})
    if class_names is not None:
        from pipeline.schemas import CLASS_NAMES_KEY

        meta[CLASS_NAMES_KEY] = json.dumps(list(class_names)).encode()
    if meta:
        table = table.replace_schema_metadata(meta)
    pq.write_table(table, path)


def write_table(
    dest: str | os.PathLike,
    table: pa.Table | pl.DataFrame,
    schema: TableSchema,
    class_names: list[str] | None = None,
) -> None:
    """Write one Parquet table atomically after checking it against `schema`."""
    with staged_outputs() as out:
        out.write_table(dest, table, schema, class_names)


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    """Write one JSON file atomically."""
    with staged_outputs() as out:
        out.write_json(dest, obj)


def read_table(path: str | os.PathLike, schema: TableSchema) -> tuple[pl.DataFrame, list[str] | None]:
    """Read a Parquet table, check it against `schema`, return (frame, class names or None)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (run the stage that writes it first)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e
    table = schema.check(table, str(path))
    try:
        names = class_names_of(table.schema, str(path))
    except ValidationFailed:
        names = None
    frame = pl.from_arrow(table)
    check_values(frame, schema, None if names is None else len(names), str(path))
    return frame, names


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by a stage; a missing or unparsable file raises DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def read_csv(
    path: str | os.PathLike, columns: list[str] | tuple[str, ...] = (), what: str = "table"
) -> pl.DataFrame:
    """Read a CSV log written by a stage, requiring `columns`; errors name the file.

    Raises:
        DataError: the file is missing, unreadable, empty or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        df = pl.read_csv(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path}: not a readable CSV {what} ({str(e).splitlines()[0]})") from None
    missing = sorted(set(columns) - set(df.columns))
    if missing:
        raise DataError(f"{path}: {what} lacks column(s) {missing}")
    if df.height == 0:
        raise DataError(f"{path}: {what} has no rows")
    return df
