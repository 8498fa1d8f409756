"""Stage ingest: the configured source, validated with Great Expectations, as {train,test}.parquet.

The stage script calls the `run_*` function here; it writes through `staged_outputs()`, so nothing
appears unless it all succeeded.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.config import Params
from pipeline.data.sources import ingest, require_watched
from pipeline.errors import DataError
from pipeline.io import staged_outputs
from pipeline.schemas import INGESTED
from pipeline.validation import validate


def require_two_classes(labels: pl.Series, names: list[str], where: str) -> None:
    """A training split whose labels cover a single class has nothing to clean: refuse it by name."""
    present = labels.unique().to_list()
    if len(present) < 2:
        shown = ", ".join(repr(names[v]) if 0 <= v < len(names) else str(v) for v in present)
        raise DataError(
            f"{where}: every training label is one class ({shown}); label cleaning needs at least 2"
        )


def run_ingest(params: Params, out_dir: Path) -> None:
    """Load `params.data`, validate both splits with Great Expectations, write {train,test}.parquet.

    Inputs that dvc.yaml's `data.root` dependency does not cover are refused (`require_watched`), after the
    data themselves are checked."""
    data = ingest(params.data)
    require_watched(params.data)
    k = len(data.class_names)
    seen: dict[int, str] = {}
    for split, frame in (("train", data.train), ("test", data.test)):
        where = f"{params.data.source} source ({params.data.root or 'embedded'}), {split} split"
        if frame.height == 0:
            raise DataError(f"{where}: the {split} split is empty")
        if split == "train":
            require_two_classes(frame["label"], data.class_names, where)
        for sid in frame["sample_id"].to_list():
            if sid in seen:
                raise DataError(f"{where}: sample_id {sid} also appears in the {seen[sid]} split")
            seen[sid] = split
        validate(frame, INGESTED, k, where)
    with staged_outputs() as out:
        for split, frame in (("train", data.train), ("test", data.test)):
            out.write_table(out_dir / f"{split}.parquet", frame, INGESTED, data.class_names)
    print(f"ingest: {data.source}: {data.train.height} train / {data.test.height} test images, {k} classes")
