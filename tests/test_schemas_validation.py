"""Table schemas (`pipeline.schemas`), atomic writers (`pipeline.io`), GX suites (`pipeline.validation`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from conftest import tiny_image

from pipeline.data.images import encode_png
from pipeline.errors import DataError, ValidationFailed
from pipeline.io import read_json, read_table, staged_outputs, write_json, write_table
from pipeline.registry import score_schema
from pipeline.schemas import CLASS_NAMES_KEY, CLEANED, INGESTED, NOISY, SCORES, TableSchema, class_names_of
from pipeline.validation import validate

K = 3
NAMES = ["cat", "dog", "eel"]
PNG = encode_png(tiny_image(0, size=4))


# ------------------------------------------------------------------------------------- good frames
def ingested() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sample_id": pl.Series([10, 11, 12, 13], dtype=pl.Int64),
            "label": pl.Series([0, 1, 2, 1], dtype=pl.Int32),
            "image": pl.Series([PNG] * 4, dtype=pl.Binary),
            "source_path": pl.Series(["a.png", "b.png", None, "d.png"], dtype=pl.String),
            "noisy_label": pl.Series([None] * 4, dtype=pl.Int32),
        }
    )


def noisy() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sample_id": pl.Series([10, 11, 12, 13], dtype=pl.Int64),
            "given_label": pl.Series([0, 2, 2, 1], dtype=pl.Int32),
            "true_label": pl.Series([0, 1, 2, 1], dtype=pl.Int32),
            "is_noisy": [False, True, False, False],
        }
    )


def scores() -> pl.DataFrame:
    probs = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.3, 0.5], [0.25, 0.5, 0.25]]
    return pl.DataFrame(
        {
            "sample_id": pl.Series([10, 11, 12, 13], dtype=pl.Int64),
            "method": ["ce"] * 4,
            "given_label": pl.Series([0, 1, 2, 1], dtype=pl.Int32),
            "pseudo_label": pl.Series([0, 2, 2, 1], dtype=pl.Int32),
            "confidence": pl.Series([0.7, 0.8, 0.5, 0.5], dtype=pl.Float32),
            "noise_score": pl.Series([0.3, 0.9, 0.5, 0.5], dtype=pl.Float32),
            "is_flagged": [False, True, True, False],
            "probs": pl.Series(probs, dtype=pl.List(pl.Float32)),
            "grad_similarity": pl.Series([0.1, -0.4, None, 0.9], dtype=pl.Float32),
            "direction_pool": pl.Series(probs, dtype=pl.List(pl.Float32)),  # a declared method column
            "my_score": pl.Series([0, 1, 0, 1], dtype=pl.Int32),  # an undeclared one passes through
        }
    )


def cleaned() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sample_id": pl.Series([10, 11, 12, 13], dtype=pl.Int64),
            "given_label": pl.Series([0, 1, 2, 1], dtype=pl.Int32),
            "given_class": ["cat", "dog", "eel", "dog"],
            "cleaned_label": pl.Series([0, 2, None, 1], dtype=pl.Int32),
            "cleaned_class": ["cat", "eel", None, "dog"],
            "action": ["keep", "relabel", "drop", "keep"],
            "confidence": pl.Series([0.9, 0.85, 0.6, 0.7], dtype=pl.Float32),
            "reason": ["agree", "2 methods", "noise_score 0.9", "agree"],
            "methods_agreeing": pl.Series([2, 2, 1, 2], dtype=pl.Int32),
        }
    )


GOOD = {
    "ingested": (INGESTED, ingested),
    "noisy": (NOISY, noisy),
    "scores": (SCORES, scores),
    "cleaned": (CLEANED, cleaned),
}
NON_NULL = {"ingested": "label", "noisy": "given_label", "scores": "confidence", "cleaned": "action"}


# ---------------------------------------------------------------------------------- TableSchema.check
@pytest.mark.parametrize("name", GOOD)
def test_check_accepts_good_frame_and_casts(name: str) -> None:
    schema, make = GOOD[name]
    table = schema.check(make().to_arrow(), f"{name}.parquet")
    for c in schema.columns:
        assert table.schema.field(c.name).type == c.type
    assert table.column_names[: len(schema.columns)] == [c.name for c in schema.columns]


@pytest.mark.parametrize("name", GOOD)
def test_check_rejects_missing_column(name: str) -> None:
    schema, make = GOOD[name]
    frame = make().drop("sample_id")
    with pytest.raises(ValidationFailed, match=rf"out/{name}.parquet: missing column\(s\) \['sample_id'\]"):
        schema.check(frame.to_arrow(), f"out/{name}.parquet")


@pytest.mark.parametrize("name", GOOD)
def test_check_rejects_nulls_in_non_null_column(name: str) -> None:
    schema, make = GOOD[name]
    col = NON_NULL[name]
    frame = make()
    frame = frame.with_columns(
        pl.when(pl.col("sample_id") == 11).then(None).otherwise(pl.col(col)).alias(col)
    )
    with pytest.raises(ValidationFailed, match=rf"{name}.parquet: column '{col}' has 1 null value"):
        schema.check(frame.to_arrow(), f"{name}.parquet")


@pytest.mark.parametrize("name", GOOD)
def test_check_rejects_uncastable_sample_id(name: str) -> None:
    schema, make = GOOD[name]
    frame = make().with_columns(pl.Series("sample_id", ["10", "x11", "12", "13"]))
    with pytest.raises(
        ValidationFailed, match=rf"{name}.parquet: column 'sample_id' has type \w*string, expected int64"
    ):
        schema.check(frame.to_arrow(), f"{name}.parquet")


def test_check_rejects_lossy_cast() -> None:
    frame = noisy().with_columns(pl.Series("given_label", [0.0, 1.5, 2.0, 1.0]))
    with pytest.raises(
        ValidationFailed, match=r"n.parquet: column 'given_label' has type double, expected int32"
    ):
        NOISY.check(frame.to_arrow(), "n.parquet")


def test_check_rejects_uncastable_list_column() -> None:
    frame = scores().with_columns(pl.Series("probs", ["a", "b", "c", "d"]))
    with pytest.raises(ValidationFailed, match=r"s.parquet: column 'probs' has type"):
        SCORES.check(frame.to_arrow(), "s.parquet")


def test_check_casts_compatible_types() -> None:
    frame = noisy().with_columns(pl.col("given_label").cast(pl.Int64), pl.col("sample_id").cast(pl.Int32))
    table = NOISY.check(frame.to_arrow(), "n.parquet")
    assert table.schema.field("given_label").type == pa.int32()
    assert table.schema.field("sample_id").type == pa.int64()


def test_check_extra_columns() -> None:
    with pytest.raises(ValidationFailed, match=r"n.parquet: unexpected column\(s\) \['oops'\]"):
        NOISY.check(noisy().with_columns(pl.lit(1).alias("oops")).to_arrow(), "n.parquet")
    table = SCORES.check(scores().to_arrow(), "s.parquet")  # scores allow method columns
    assert "direction_pool" in table.column_names and "my_score" in table.column_names


def test_declared_method_columns_are_checked() -> None:
    """A declared method column (GSS's direction_pool, from its spec) must have its type, and its rows must be
    pools."""
    gss = score_schema("gss")
    bad_type = scores().with_columns(pl.Series("direction_pool", [0, 1, 0, 1], dtype=pl.Int32))
    with pytest.raises(ValidationFailed, match="direction_pool"):
        gss.check(bad_type.to_arrow(), "s.parquet")
    validate(scores(), gss, 3, "s.parquet")
    pools = [[0.5, 0.5, 0.0], [0.2, 0.2, 0.2], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]  # row 11 sums to 0.6
    bad_sum = scores().with_columns(pl.Series("direction_pool", pools, dtype=pl.List(pl.Float32)))
    with pytest.raises(ValidationFailed, match=r"direction_pool has K non-negative.*sample_id 11"):
        validate(bad_sum, gss, 3, "s.parquet")
    bad_range = scores().with_columns(pl.Series("pool_entropy", [0.1, 1.5, 0.2, 0.3], dtype=pl.Float32))
    with pytest.raises(ValidationFailed, match=r"pool_entropy.*sample_id 11"):
        validate(bad_range, gss, 3, "s.parquet")


def test_check_keeps_metadata() -> None:
    table = NOISY.arrow_schema(NAMES)
    assert class_names_of(table, "x") == NAMES
    t = noisy().to_arrow()
    t = t.replace_schema_metadata({CLASS_NAMES_KEY: b'["a","b","c"]'})
    assert class_names_of(NOISY.check(t, "x").schema, "x") == ["a", "b", "c"]
    with pytest.raises(ValidationFailed, match="y.parquet: no class names"):
        class_names_of(noisy().to_arrow().schema, "y.parquet")


def test_score_columns_declare_direction_and_range() -> None:
    for name in ("confidence", "noise_score", "grad_similarity"):
        c = SCORES.column(name)
        assert c.direction and c.min_value is not None and c.max_value is not None
    with pytest.raises(KeyError):
        SCORES.column("nope")


def test_every_registered_column_says_what_it_holds() -> None:
    """Each method's and detector's own columns (declared in its file) describe themselves; numeric scores
    state their direction and at least one bound."""
    from pipeline.detectors import DETECTORS
    from pipeline.methods import REGISTRY

    for spec in [*REGISTRY.values(), *DETECTORS.values()]:
        for c in spec.columns:
            assert c.description, (spec.name, c.name)
            numeric = pa.types.is_floating(c.type) and not c.is_label
            if numeric:
                assert c.direction and (c.min_value is not None or c.max_value is not None), (
                    spec.name,
                    c.name,
                )
    assert score_schema("gss").column("direction_pool").distribution
    with pytest.raises(KeyError, match="neither"):
        score_schema("nope")


# ------------------------------------------------------------------------------------------------ io
def test_write_and_read_round_trip(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "noisy.parquet"
    write_table(dest, noisy(), NOISY, class_names=NAMES)
    frame, names = read_table(dest, NOISY)
    assert names == NAMES
    assert frame.equals(noisy())
    assert [p.name for p in dest.parent.iterdir()] == ["noisy.parquet"]  # no temp files left


def test_read_table_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="absent.parquet: file not found"):
        read_table(tmp_path / "absent.parquet", NOISY)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="bad.parquet: not a readable Parquet"):
        read_table(bad, NOISY)
    other = tmp_path / "other.parquet"
    write_table(other, scores(), SCORES)
    with pytest.raises(ValidationFailed, match="other.parquet: missing column"):
        read_table(other, CLEANED)


def test_staged_outputs_leave_nothing_when_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with staged_outputs() as out:
            out.write_table(tmp_path / "a.parquet", noisy(), NOISY)
            out.write_json(tmp_path / "b.json", {"x": 1})
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_staged_outputs_keep_earlier_good_file(tmp_path: Path) -> None:
    dest, side = tmp_path / "scores.parquet", tmp_path / "report.json"
    write_table(dest, scores(), SCORES)
    write_json(side, {"run": 1})
    good = dest.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with staged_outputs() as out:
            out.write_json(side, {"run": 2})
            out.write_bytes(dest, b"half a file")
            raise KeyboardInterrupt
    assert dest.read_bytes() == good and read_json(side) == {"run": 1}
    with pytest.raises(ValidationFailed, match="scores.parquet: missing column"):
        with staged_outputs() as out:
            out.write_json(side, {"run": 3})
            out.write_table(dest, scores().drop("probs"), SCORES)  # fails the schema check
    assert dest.read_bytes() == good and read_json(side) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "scores.parquet"]


def test_staged_outputs_publish_all_on_success(tmp_path: Path) -> None:
    with staged_outputs() as out:
        out.write_table(tmp_path / "t.parquet", cleaned(), CLEANED, class_names=NAMES)
        out.write_csv(tmp_path / "t.csv", cleaned().drop("cleaned_label"))
        out.write_text(tmp_path / "notes.txt", "hi")
        assert not (tmp_path / "notes.txt").exists()  # nothing appears before the block ends
    assert (tmp_path / "notes.txt").read_text() == "hi"
    frame, names = read_table(tmp_path / "t.parquet", CLEANED)
    assert names == NAMES and frame.height == 4
    assert (tmp_path / "t.csv").read_text().startswith("sample_id,")


def test_write_table_failure_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="n.parquet: column 'given_label' has 1 null"):
        write_table(
            tmp_path / "n.parquet",
            noisy().with_columns(pl.Series("given_label", [0, None, 1, 1], dtype=pl.Int32)),
            NOISY,
        )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("name", GOOD)
def test_validate_passes_good_frame(name: str) -> None:
    schema, make = GOOD[name]
    validate(make(), schema, K, f"{name}.parquet")


def test_validate_empty_frame() -> None:
    with pytest.raises(ValidationFailed, match="n.parquet: table 'noisy' is empty"):
        validate(noisy().head(0), NOISY, K, "n.parquet")


def _set(frame: pl.DataFrame, sid: int, **values) -> pl.DataFrame:
    return frame.with_columns(
        [
            pl.when(pl.col("sample_id") == sid)
            .then(pl.lit(v, dtype=frame.schema[c]))
            .otherwise(pl.col(c))
            .alias(c)
            for c, v in values.items()
        ]
    )


def _fails(frame: pl.DataFrame, schema: TableSchema, *patterns: str) -> str:
    with pytest.raises(ValidationFailed) as e:
        validate(frame, schema, K, "data/x.parquet")
    msg = str(e.value)
    assert msg.startswith("data/x.parquet: ")
    for pat in patterns:
        assert pat in msg, msg
    return msg


def test_validate_duplicate_sample_id() -> None:
    frame = _set(ingested(), 12, sample_id=11)
    _fails(frame, INGESTED, "expect_column_values_to_be_unique on 'sample_id'", "sample_id 11")


@pytest.mark.parametrize("value", [3, -1])
def test_validate_label_out_of_range(value: int) -> None:
    msg = _fails(_set(ingested(), 13, label=value), INGESTED, "on 'label'", "sample_id 13", f"values {value}")
    assert "sample_id 10" not in msg


def test_validate_undecodable_image() -> None:
    frame = _set(ingested(), 12, image=b"\x89PNG\r\n\x1a\ngarbage")
    msg = _fails(frame, INGESTED, "image bytes decode as an image", "sample_id 12")
    assert "sample_id 11" not in msg


def test_validate_noisy_flag_inconsistent_and_label_range() -> None:
    _fails(
        _set(noisy(), 10, is_noisy=True), NOISY, "is_noisy equals given_label != true_label", "sample_id 10"
    )
    _fails(_set(noisy(), 11, true_label=7), NOISY, "on 'true_label'", "sample_id 11")


def test_validate_probs_not_summing_to_one() -> None:
    frame = scores().with_columns(
        pl.Series(
            "probs",
            [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.3, 0.9], [0.25, 0.5, 0.25]],
            dtype=pl.List(pl.Float32),
        )
    )
    msg = _fails(frame, SCORES, "probs has K non-negative entries summing to 1", "sample_id 12")
    assert "sample_id 10" not in msg


def test_validate_probs_wrong_length_and_argmax() -> None:
    frame = scores().with_columns(
        pl.Series(
            "probs",
            [[0.7, 0.3], [0.1, 0.1, 0.8], [0.2, 0.3, 0.5], [0.25, 0.5, 0.25]],
            dtype=pl.List(pl.Float32),
        )
    )
    _fails(frame, SCORES, "summing to 1", "sample_id 10")
    _fails(_set(scores(), 11, pseudo_label=0), SCORES, "pseudo_label is the argmax of probs", "sample_id 11")


def test_validate_score_out_of_range() -> None:
    _fails(_set(scores(), 13, noise_score=1.5), SCORES, "on 'noise_score'", "sample_id 13")


def test_validate_relabel_to_same_label() -> None:
    frame = _set(cleaned(), 11, cleaned_label=1, cleaned_class="dog")
    msg = _fails(frame, CLEANED, "relabel implies cleaned_label != given_label", "sample_id 11")
    assert "sample_id 13" not in msg


def test_validate_cleaned_action_rules() -> None:
    _fails(_set(cleaned(), 13, action="maybe"), CLEANED, "on 'action'", "sample_id 13")
    _fails(_set(cleaned(), 12, cleaned_label=0), CLEANED, "drop implies a null cleaned_label", "sample_id 12")
    _fails(
        _set(cleaned(), 10, cleaned_label=2),
        CLEANED,
        "keep implies cleaned_label == given_label",
        "sample_id 10",
    )


def test_validate_reports_every_failure_with_ids() -> None:
    frame = _set(_set(ingested(), 10, label=5), 13, image=b"")
    msg = _fails(frame, INGESTED, "sample_id 10", "sample_id 13")
    assert msg.count("\n  - ") == 2


def test_validate_many_bad_rows_are_capped() -> None:
    n = 40
    frame = pl.DataFrame(
        {
            "sample_id": pl.Series(np.arange(n), dtype=pl.Int64),
            "given_label": pl.Series([9] * n, dtype=pl.Int32),
            "true_label": pl.Series([None] * n, dtype=pl.Int32),
            "is_noisy": pl.Series([None] * n, dtype=pl.Boolean),
        }
    )
    msg = _fails(frame, NOISY, "40 row(s) fail")
    assert "sample_id 0, 1, 2" in msg and ", 10," not in msg


def test_validate_score_table_must_have_one_row_per_training_sample() -> None:
    """The train stage passes rows=N: a score table missing a training sample fails with the count."""
    frame = GOOD["scores"][1]()
    validate(frame, SCORES, K, "scores/ce.parquet", rows=frame.height)
    with pytest.raises(ValidationFailed) as e:
        validate(frame, SCORES, K, "scores/ce.parquet", rows=frame.height + 1)
    assert f"expect_table_row_count_to_equal {{'value': {frame.height + 1}}}: observed {frame.height}" in str(
        e.value
    )


def test_ingested_row_without_image_bytes_or_file_fails_validation() -> None:
    """`image` may be null only for a streamed row, whose `file` opens as an image (data.stream)."""
    schema, make = GOOD["ingested"]
    frame = make().with_columns(
        pl.when(pl.col("sample_id") == 11).then(None).otherwise(pl.col("image")).alias("image")
    )
    with pytest.raises(ValidationFailed, match=r"(?s)image bytes decode.*sample_id 11"):
        validate(frame, schema, K, "ingested.parquet")
