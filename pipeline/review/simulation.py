"""What a review hour buys, measured where the truth is known (injected noise, CIFAR-N): a simulated
reviewer who answers with the true label walks three orders of the training samples, gradclean's queue
ranking (`pipeline.review.queue`), the baseline's noise_score ranking (`review.baseline`, CE by default)
and a random order, and fixes every wrong label it reviews.

`reports/metrics.json` gets, per order, the labels fixed after 50, 100 and 200 reviews and the reviews
needed to reach 99% label accuracy; the report plots labels fixed against reviews done.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from pipeline.config import Params
from pipeline.figures import fmt, png
from pipeline.review.queue import review_priority, reviews_to_reach, simulate_reviews

CHECKPOINTS = (50, 100, 200)


def review_orders(scores: dict[str, pl.DataFrame], params: Params) -> dict[str, np.ndarray]:
    """Order name -> (N,) sample ids, review first first: `gradclean` (the queue's ranking over
    `review_voters`), the baseline's noise_score (when it is scored) and `random` (seeded by `seed`)."""
    voters = {m: scores[m] for m in params.review_voters}
    ranked = review_priority(voters, disagreement_weight=params.review.disagreement_weight)
    orders = {"gradclean": ranked["sample_id"].to_numpy()}
    base = params.review.baseline
    if base in scores:
        b = scores[base].sort("sample_id")
        ids = b["sample_id"].to_numpy()
        orders[f"{base} noise_score"] = ids[np.lexsort((ids, -b["noise_score"].to_numpy()))]
    ids = np.sort(orders["gradclean"])
    orders["random"] = np.random.default_rng(params.seed).permutation(ids)
    return orders


def review_simulation(
    noisy: pl.DataFrame, scores: dict[str, pl.DataFrame], params: Params
) -> tuple[dict[str, Any] | None, str]:
    """(metrics, HTML section) of the simulated review; (None, "") when the truth is unknown."""
    if noisy["is_noisy"].null_count():
        return None, ""
    wrong_of = dict(zip(noisy["sample_id"].to_list(), noisy["is_noisy"].to_list(), strict=True))
    n, n_wrong = noisy.height, int(noisy["is_noisy"].sum())
    metrics: dict[str, Any] = {"samples": n, "wrong_labels": n_wrong, "orders": {}}
    curves = {}
    for name, order in review_orders(scores, params).items():
        wrong = np.asarray([wrong_of[s] for s in order], dtype=bool)
        fixed = simulate_reviews(np.arange(len(order)), wrong)
        curves[name] = fixed
        metrics["orders"][name] = {
            **{f"fixed_at_{c}": int(fixed[min(c, n)]) for c in CHECKPOINTS},
            "reviews_to_99pct_accuracy": reviews_to_reach(fixed, n_wrong, n, 0.99),
        }
    return metrics, _section(metrics, curves, n_wrong)


def _section(metrics: dict, curves: dict[str, np.ndarray], n_wrong: int) -> str:
    walk = len(next(iter(curves.values())))  # N + 1 points: 0 .. N reviews
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, end, title in ((axes[0], min(walk, 4 * max(CHECKPOINTS) + 1), "the first reviews"),
                           (axes[1], walk, "the whole walk")):  # fmt: skip
        x = np.arange(end)
        for name, fixed in curves.items():
            ax.plot(x, fixed[:end], label=name)
        ax.plot(x, np.minimum(x, n_wrong), "k:", lw=1, label="every review fixes one")
        ax.set(xlabel="reviews done", ylabel="labels fixed")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    header = ("order", *(f"fixed at {c}" for c in CHECKPOINTS), "reviews to 99% label accuracy")
    rows = [
        (name, *(m[f"fixed_at_{c}"] for c in CHECKPOINTS), m["reviews_to_99pct_accuracy"])
        for name, m in metrics["orders"].items()
    ]
    table = "<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in rows) + "</table>"
    return (
        "<h2>What a review buys</h2><p>A simulated reviewer who answers with the true label walks each "
        f"order and fixes every wrong label it sees ({n_wrong} of {metrics['samples']} training labels are "
        f"wrong).</p>{table}{png(fig)}"
    )
