"""The one-page HTML report, built from sections: each a small function of `ReportInputs` returning HTML.

The page is the header, the method table, cleaning and retraining, the shared figures, one section per
method that contributes one (`MethodSpec.report_section`, in the method's own file), the gradient-similarity
section, the sections the evaluate stage adds (data issues), and the gallery of the most suspicious samples.
Figures are embedded PNGs (`pipeline.figures`), so the report is one self-contained file.
"""

from __future__ import annotations

import html

import numpy as np
import polars as pl

from pipeline.config import Params
from pipeline.figures import ReportInputs, curves, fmt, image_cell, plt, png, score_hist
from pipeline.methods import REGISTRY

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:1.5em auto;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f3f3f3}.figs img{margin:4px;border:1px solid #eee}
.gallery{display:flex;flex-wrap:wrap}.pair{display:flex;border:1px dashed #bbb;margin:3px}
.cell,.issue{width:130px;font-size:11px;margin:4px;text-align:center}
.thumb{width:64px;height:64px;image-rendering:pixelated;border:1px solid #999}"""


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    """An HTML table: escaped header cells, `fmt`-formatted body cells."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def header_section(r: ReportInputs) -> str:
    """Title, data, noise (requested, realised, estimated, with the estimate's warning) and the network."""
    p, n = r.params, r.metrics["noise"]
    noise = (
        f"noise: <b>{html.escape(n['kind'])}</b>, requested {fmt(n['requested_rate'])}, realised "
        f"{fmt(n['realised_rate'])}, estimated {fmt(n['estimated_rate'])}"
    )
    est = r.noise_report.get("estimate") or {}
    if est:
        noise += (
            f" (from {html.escape(str(est.get('from', 'folds')))}; held-out accuracy of its models on the "
            f"given labels {fmt(est.get('held_out_accuracy'))})"
        )
        if est.get("warning"):
            noise += f'</p><p style="color:#a00"><b>Warning:</b> {html.escape(est["warning"])}'
    return (
        f"<h1>gradclean report</h1>\n<p>data: <b>{html.escape(p.data.source)}</b>, {r.noisy.height} training "
        f"samples, {len(r.class_names)} classes; {noise}; backbone <b>{html.escape(p.train.backbone)}</b> at "
        f"{p.train.image_size} px, {p.train.epochs} epochs.</p>"
    )


def methods_section(r: ReportInputs) -> str:
    """One row per scored name: test accuracy, detection figures, training time against CE's."""
    ce_s = r.metrics["methods"].get("ce", {}).get("seconds")
    rows = []
    for m, row in r.metrics["methods"].items():
        d = row.get("detection", {})
        rows.append(
            (m, row["test_acc_last"], row["test_acc_best"], row["best_minus_last"])
            + tuple(d.get(k) for k in ("precision", "recall", "f1", "auroc", "average_precision"))
            + (row["seconds"], row["seconds"] / ce_s if ce_s else None)
        )
    header = ("method", "test acc (last)", "test acc (best)", "best − last", "flag precision", "flag recall")
    header += ("flag F1", "AUROC", "AP", "train s", "× CE time")
    return (
        f"<h2>Methods</h2>{_table(header, rows)}\n<p>Flags: noise_score ≥ {r.params.train.flag_threshold}. "
        "Detection figures need the truth\n(synthetic noise or CIFAR-N).</p>"
    )


def cleaning_section(r: ReportInputs) -> str:
    """What the vote changed, how right it was (truth known), and the retrained model's accuracy."""
    done, retrain = r.metrics["cleaning"], r.metrics["retrain"]
    rows = [
        ("methods voting", html.escape(", ".join(done["methods"]))),
        ("keep / relabel / drop", f"{done['keep']} / {done['relabel']} / {done['drop']}"),
    ]
    if r.truth_known:
        rows += [
            ("label accuracy before", fmt(done["label_accuracy_before"])),
            ("label accuracy after (kept rows)", fmt(done["label_accuracy_after"])),
            ("relabel accuracy", fmt(done["relabel_accuracy"])),
            ("drop precision (dropped rows that were wrong)", fmt(done["drop_precision"])),
        ]
    rows += [
        ("retrained CE test acc (last)", fmt(retrain["test_acc_last"])),
        ("CE on noisy labels test acc (last)", fmt(retrain.get("ce_noisy_test_acc_last"))),
    ]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<h2>Cleaning and retraining</h2><table>{cells}</table>"


def figures_section(r: ReportInputs) -> str:
    """Test accuracy per epoch; with the truth, label precision, precision-recall and score histograms;
    the realised and estimated noise transition matrices."""
    figs = [curves(r.logs, r.retrain_log, "test_acc", "test accuracy per epoch")]
    small = len(r.class_names) <= 100
    if r.truth_known:
        figs += [
            curves(r.logs, None, "label_precision", "label precision of the kept data"),
            _pr_figure(r.noisy, r.scores),
            score_hist(r.noisy, r.scores, "noise_score", 0.0, 1.0),
        ]
        if r.noise_report.get("realised_matrix") and small:
            figs.append(
                _matrix_figure(r.noise_report["realised_matrix"], r.class_names, "realised noise transition")
            )
    est = r.noise_report.get("estimate") or {}
    if est.get("matrix") and small:
        title = f"estimated noise transition (rate {est['rate']:.3f})"
        figs.append(_matrix_figure(est["matrix"], r.class_names, title))
    return f'<h2>Figures</h2><div class="figs">{"".join(figs)}</div>'


def method_sections(r: ReportInputs) -> list[str]:
    """The sections the trained methods contribute (`MethodSpec.report_section`), in `methods` order."""
    out = []
    for m in r.params.methods:
        section = REGISTRY[m].report_section
        if section is not None and m in r.logs:
            out.append(section(r, m))
    return out


def gradient_similarity_section(r: ReportInputs) -> str:
    """Every method's `grad_similarity` column as a detector (truth known only)."""
    if not r.truth_known:
        return ""
    rows = [
        (m, g["auroc"], g["average_precision"], g["mean_clean"], g["mean_noisy"])
        for m, row in r.metrics["methods"].items()
        if (g := row.get("grad_similarity"))
    ]
    return (
        "<h2>Gradient similarity</h2>"
        f"<p>Every method's <code>grad_similarity</code>: after training, each sample's mean top-"
        f"{r.params.train.similarity_k} cosine of last-layer gradients against a random minibatch of "
        f"{r.params.train.batch_size} (lower = its gradient agrees with few others). As a detector of "
        "mislabeled samples (score = −grad_similarity):</p>"
        + _table(("method", "AUROC", "AP", "mean, clean", "mean, mislabeled"), rows)
        + score_hist(r.noisy, r.scores, "grad_similarity", -1.0, 1.0)
    )


def gallery_section(r: ReportInputs) -> str:
    """The most suspicious samples by mean noise_score over the voting methods."""
    methods = r.params.clean.methods
    cells = _gallery_cells(
        r.cleaned, r.scores, r.noisy, r.images, r.class_names, methods, r.params.evaluate.gallery_size
    )
    return (
        f"<h2>Most suspicious samples</h2>\n<p>Ranked by mean noise_score over "
        f"{html.escape(', '.join(methods))}.</p>\n{cells}"
    )


def _pr_figure(noisy: pl.DataFrame, scores: dict[str, pl.DataFrame]) -> str:
    from pipeline.evaluate import pr_curve

    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    for m, s in scores.items():
        c = pr_curve(noisy, s)
        if c is not None:
            ax.plot(c["recall"], c["precision"], label=m)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("label-error detection (noise_score)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def _matrix_figure(mat: list[list[float]], names: list[str], title: str) -> str:
    a = np.asarray(mat)
    k = len(a)
    fig, ax = plt.subplots(figsize=(min(0.45 * k + 1.5, 9), min(0.45 * k + 1.2, 8)))
    im = ax.imshow(a, cmap="viridis", vmin=0, vmax=1)
    if k <= 20:
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        for i in range(k):
            for j in range(k):
                if a[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{a[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="w" if a[i, j] < 0.5 else "k",
                    )
    ax.set_xlabel("given label")
    ax.set_ylabel("true label")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return png(fig)


def _gallery_cells(
    cleaned: pl.DataFrame,
    scores: dict[str, pl.DataFrame],
    noisy: pl.DataFrame,
    images: pl.DataFrame,
    names: list[str],
    methods: list[str],
    n: int,
) -> str:
    if n == 0:
        return ""
    mean_noise = (
        pl.concat([scores[m].select("sample_id", "noise_score") for m in methods])
        .group_by("sample_id")
        .agg(pl.col("noise_score").mean())
    )
    top = (
        cleaned.join(mean_noise, on="sample_id")
        .join(noisy.select("sample_id", "true_label"), on="sample_id")
        .join(
            images.select(
                "sample_id", "image", "source_path", *(["file"] if "file" in images.columns else [])
            ),
            on="sample_id",
        )
        .sort(["noise_score", "sample_id"], descending=[True, False])
        .head(n)
    )
    cells = []
    for r in top.iter_rows(named=True):
        truth = "" if r["true_label"] is None else f"<br>truth: {html.escape(names[r['true_label']])}"
        cells.append(
            image_cell(
                r,
                f"id {r['sample_id']}<br>given: <b>{html.escape(r['given_class'])}</b><br>suggested: "
                f"{html.escape(r['cleaned_class'] or '–')} ({r['action']})<br>"
                f"noise {r['noise_score']:.2f}{truth}",
            )
        )
    return '<div class="gallery">' + "".join(cells) + "</div>"


def render_report(
    *,
    metrics: dict,
    noisy: pl.DataFrame,
    scores: dict[str, pl.DataFrame],
    logs: dict[str, pl.DataFrame],
    cleaned: pl.DataFrame,
    retrain_log: pl.DataFrame | None,
    report: dict,
    class_names: list[str],
    images: pl.DataFrame,
    params: Params,
    sections: tuple[str, ...] = (),
) -> str:
    """The HTML page as a string (self-contained: figures are embedded PNGs).

    Args:
        report: the noise stage's report (`noise_report.json`).
        sections: extra HTML sections placed before the gallery (e.g. the data-issues section).
        The rest: as `pipeline.figures.ReportInputs`.
    """
    r = ReportInputs(metrics, noisy, scores, logs, cleaned, retrain_log, report, class_names, images, params)
    parts = [header_section(r), methods_section(r), cleaning_section(r), figures_section(r)]
    parts += method_sections(r) + [gradient_similarity_section(r), *sections, gallery_section(r)]
    body = "\n".join(p for p in parts if p)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>gradclean report</title><style>\n{STYLE}'
        f"</style></head><body>\n{body}</body></html>"
    )
