"""Great Expectations suites built from `pipeline.schemas`, and the same checks in plain polars.

GX (`validate`) runs on the tables that cross a boundary before they are written: the ingested images, the
noisy labels, the cleaned label file. `check_values` runs the same column checks in polars on every table a
stage reads, and on the score tables the training and detector stages write.

Each column's declared properties become expectations (not null, unique, in range, label in [0, K-1],
in the allowed set); table rules add derived checks (image decodable, probabilities sum to 1, relabel
implies a changed label), evaluated as boolean columns that GX expects to be all true. A failure raises
`ValidationFailed` naming the file, the rule, and the failing rows by sample_id.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.data.images import is_decodable, opens_as_image
from pipeline.errors import ValidationFailed
from pipeline.schemas import CLEANED, INGESTED, NOISY, SCORES, Column, TableSchema

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

MAX_ROWS_SHOWN = 10


@dataclass(frozen=True)
class Rule:
    """A derived check: `check(frame, K)` returns one bool per row (True = fine)."""

    name: str
    check: Callable[[pl.DataFrame, int], pl.Series]
    on_read: bool = True  # readers run it too (False: too costly, and the consumer checks it anyway)


def distribution_rule(column: Column) -> Rule:
    """Rows of a `distribution` column hold K non-negative values summing to 1 (null rows pass when the
    column is nullable)."""

    def check(df: pl.DataFrame, k: int) -> pl.Series:
        col = df[column.name].cast(pl.List(pl.Float32))
        ok = (col.list.len() == k) & ((col.list.sum() - 1.0).abs() < 1e-3) & (col.list.min() >= 0.0)
        return ok.fill_null(column.nullable) if column.nullable else ok.fill_null(False)

    return Rule(f"{column.name} has K non-negative entries summing to 1", check)


def rules_for(schema: TableSchema, columns: list[str]) -> tuple[Rule, ...]:
    """The table's rules plus one distribution rule per distribution column present."""
    dist = tuple(
        distribution_rule(c)
        for c in schema.columns + schema.extra_columns
        if c.distribution and c.name in columns
    )
    return dist + RULES.get(schema.name, ())


RULES: dict[str, tuple[Rule, ...]] = {
    INGESTED.name: (
        Rule(
            "image bytes decode as an image (streamed: the file opens as an image)",
            lambda df, k: pl.Series(
                [
                    is_decodable(b) if b is not None else f is not None and opens_as_image(f)
                    for b, f in zip(
                        df["image"], df["file"] if "file" in df.columns else [None] * df.height, strict=True
                    )
                ]
            ),
            on_read=False,  # decoding at load time names the file of an image that fails
        ),
    ),
    NOISY.name: (
        Rule(
            "is_noisy equals given_label != true_label",
            lambda df, k: ((df["given_label"] != df["true_label"]) == df["is_noisy"]).fill_null(True),
        ),
    ),
    SCORES.name: (
        Rule(
            "pseudo_label is the argmax of probs",
            lambda df, k: (
                df["probs"].cast(pl.List(pl.Float32)).list.arg_max() == df["pseudo_label"]
            ).fill_null(False),
        ),
    ),
    CLEANED.name: (
        Rule(
            "relabel implies cleaned_label != given_label",
            lambda df, k: (
                (df["action"] != "relabel") | (df["cleaned_label"] != df["given_label"])
            ).fill_null(False),
        ),
        Rule(
            "drop implies a null cleaned_label, keep implies cleaned_label == given_label",
            lambda df, k: pl.Series(
                np.where(
                    (df["action"] == "drop").to_numpy(),
                    df["cleaned_label"].is_null().to_numpy(),
                    ((df["action"] != "keep") | (df["cleaned_label"] == df["given_label"]))
                    .fill_null(False)
                    .to_numpy(),
                )
            ),
        ),
    ),
}


def check_values(
    frame: pl.DataFrame,
    schema: TableSchema,
    num_classes: int | None,
    where: str,
    *,
    rows: int | None = None,
) -> None:
    """The suite's checks in plain polars: what every reader runs on a table it loads, and what the training
    and detector stages run on the score tables they write.

    The Great Expectations suite (`validate`) runs where data cross a boundary: what comes in (ingest), the
    noisy labels (noise) and what goes out (clean). This repeats its column checks (not null or NaN, unique,
    label in [0, K-1], in range, in the allowed set) and the cheap table rules, so a table damaged or edited
    after it was written fails the stage that reads it. It costs milliseconds where a first GX validation in
    a process costs seconds (the import and the context).

    Args:
        rows: when given, the table must have exactly this many rows (one per training sample).

    Raises:
        ValidationFailed: naming `where` (the file), every failed check and up to 10 failing sample ids.
    """
    if frame.height == 0:
        raise ValidationFailed(f"{where}: table '{schema.name}' is empty")
    if rows is not None and frame.height != rows:
        raise ValidationFailed(f"{where}: table '{schema.name}' has {frame.height} rows, expected {rows}")
    present = [c for c in schema.columns + schema.extra_columns if c.name in frame.columns]
    if num_classes is not None and num_classes < 2 and any(c.is_label for c in present):
        raise ValidationFailed(f"{where}: {num_classes} class(es); label cleaning needs at least 2")
    ids = frame["sample_id"] if "sample_id" in frame.columns else pl.Series(range(frame.height))
    failures: list[tuple[str, pl.Series]] = []
    for c in present:
        s = frame[c.name]
        if isinstance(s.dtype, (pl.List, pl.Binary)):
            continue  # lists are checked by the distribution rules
        missing = s.is_null() | (s.is_nan().fill_null(False) if s.dtype.is_float() else False)
        if not c.nullable:
            failures.append((f"'{c.name}' is null or NaN", missing))
        if c.unique:
            failures.append((f"'{c.name}' appears more than once (must be unique)", s.is_duplicated()))
        lo, hi = (0, num_classes - 1) if c.is_label and num_classes else (c.min_value, c.max_value)
        number = s.fill_nan(None) if s.dtype.is_float() else s  # NaN is reported as missing, not as large
        if lo is not None:
            failures.append((f"'{c.name}' below {lo}", (number < lo).fill_null(False)))
        if hi is not None:
            failures.append((f"'{c.name}' above {hi}", (number > hi).fill_null(False)))
        if c.allowed is not None:
            failures.append(
                (f"'{c.name}' not in {list(c.allowed)}", ~s.is_in(list(c.allowed)).fill_null(True))
            )
    k = num_classes or 0
    failures += [
        (r.name, ~r.check(frame, k).fill_null(False)) for r in rules_for(schema, frame.columns) if r.on_read
    ]
    lines = []
    for what, bad in failures:
        if not bad.any():
            continue
        shown = ", ".join(str(v) for v in ids.filter(bad).head(MAX_ROWS_SHOWN).to_list())
        lines.append(f"  - {what}: {int(bad.sum())} row(s); sample_id {shown}")
    if lines:
        raise ValidationFailed(
            f"{where}: table '{schema.name}' fails its schema checks:\n" + "\n".join(lines)
        )


def _gx_context():
    import great_expectations as gx

    ctx = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # older/newer GX without this config: bars are cosmetic
        pass
    return ctx


def build_suite(
    schema: TableSchema,
    num_classes: int,
    frame_columns: list[str],
    rules: tuple[Rule, ...],
    rows: int | None = None,
):
    """The GX ExpectationSuite for `schema`: column expectations for `frame_columns` (the flat columns
    present), one all-true expectation per rule on its `_rule{i}` column, and exactly `rows` rows when
    given."""
    import great_expectations as gx

    E = gx.expectations
    suite = gx.ExpectationSuite(name=f"gradclean.{schema.name}")
    suite.add_expectation(E.ExpectTableRowCountToBeBetween(min_value=1))
    if rows is not None:
        suite.add_expectation(E.ExpectTableRowCountToEqual(value=rows))
    for c in schema.columns + schema.extra_columns:
        if c.name not in frame_columns:  # absent, or a list/binary column (checked by rules)
            continue
        if not c.nullable:
            suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column=c.name))
        if c.unique:
            suite.add_expectation(E.ExpectColumnValuesToBeUnique(column=c.name))
        if c.is_label:
            suite.add_expectation(
                E.ExpectColumnValuesToBeBetween(column=c.name, min_value=0, max_value=num_classes - 1)
            )
        elif c.min_value is not None or c.max_value is not None:
            suite.add_expectation(
                E.ExpectColumnValuesToBeBetween(column=c.name, min_value=c.min_value, max_value=c.max_value)
            )
        if c.allowed is not None:
            suite.add_expectation(E.ExpectColumnValuesToBeInSet(column=c.name, value_set=list(c.allowed)))
    for i, rule in enumerate(rules):
        suite.add_expectation(
            E.ExpectColumnValuesToBeInSet(column=f"_rule{i}", value_set=[True], meta={"rule": rule.name})
        )
    return suite


def validate(
    frame: pl.DataFrame, schema: TableSchema, num_classes: int, where: str, *, rows: int | None = None
) -> None:
    """Run the suite for `schema` on `frame`; `rows` adds the expectation of exactly that many rows (e.g. one
    per training sample for a score table).

    Raises:
        ValidationFailed: listing every failed expectation with up to 10 failing sample ids.
    """
    if frame.height == 0:
        raise ValidationFailed(f"{where}: table '{schema.name}' is empty")
    rules = rules_for(schema, frame.columns)
    flat = [c for c, t in frame.schema.items() if not isinstance(t, (pl.List, pl.Binary))]
    checked = frame.select(flat).with_columns(
        [rule.check(frame, num_classes).alias(f"_rule{i}") for i, rule in enumerate(rules)]
    )
    pdf = checked.to_pandas()
    ctx = _gx_context()
    batch = (
        ctx.data_sources.add_pandas("gradclean")
        .add_dataframe_asset(schema.name)
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": pdf})
    )
    suite = build_suite(schema, num_classes, flat, rules, rows)
    fmt = {"result_format": "COMPLETE"}
    index_cols = [c for c in ("sample_id", "source_path") if c in pdf.columns]  # source_path: find the file
    if index_cols:
        fmt["unexpected_index_column_names"] = index_cols
    res = batch.validate(suite, result_format=fmt)
    if res.success:
        return
    lines = []
    for r in res.results:
        if r.success:
            continue
        cfg = r.expectation_config
        col = cfg.kwargs.get("column")
        bounds = {
            k: v for k, v in cfg.kwargs.items() if k in ("min_value", "max_value", "value_set", "value")
        }
        what = (cfg.meta or {}).get("rule") or (
            f"{cfg.type}" + (f" on '{col}'" if col else "") + (f" {bounds}" if bounds else "")
        )
        n = r.result.get("unexpected_count")
        index = (r.result.get("unexpected_index_list") or [])[:MAX_ROWS_SHOWN]
        ids = [d.get("sample_id") for d in index]
        paths = [d["source_path"] for d in index if isinstance(d.get("source_path"), str)]
        vals = (r.result.get("partial_unexpected_list") or [])[:MAX_ROWS_SHOWN]
        detail = f"{n} row(s) fail" if n is not None else f"observed {r.result.get('observed_value')}"
        if ids and any(i is not None for i in ids):
            detail += f"; sample_id {', '.join(str(int(i)) for i in ids if i is not None)}"
            if col and not col.startswith("_rule"):
                detail += f" (values {', '.join(str(v) for v in vals)})"
        if paths:
            detail += f"; source_path {', '.join(paths)}"
        lines.append(f"  - {what}: {detail}")
    raise ValidationFailed(
        f"{where}: Great Expectations suite 'gradclean.{schema.name}' failed:\n" + "\n".join(lines)
    )
