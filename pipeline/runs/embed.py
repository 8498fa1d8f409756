"""Stage embed: frozen pretrained features of every train and test image.

The stage script calls the `run_*` function here; it writes through `staged_outputs()`, so nothing
appears unless it all succeeded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import torch

from pipeline.config import Params
from pipeline.errors import ConfigError
from pipeline.io import read_table, staged_outputs
from pipeline.schemas import INGESTED
from pipeline.train import resolve_device


def _stored_images(frame: pl.DataFrame, size: int | None, where: str) -> torch.Tensor:
    """(N, 3, s, s) uint8 of an INGESTED frame (streamed rows read from their files), s = `size` or the
    first image's own width."""
    from pipeline.data.images import decode_images, open_image

    blobs = frame["image"].to_list()
    if "file" in frame.columns:
        blobs = [
            b if b is not None else Path(f).read_bytes() for b, f in zip(blobs, frame["file"], strict=True)
        ]
    if size is None:
        size = open_image(blobs[0], where).size[0] if blobs else 1
    names = [p or f"sample_id {i}" for p, i in zip(frame["source_path"], frame["sample_id"], strict=True)]
    return torch.from_numpy(decode_images(blobs, size, 3, names))


def run_embed(params: Params, ingested_dir: Path, out: Path) -> None:
    """One pass of the frozen pretrained `embed.backbone` over both ingested splits -> EMBEDDINGS table."""
    from pipeline.embed import embed_images
    from pipeline.models import create_pretrained, resolve_pretrained
    from pipeline.schemas import EMBEDDING_MODEL_KEY, EMBEDDINGS
    from pipeline.weights import sha256_of

    cfg = params.embed
    if cfg.pretrained is False:
        raise ConfigError(
            "embed.pretrained: false gives features of a random network; name a weights file or true"
        )
    pre = resolve_pretrained(cfg.backbone, cfg.pretrained, "embed.pretrained")
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        model = create_pretrained(cfg.backbone, cfg.pretrained, "embed.pretrained", num_classes=0, in_chans=3)
    model = model.eval().to(device).to(memory_format=torch.channels_last)
    frames, t0 = [], time.perf_counter()
    for split in ("train", "test"):
        table, _ = read_table(ingested_dir / f"{split}.parquet", INGESTED)
        images = _stored_images(table, cfg.load_size, str(ingested_dir / f"{split}.parquet"))
        feats = embed_images(
            model, images, mean=pre.mean, std=pre.std, size=cfg.image_size, batch_size=cfg.batch_size,
            device=device, flip=cfg.flip, desc=f"embed {split}",
        )  # fmt: skip
        frames.append(
            pl.DataFrame(
                {
                    "sample_id": table["sample_id"],
                    "split": pl.Series([split] * table.height, dtype=pl.String),
                    "embedding": pl.Series(feats).cast(pl.List(pl.Float32)),
                }
            )
        )
    seconds = time.perf_counter() - t0
    frame = pl.concat(frames)
    model_info = {
        "backbone": cfg.backbone,
        "weights": pre.source,
        "weights_sha256": sha256_of(pre.source) if pre.source != "hub" else None,
        "image_size": cfg.image_size,
        "flip": cfg.flip,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "dim": int(len(frame["embedding"][0])),
    }
    with staged_outputs() as outs:
        outs.write_table(
            out, frame, EMBEDDINGS, metadata={EMBEDDING_MODEL_KEY: json.dumps(model_info).encode()}
        )
    print(
        f"embed: {cfg.backbone} at {cfg.image_size} px, {frame.height} images, {model_info['dim']}-d, "
        f"{seconds:.1f}s ({frame.height / max(seconds, 1e-9):.1f} images/s)"
    )
