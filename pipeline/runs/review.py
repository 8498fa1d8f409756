"""Stage review: the queue of samples worth a person's look, and the files to review it with.

The stage script calls the `run_*` function here; it writes through `staged_outputs()`, so nothing
appears unless it all succeeded.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import Params
from pipeline.io import read_table, staged_outputs
from pipeline.registry import score_schema
from pipeline.schemas import CLEANED, INGESTED, REVIEW_QUEUE
from pipeline.validation import validate


def run_review(
    params: Params, scores_dir: Path, cleaned_path: Path, ingested_dir: Path, out_dir: Path
) -> None:
    """Rank the training samples (`pipeline.review.queue`) and write, under `out_dir`: `queue.parquet` and
    `queue.csv` (the CSV is the decisions file to fill in), `review.html` (the keyboard review page),
    `label_studio.json` (tasks to import) and `label_studio.xml` (the labelling config)."""
    from pipeline.figures import file_bytes, image_uri
    from pipeline.review.label_studio import label_studio_config, label_studio_tasks
    from pipeline.review.page import review_page
    from pipeline.review.queue import build_queue, review_priority

    voters = params.review_voters
    scores, names = {}, None
    for m in voters:
        scores[m], names = read_table(scores_dir / f"{m}.parquet", score_schema(m))
    cleaned, _ = read_table(cleaned_path, CLEANED)
    priority = review_priority(scores, names, disagreement_weight=params.review.disagreement_weight)
    queue = build_queue(priority, cleaned, names, budget=params.review.budget, voters=len(voters))
    validate(queue, REVIEW_QUEUE, len(names), str(out_dir / "queue.parquet"))
    train, _ = read_table(ingested_dir / "train.parquet", INGESTED)
    wanted = train.filter(train["sample_id"].is_in(queue["sample_id"].implode()))
    files = wanted["file"] if "file" in wanted.columns else [None] * wanted.height
    images = {
        sid: image_uri(blob if blob is not None else file_bytes(f), params.review.image_size)
        for sid, blob, f in zip(wanted["sample_id"], wanted["image"], files, strict=True)
    }
    tasks = label_studio_tasks(queue, images, f"gradclean: {'+'.join(voters)}")
    with staged_outputs() as out:
        out.write_table(out_dir / "queue.parquet", queue, REVIEW_QUEUE, names)
        out.write_csv(out_dir / "queue.csv", queue)
        out.write_text(out_dir / "review.html", review_page(queue, images, names))
        out.write_text(out_dir / "label_studio.json", json.dumps(tasks) + "\n")
        out.write_text(out_dir / "label_studio.xml", label_studio_config(names))
    reviewed = cleaned["reviewer"].drop_nulls().len() if "reviewer" in cleaned.columns else 0
    print(
        f"review: {queue.height} samples queued (budget {params.review.budget}; {reviewed} already reviewed "
        f"are left out), ranked by {', '.join(voters)}; open {out_dir / 'review.html'}"
    )
