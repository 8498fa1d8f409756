"""Figure and table helpers shared by the report (`pipeline.report`) and the report sections that methods,
detectors and the datalab stage contribute, plus `ReportInputs`, what every section is given.

Figures are matplotlib PNGs embedded in the page as data URIs, so the report is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from pipeline.config import Params  # noqa: E402
from pipeline.data.images import open_image  # noqa: E402


@dataclass(frozen=True)
class ReportInputs:
    """Everything a report section may read.

    Attributes:
        metrics: `pipeline.evaluate.collect_metrics`'s result (what `reports/metrics.json` holds).
        noisy: the NOISY table (given labels; `true_label` and `is_noisy` when the truth is known).
        scores: scored name -> its SCORES table.
        logs: scored name -> its per-epoch training log.
        cleaned: the CLEANED table.
        retrain_log: the retrain stage's epoch log, or None.
        noise_report: the noise stage's report (`noise_report.json`).
        class_names: index = label.
        images: the INGESTED training rows (the gallery's thumbnails).
        params: the run's params.
    """

    metrics: dict
    noisy: pl.DataFrame
    scores: dict[str, pl.DataFrame]
    logs: dict[str, pl.DataFrame]
    cleaned: pl.DataFrame
    retrain_log: pl.DataFrame | None
    noise_report: dict
    class_names: list[str]
    images: pl.DataFrame
    params: Params

    @property
    def truth_known(self) -> bool:
        """The true labels are known (synthetic noise, CIFAR-N), so detection figures can be drawn."""
        return self.noisy["true_label"].null_count() == 0


def png(fig) -> str:
    """The figure as an embedded <img> (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: floats to `digits` places, None as a dash, text escaped."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def curves(logs: dict[str, pl.DataFrame], retrain_log: pl.DataFrame | None, col: str, title: str) -> str:
    """One epoch-log column per method (methods without it skipped); the retrain curve on test_acc."""
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
    return png(fig)


def score_hist(
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
    return png(fig)


def image_uri(blob: bytes, px: int = 64) -> str:
    """Encoded image bytes as a PNG `data:` URI about `px` pixels on its long side: small images are
    enlarged by an integer factor without smoothing, large ones shrunk."""
    img = open_image(blob, "gallery").convert("RGB")
    if max(img.size) < px:
        scale = max(1, px // max(img.size))
        img = img.resize((img.size[0] * scale, img.size[1] * scale), resample=0)
    elif max(img.size) > px:
        img.thumbnail((px, px))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def thumb(blob: bytes) -> str:
    """A 64-px pixelated thumbnail of encoded image bytes as an embedded <img>."""
    return f'<img class="thumb" src="{image_uri(blob, 64)}">'


def file_bytes(path: str | None) -> bytes:
    """A streamed sample's image bytes, read from its file for the gallery."""
    from pipeline.errors import DataError

    try:
        return Path(path).read_bytes()
    except (OSError, TypeError) as e:
        raise DataError(f"{path}: cannot read the image for the report gallery ({e})") from None


def image_cell(row: dict, caption: str, css: str = "cell") -> str:
    """One gallery cell: the thumbnail of an INGESTED row (bytes in memory, or read from its file) over an
    HTML caption; `css` is the cell's class ("cell" = the suspicious-samples gallery)."""
    return f'<div class="{css}">{thumb(row["image"] or file_bytes(row.get("file")))}<br>{caption}</div>'
