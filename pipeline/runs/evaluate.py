"""Stage evaluate: metrics, summary, DVC plot data and the HTML report.

The stage script calls the `run_*` function here; it writes through `staged_outputs()`, so nothing
appears unless it all succeeded.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.config import Params
from pipeline.io import read_csv, read_json, read_table, staged_outputs
from pipeline.registry import score_schema
from pipeline.schemas import CLEANED, INGESTED, NOISY


def run_evaluate(
    params: Params,
    ingested_dir: Path,
    noisy_path: Path,
    noise_report_path: Path,
    scores_dir: Path,
    logs_dir: Path,
    cleaned_path: Path,
    retrain_path: Path,
    metrics_out: Path,
    plots_dir: Path,
    report_out: Path,
    datalab_path: Path | None = None,
    summary_out: Path | None = None,
    retrain_log: Path | None = None,
) -> None:
    """Compute metrics, write DVC metrics/plots and the HTML report.

    `retrain_log` is the retrain stage's epoch log (its test-accuracy curve in the report; skipped when None).

    `metrics_out` gets every figure; `summary_out` (when given) the headline ones that `dvc metrics show`
    prints (`pipeline.evaluate.headline`).

    `datalab_path` is the `datalab` stage's near duplicates and outliers (its section skipped when None).
    """
    from pipeline.evaluate import collect_metrics, headline, pr_curve
    from pipeline.report import render_report

    noisy, names = read_table(noisy_path, NOISY)
    scores = {m: read_table(scores_dir / f"{m}.parquet", score_schema(m))[0] for m in params.scored}
    logs = {
        m: read_csv(logs_dir / f"{m}.csv", ("epoch", "test_acc"), f"training log of train@{m}")
        for m in params.scored
    }
    cleaned, _ = read_table(cleaned_path, CLEANED)
    retrain = read_json(retrain_path)
    report = read_json(noise_report_path)
    metrics = collect_metrics(noisy, scores, logs, cleaned, retrain, report, params)
    curves = {m: pr_curve(noisy, s) for m, s in scores.items()}
    train_images, _ = read_table(ingested_dir / "train.parquet", INGESTED)
    sections = []
    if datalab_path is not None:
        from pipeline.datalab import report_section, summarise
        from pipeline.schemas import DATALAB

        issues, _ = read_table(datalab_path, DATALAB)
        metrics["data_issues"] = summarise(issues)
        test_images, _ = read_table(ingested_dir / "test.parquet", INGESTED)
        labels = dict(
            zip(noisy["sample_id"].to_list(), (names[g] for g in noisy["given_label"]), strict=True)
        )
        labels.update(
            zip(test_images["sample_id"].to_list(), (names[g] for g in test_images["label"]), strict=True)
        )
        both = pl.concat([train_images, test_images], how="diagonal_relaxed")
        sections.append(report_section(issues, both, labels, params.evaluate.gallery_size))
    from pipeline.review.simulation import review_simulation

    metrics["review"], review_html = review_simulation(noisy, scores, params)
    if review_html:
        sections.append(review_html)
    html = render_report(
        metrics=metrics,
        noisy=noisy,
        scores=scores,
        logs=logs,
        cleaned=cleaned,
        retrain_log=read_csv(retrain_log, ("epoch", "test_acc"), "retrain log") if retrain_log else None,
        report=report,
        class_names=names,
        images=train_images,
        params=params,
        sections=tuple(sections),
    )
    with staged_outputs() as out:
        out.write_json(metrics_out, metrics)
        if summary_out is not None:
            out.write_json(summary_out, headline(metrics))
        for m, curve in curves.items():
            if curve is not None:
                out.write_csv(plots_dir / f"{m}.csv", curve)
        out.write_text(report_out, html)
    print(f"evaluate: wrote {metrics_out}, {report_out}")
