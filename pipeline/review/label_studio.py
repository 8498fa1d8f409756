"""Label Studio, offline: the review queue as an import file (tasks with the image embedded as a `data:`
URI and gradclean's suggestion as a prediction), and the labelling config to paste into the project.

Each task's prediction carries `model_version` ("gradclean: <voters>") and `score` (the expected gain of a
review), so Label Studio's data manager sorts and filters the tasks by it. The choices are the classes
plus `[drop]` (no class fits) and `[unsure]`; `pipeline.review.decisions` reads Label Studio's JSON and
JSON-MIN exports of such a project back in.
"""

from __future__ import annotations

from html import escape

import polars as pl

from pipeline.review.decisions import DROP_CHOICE, UNSURE_CHOICE


def label_studio_config(class_names: list[str]) -> str:
    """The project's labelling interface (Settings → Labeling Interface → Code)."""
    choices = "".join(
        f'    <Choice value="{escape(c)}"/>\n' for c in [*class_names, DROP_CHOICE, UNSURE_CHOICE]
    )
    return (
        "<View>\n"
        '  <Image name="image" value="$image" zoom="true"/>\n'
        '  <Header value="given: $given_class · suggested: $suggested_class · $reason"/>\n'
        '  <Choices name="label" toName="image" choice="single" showInline="true" required="true">\n'
        f"{choices}"
        "  </Choices>\n"
        "</View>\n"
    )


def label_studio_tasks(queue: pl.DataFrame, images: dict[int, str], model_version: str) -> list[dict]:
    """One Label Studio task per queue row, in queue order.

    Args:
        queue: the REVIEW_QUEUE table.
        images: sample_id -> the image as a `data:` URI.
        model_version: names the ranking in Label Studio ("gradclean: probe+knn").
    """
    tasks = []
    for row in queue.iter_rows(named=True):
        tasks.append(
            {
                "data": {
                    "image": images[row["sample_id"]],
                    "sample_id": row["sample_id"],
                    "rank": row["rank"],
                    "given_class": row["given_class"],
                    "suggested_class": row["suggested_class"],
                    "reason": row["reason"],
                    "source": row["source_path"] or f"index {row['source_index']}",
                },
                "predictions": [
                    {
                        "model_version": model_version,
                        "score": round(float(row["expected_gain"]), 6),
                        "result": [
                            {
                                "from_name": "label",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": [row["suggested_class"]]},
                            }
                        ],
                    }
                ],
            }
        )
    return tasks
