"""The one-page HTML report: method table, figures (embedded matplotlib PNGs), suspicious-sample gallery."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from pipeline.config import Params  # noqa: E402
from pipeline.data.images import open_image  # noqa: E402
from pipeline.methods import REGISTRY  # noqa: E402


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _curves(logs: dict[str, pl.DataFrame], retrain_log: pl.DataFrame | None, col: str, title: str) -> str:
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for m, log in logs.items():
        if col in log.columns and log[col].null_count() < log.height:
            ax.plot(log["epoch"], log[col], marker=".", label=m)
    if retrain_log is not None and col == "test_acc":
        ax.plot(retrain_log["epoch"], retrain_log[col], "k--", label="retrain (CE on cleaned)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(col)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _agreement(table: pl.DataFrame) -> str:
    """GAL's Figure 1 from the sweep table: per noise rate, the share of parameter scalars and of parameter
    tensors whose gradient cosine passes τ, and the mean cosine; per step (thin) and smoothed over an epoch.
    """
    panels = (
        ("gate_ratio", "share of parameter scalars with g ≥ τ"),
        ("unit_gate_ratio", "share of parameter tensors with g ≥ τ"),
        ("mean_cosine", "mean gradient cosine g"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
    for i, rate in enumerate(sorted(set(table["noise_rate"].to_list()))):
        t = table.filter(pl.col("noise_rate") == rate).sort("step")
        post = t.filter(pl.col("gate_ratio").is_not_nan())
        window = max(int(post.group_by("epoch").len()["len"].median() or 1), 1) if post.height else 1
        color = f"C{i}"
        for ax, (col, title) in zip(axes, panels, strict=True):
            ax.plot(post["step"], post[col], color=color, alpha=0.25, lw=0.7)
            ax.plot(
                post["step"], post[col].rolling_mean(window, min_samples=1), color=color, label=f"{rate:.0%}"
            )
            ax.set_title(title, fontsize=10)
        if i == 0 and post.height:
            for ax in axes:
                ax.axvspan(0, post["step"][0], color="0.9", zorder=0)
                ax.set_xlabel("step (grey: warm-up on one network)")
    axes[0].set_yscale("log")
    axes[0].legend(title="noise", fontsize=8)
    fig.suptitle("GAL Figure 1: gradient agreement of θA and θB on class-matched batches", fontsize=11)
    return _png(fig)


POOL_PARTS = (
    ("given", "given label ỹ"),
    ("pred", "predicted label (≠ ỹ)"),
    ("other", "other classes"),
)


def _pools(log: pl.DataFrame, method: str) -> str:
    """GSS direction pools over training (the paper's Figure 2 idea): the mean pool mass on the given, the
    predicted and the other labels, for clean and for mislabeled samples (epoch log columns pool_*)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, group, title in ((axes[0], "clean", "clean samples"), (axes[1], "noisy", "mislabeled samples")):
        for i, (part, label) in enumerate(POOL_PARTS):
            col = f"pool_{part}_{group}"
            if col in log.columns:
                ax.plot(log["epoch"], log[col], marker=".", color=f"C{i}", label=label)
        if group == "noisy" and "pool_true_noisy" in log.columns:
            ax.plot(log["epoch"], log["pool_true_noisy"], "k--", label="true label (not used)")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean pool mass")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{method}: where the direction pools put their mass", fontsize=11)
    return _png(fig)


def _score_hist(
    noisy: pl.DataFrame, scores: dict[str, pl.DataFrame], column: str, lo: float, hi: float, note: str = ""
) -> str:
    """Per method, the distribution of a score column for clean and for mislabeled samples (density),
    four methods a row; methods whose column is all null are skipped."""
    have = {m: s for m, s in scores.items() if column in s.columns and s[column].null_count() < s.height}
    if not have:
        return ""
    cols = min(4, len(have))
    rows = -(-len(have) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.7 * rows), squeeze=False)
    bins = np.linspace(lo, hi, 31)
    for ax, (m, s) in zip(axes.flat, have.items(), strict=False):
        j = s.join(noisy.select("sample_id", "is_noisy"), on="sample_id").drop_nulls(column)
        for flag, label in ((False, "clean"), (True, "mislabeled")):
            ax.hist(
                j.filter(pl.col("is_noisy") == flag)[column], bins=bins, alpha=0.6, label=label, density=True
            )
        ax.set_title(f"{m}: {column}{note}", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(have) :]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _ranking(log: pl.DataFrame, realised: float | None) -> str:
    """The thesis' ranking figures: mislabeled samples among each batch's top-10 and bottom-10 weights,
    epoch means (gradsim's epoch log columns top10_noisy, bottom10_noisy)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.plot(log["epoch"], log["top10_noisy"], marker=".", label="top-10 weights (lower is better)")
    ax.plot(log["epoch"], log["bottom10_noisy"], marker=".", label="bottom-10 weights (higher is better)")
    if realised is not None:
        ax.axhline(10 * realised, color="k", ls="--", lw=1, label=f"random pick (10 × {realised:.2f})")
    ax.set_ylim(0, 10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mislabeled samples of 10")
    ax.set_title("gradsim: mislabeled samples in each batch's top / bottom 10")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _pr(noisy: pl.DataFrame, scores: dict[str, pl.DataFrame]) -> str:
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
    return _png(fig)


def _matrix(mat: list[list[float]], names: list[str], title: str) -> str:
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
    return _png(fig)


def _thumb(blob: bytes) -> str:
    img = open_image(blob, "gallery").convert("RGB")
    scale = max(1, 64 // max(img.size))
    img = img.resize((img.size[0] * scale, img.size[1] * scale), resample=0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return f'<img class="thumb" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _file_bytes(path: str | None) -> bytes:
    """A streamed sample's image bytes, read from its file for the gallery."""
    from pipeline.errors import DataError

    try:
        return Path(path).read_bytes()
    except (OSError, TypeError) as e:
        raise DataError(f"{path}: cannot read the image for the report gallery ({e})") from None


def image_cell(row: dict, caption: str, css: str = "cell") -> str:
    """One gallery cell: the thumbnail of an INGESTED row (bytes in memory, or read from its file) over an
    HTML caption; `css` is the cell's class ("cell" = the suspicious-samples gallery)."""
    return f'<div class="{css}">{_thumb(row["image"] or _file_bytes(row.get("file")))}<br>{caption}</div>'


def _gallery(
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
    agreement: pl.DataFrame | None = None,
    sections: tuple[str, ...] = (),
) -> str:
    """The HTML page as a string (self-contained: figures are embedded PNGs); `agreement` is GAL's
    Figure-1 sweep table (figure and table skipped when None or empty); `sections` are extra HTML sections
    placed before the gallery (e.g. the data-issues section)."""
    known = noisy["true_label"].null_count() == 0
    ce_s = metrics["methods"].get("ce", {}).get("seconds")
    rows = []
    for m, r in metrics["methods"].items():
        d = r.get("detection", {})
        ratio = r["seconds"] / ce_s if ce_s else None
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{_fmt(v)}</td>"
                for v in (
                    m,
                    r["test_acc_last"],
                    r["test_acc_best"],
                    r["best_minus_last"],
                    d.get("precision"),
                    d.get("recall"),
                    d.get("f1"),
                    d.get("auroc"),
                    d.get("average_precision"),
                    r["seconds"],
                    ratio,
                )
            )
            + "</tr>"
        )
    table = (
        "<table><tr><th>method</th><th>test acc (last)</th><th>test acc (best)</th><th>best − last</th>"
        "<th>flag precision</th><th>flag recall</th><th>flag F1</th><th>AUROC</th><th>AP</th>"
        "<th>train s</th><th>× CE time</th></tr>" + "".join(rows) + "</table>"
    )
    c = metrics["cleaning"]
    rt = metrics["retrain"]
    clean_rows = [
        ("methods voting", ", ".join(c["methods"])),
        ("keep / relabel / drop", f"{c['keep']} / {c['relabel']} / {c['drop']}"),
    ]
    if known:
        clean_rows += [
            ("label accuracy before", _fmt(c["label_accuracy_before"])),
            ("label accuracy after (kept rows)", _fmt(c["label_accuracy_after"])),
            ("relabel accuracy", _fmt(c["relabel_accuracy"])),
            ("drop precision (dropped rows that were wrong)", _fmt(c["drop_precision"])),
        ]
    clean_rows += [
        ("retrained CE test acc (last)", _fmt(rt["test_acc_last"])),
        ("CE on noisy labels test acc (last)", _fmt(rt.get("ce_noisy_test_acc_last"))),
    ]
    ctab = (
        "<table>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in clean_rows)
        + "</table>"
    )
    n = metrics["noise"]
    figs = [_curves(logs, retrain_log, "test_acc", "test accuracy per epoch")]
    if any("agreement_ratio" in log.columns for log in logs.values()):
        figs.append(_curves(logs, None, "agreement_ratio", "GAL: share of parameters updated (gate)"))
    if known:
        figs += [
            _curves(logs, None, "label_precision", "label precision of the kept data"),
            _pr(noisy, scores),
            _score_hist(noisy, scores, "noise_score", 0.0, 1.0),
        ]
        if report.get("realised_matrix") and len(class_names) <= 100:
            figs.append(_matrix(report["realised_matrix"], class_names, "realised noise transition"))
    if (report.get("estimate") or {}).get("matrix") and len(class_names) <= 100:
        est = report["estimate"]
        figs.append(
            _matrix(est["matrix"], class_names, f"estimated noise transition (rate {est['rate']:.3f})")
        )
    fig1 = ""
    if agreement is not None and agreement.height:
        summ = metrics.get("gal_agreement", {})
        rows_a = "".join(
            f"<tr><td>{html.escape(r)}</td><td>{_fmt(v['realised_rate'])}</td><td>{_fmt(v['gate_ratio'], 4)}"
            f"</td><td>{_fmt(v['unit_gate_ratio'])}</td><td>{_fmt(v['mean_cosine'])}</td></tr>"
            for r, v in summ.items()
        )
        gal = REGISTRY["gal"].options.model_validate(params.method.get("gal") or {})
        fig1 = (
            "<h2>GAL: gradient agreement against noise (the paper's Figure 1)</h2>"
            f"<p>θA = θB after a {gal.warmup_epochs}-epoch warm-up, then both trained on class-matched "
            "disjoint batches (<code>update: all</code>) while the gate is measured; "
            f"τ = {gal.tau:g}, granularity {gal.granularity}. Last-epoch means:</p>"
            "<table><tr><th>noise</th><th>realised</th><th>scalars with g ≥ τ</th><th>tensors with g ≥ τ</th>"
            f"<th>mean g</th></tr>{rows_a}</table>" + _agreement(agreement)
        )
    pool_logs = {m: log for m, log in logs.items() if "pool_given_clean" in log.columns}
    pools = ""
    if pool_logs:
        gss = REGISTRY["gss"].options.model_validate(params.method.get("gss") or {})
        pools = (
            "<h2>GSS: direction pools during training (the paper's Figure 2 idea)</h2>"
            f"<p>variant <b>{gss.variant}</b>. Each sample's training label is drawn from its pool every "
            "step; a mislabeled sample's pool should move its mass off the given label (onto the "
            "predicted one, or spread out), a clean sample's should stay on it. Means after each epoch "
            "(SSL: the pool in use for each sample).</p>"
            + "".join(_pools(log, m) for m, log in pool_logs.items())
        )
    sim = ""
    if known:
        rows_s = "".join(
            f"<tr><td>{html.escape(m)}</td><td>{_fmt(r['grad_similarity']['auroc'])}</td>"
            f"<td>{_fmt(r['grad_similarity']['average_precision'])}</td><td>{_fmt(r['grad_similarity']['mean_clean'])}"
            f"</td><td>{_fmt(r['grad_similarity']['mean_noisy'])}</td></tr>"
            for m, r in metrics["methods"].items()
            if "grad_similarity" in r
        )
        rank = [_ranking(log, n["realised_rate"]) for m, log in logs.items() if "top10_noisy" in log.columns]
        sim = (
            "<h2>Gradient similarity</h2>"
            f"<p>Every method's <code>grad_similarity</code>: after training, each sample's mean top-"
            f"{params.train.similarity_k} cosine of last-layer gradients against a random minibatch of "
            f"{params.train.batch_size} (lower = its gradient agrees with few others). As a detector of "
            "mislabeled samples (score = −grad_similarity):</p>"
            "<table><tr><th>method</th><th>AUROC</th><th>AP</th><th>mean, clean</th><th>mean, mislabeled</th>"
            f"</tr>{rows_s}</table>"
            + _score_hist(noisy, scores, "grad_similarity", -1.0, 1.0)
            + (
                "<p>gradsim's ranking figures (the thesis' panels b and c): mislabeled samples among each "
                "batch's top 10 and bottom 10 weights, mean per epoch.</p>" + "".join(rank)
                if rank
                else ""
            )
        )
    gallery = _gallery(
        cleaned, scores, noisy, images, class_names, params.clean.methods, params.evaluate.gallery_size
    )
    noise_line = (
        f"noise: <b>{html.escape(n['kind'])}</b>, requested {_fmt(n['requested_rate'])}, realised "
        f"{_fmt(n['realised_rate'])}, estimated {_fmt(n['estimated_rate'])}"
    )
    est = report.get("estimate") or {}
    if est:
        noise_line += (
            f" (from {html.escape(str(est.get('from', 'folds')))}; held-out accuracy of its models on the "
            f"given labels {_fmt(est.get('held_out_accuracy'))})"
        )
        if est.get("warning"):
            noise_line += f'</p><p style="color:#a00"><b>Warning:</b> {html.escape(est["warning"])}'

    return f"""<!doctype html><html><head><meta charset="utf-8"><title>gradclean report</title><style>
body{{font-family:system-ui,sans-serif;max-width:1200px;margin:1.5em auto;color:#222}}
table{{border-collapse:collapse;margin:.6em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
th{{background:#f3f3f3}}.figs img{{margin:4px;border:1px solid #eee}}
.gallery{{display:flex;flex-wrap:wrap}}.pair{{display:flex;border:1px dashed #bbb;margin:3px}}
.cell,.issue{{width:130px;font-size:11px;margin:4px;text-align:center}}
.thumb{{width:64px;height:64px;image-rendering:pixelated;border:1px solid #999}}</style></head><body>
<h1>gradclean report</h1>
<p>data: <b>{html.escape(params.data.source)}</b>, {noisy.height} training samples,
{len(class_names)} classes;
{noise_line}; backbone <b>{html.escape(params.train.backbone)}</b> at {params.train.image_size} px,
{params.train.epochs} epochs.</p>
<h2>Methods</h2>{table}
<p>Flags: noise_score ≥ {params.train.flag_threshold}. Detection figures need the truth
(synthetic noise or CIFAR-N).</p>
<h2>Cleaning and retraining</h2>{ctab}
<h2>Figures</h2><div class="figs">{"".join(figs)}</div>
{fig1}
{pools}
{sim}
{"".join(sections)}
<h2>Most suspicious samples</h2>
<p>Ranked by mean noise_score over {html.escape(", ".join(params.clean.methods))}.</p>
{gallery}</body></html>"""
