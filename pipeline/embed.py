"""Embeddings: one pass of a frozen pretrained backbone over uint8 images, and the table that holds them.

`embed_images` is the batched inference loop (upsample in the batch, normalise, features of the image and
its mirror averaged, `torch.inference_mode`, channels_last, bf16 autocast on CUDA). `Features` is the
`embed` stage's table read back and aligned with a split's sample ids; the detectors and the probe noise
estimate take it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pipeline.errors import DataError
from pipeline.io import read_table
from pipeline.schemas import EMBEDDING_MODEL_KEY, EMBEDDINGS


def features_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) normalised images -> (B, D) pooled penultimate features of a timm model."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


@torch.inference_mode()
def embed_images(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    size: int,
    batch_size: int,
    device: torch.device,
    flip: bool = True,
    progress: bool = True,
    desc: str = "embed",
) -> np.ndarray:
    """Features of every image.

    Args:
        model: a timm model in eval mode on `device` (its classifier unused).
        images: (N, C, h, w) uint8 on the CPU, C = 1 (repeated to RGB) or 3.
        mean, std: the weights' RGB normalisation of [0, 1] pixels.
        size: px the backbone sees; batches are resized from h to `size` (bilinear).
        batch_size: images per forward.
        device: where the model runs.
        flip: average the features of each image and its horizontal mirror.

    Returns:
        (N, D) float32.
    """
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    out = []
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc=desc, leave=False, disable=not progress, mininterval=0.5):
        x = images[i : i + batch_size].to(device, non_blocking=cuda).float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size
            )
        x = ((x - m) / s).contiguous(memory_format=torch.channels_last)
        with amp:
            f = features_of(model, x).float()
            if flip:
                f = (f + features_of(model, x.flip(-1)).float()) / 2
        out.append(f.cpu())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32)


@dataclass
class Features:
    """Embeddings of one training split and the test split, rows aligned with the given sample ids.

    Attributes:
        train: (N, D) float32, L2-normalised, row i = train sample_ids[i].
        test: (M, D) float32, L2-normalised.
        model: the embedding model's description (backbone, weights, checksum, image size).
    """

    train: np.ndarray
    test: np.ndarray
    model: dict


def _normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def load_features(path: Path, train_ids: np.ndarray, test_ids: np.ndarray) -> Features:
    """Read the `embed` stage's table and align it with the ingested splits' sample ids.

    Raises:
        DataError: naming the file when an id is missing, in the wrong split, extra, or the vectors are
            not finite or differ in length.
    """
    frame, _ = read_table(path, EMBEDDINGS)
    raw = (pq.read_schema(path).metadata or {}).get(EMBEDDING_MODEL_KEY)
    model = json.loads(raw) if raw else {}
    out = []
    for split, ids in (("train", train_ids), ("test", test_ids)):
        part = frame.filter(pl.col("split") == split)
        want = pl.DataFrame({"sample_id": np.asarray(ids, dtype=np.int64)})
        aligned = want.join(part, on="sample_id", how="left", maintain_order="left")
        missing = aligned.filter(pl.col("embedding").is_null())["sample_id"]
        if len(missing) or part.height != len(ids):
            extra = part.join(want, on="sample_id", how="anti")["sample_id"]
            shown = (
                f"sample_id {', '.join(map(str, missing[:5].to_list()))} missing"
                if len(missing)
                else f"sample_id {', '.join(map(str, extra[:5].to_list()))} not in the ingested {split} split"
            )
            raise DataError(
                f"{path}: embeddings do not match the ingested {split} split ({shown}); re-run embed"
            )
        lengths = aligned["embedding"].list.len().unique()
        if len(lengths) != 1:
            raise DataError(f"{path}: {split} embeddings differ in length ({sorted(lengths.to_list())})")
        x = np.asarray(aligned["embedding"].to_list(), dtype=np.float32)
        if not np.isfinite(x).all():
            row = int(np.flatnonzero(~np.isfinite(x).all(1))[0])
            raise DataError(f"{path}: non-finite embedding at sample_id {int(ids[row])}")
        out.append(_normalised(x))
    if out[0].shape[1] != out[1].shape[1]:
        raise DataError(f"{path}: train and test embeddings differ in length")
    return Features(out[0], out[1], model)
