"""Stage clean: the score tables' vote, as the cleaned label file and the cleaned manifest.

The stage script calls the `run_*` function here; it writes through `staged_outputs()`, so nothing
appears unless it all succeeded.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.config import Params
from pipeline.errors import ConfigError, DataError
from pipeline.io import read_json, read_table, staged_outputs
from pipeline.registry import score_schema
from pipeline.schemas import CLEANED, INGESTED
from pipeline.validation import validate


def run_clean(
    params: Params,
    scores_dir: Path,
    out_parquet: Path,
    out_csv: Path,
    noise_report: Path | None = None,
    ingested_dir: Path | None = None,
    out_manifest: Path | None = None,
    decisions: Path | None = None,
) -> None:
    """Apply the cleaning policy over `clean.methods` and write the cleaned label file (+ CSV twin).

    `decisions` (`review.decisions`: a decisions CSV, a Label Studio JSON export, or a folder of them) holds
    reviewed decisions; they beat the vote (`pipeline.clean`). A bad file is refused by name.

    `noise_report` (the noise stage's JSON) gives the estimated rate that `clean.max_share: auto` caps at.
    `ingested_dir` adds each sample's identity in the source (`source_path`, `source_file`,
    `source_index`), and `out_manifest` (needs it) writes the cleaned dataset in the manifest layout
    (`path,label,split,source_index`): kept and relabelled training rows with their cleaned class, every
    test row with its label, dropped rows left out.
    """
    from pipeline.clean import clean_labels

    scores, names = {}, None
    for m in params.clean.methods:
        scores[m], names = read_table(scores_dir / f"{m}.parquet", score_schema(m))
    reviewed, log = None, []
    if decisions is not None:
        from pipeline.review.decisions import read_decisions

        first = scores[params.clean.methods[0]].sort("sample_id")
        reviewed, log = read_decisions(
            decisions, first["sample_id"].to_numpy(), first["given_label"].to_numpy(), names
        )
    share = params.clean.max_share
    if share == "auto":
        est = (read_json(noise_report).get("estimate") or {}) if noise_report is not None else {}
        share = est.get("rate")
    cleaned = clean_labels(
        scores,
        names,
        relabel_confidence=params.clean.relabel_confidence,
        drop_noise_score=params.clean.drop_noise_score,
        agreement=params.clean.agreement,
        max_share=share,
        decisions=reviewed,
    )
    cleaned, manifest = _with_source_identity(cleaned, params, ingested_dir, names)
    if out_manifest is not None and manifest is None:
        raise ConfigError(
            "clean: --manifest needs --ingested (the source paths come from the ingested tables)"
        )
    validate(cleaned, CLEANED, len(names), str(out_parquet), rows=scores[params.clean.methods[0]].height)
    with staged_outputs() as out:
        out.write_table(out_parquet, cleaned, CLEANED, names)
        out.write_csv(out_csv, cleaned)
        if out_manifest is not None:
            out.write_csv(out_manifest, manifest)
    for line in log:
        print(line)
    counts = dict(cleaned["action"].value_counts().iter_rows())
    cap = "no cap" if share is None else f"cap {share:.3f} of the rows"
    print(
        f"clean: {counts.get('keep', 0)} keep, {counts.get('relabel', 0)} relabel, "
        f"{counts.get('drop', 0)} drop (methods: {', '.join(params.clean.methods)}; "
        f"agreement {params.clean.agreement}, {cap}"
        + (f"; {reviewed.height} reviewed decisions from {decisions}" if reviewed is not None else "")
        + ")"
    )


def _with_source_identity(
    cleaned: pl.DataFrame, params: Params, ingested_dir: Path | None, names: list[str]
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The cleaned table with source_path / source_file / source_index, and the cleaned manifest (both
    unchanged / None without `ingested_dir`)."""
    from pipeline.data.sources import file_root

    if ingested_dir is None:
        return cleaned, None
    root = file_root(params.data)

    def identity(frame: pl.DataFrame) -> pl.DataFrame:
        rel = frame["source_path"].to_list()
        files = frame["file"].to_list() if "file" in frame.columns else [None] * frame.height
        resolved = [
            f
            if f is not None
            else (str((root / r).resolve()) if r is not None and root is not None else None)
            for r, f in zip(rel, files, strict=True)
        ]
        return pl.DataFrame(
            {
                "sample_id": frame["sample_id"],
                "source_path": pl.Series(rel, dtype=pl.String),
                "source_file": pl.Series(resolved, dtype=pl.String),
                "source_index": pl.Series(
                    [None if r is not None else i for r, i in zip(rel, frame["sample_id"], strict=True)],
                    dtype=pl.Int64,
                ),
            }
        )

    train, _ = read_table(ingested_dir / "train.parquet", INGESTED)
    test, _ = read_table(ingested_dir / "test.parquet", INGESTED)
    ids = identity(train)
    out = cleaned.join(ids, on="sample_id", how="left", maintain_order="left")
    if out.height != cleaned.height or ids.height != cleaned.height:
        raise DataError(
            f"{ingested_dir / 'train.parquet'}: {ids.height} training samples, the score tables hold "
            f"{cleaned.height} (re-run the stages after ingest)"
        )
    kept = out.filter(pl.col("action") != "drop")
    test_ids = identity(test).with_columns(
        pl.Series("label", [names[v] for v in test["label"]], dtype=pl.String)
    )
    manifest = pl.concat(
        [
            kept.select(
                pl.col("source_path").alias("path"),
                pl.col("cleaned_class").alias("label"),
                pl.lit("train").alias("split"),
                "source_index",
            ),
            test_ids.select(
                pl.col("source_path").alias("path"), "label", pl.lit("test").alias("split"), "source_index"
            ),
        ]
    )
    return out, manifest
