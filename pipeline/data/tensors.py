"""Image splits as uint8 tensors in memory, their batched augmentation and batching (batches carry sample
indices)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from pipeline.config import AugmentParams
from pipeline.data.images import decode_images
from pipeline.data.stream import StreamedImages


@dataclass
class ImageData:
    """A split held in memory.

    Attributes:
        images: (N, C, H, W) uint8 on the training device, or `StreamedImages` (decoded per batch).
        labels: (N,) int64 labels the methods train on (given labels for train, truth for test).
        sample_ids: (N,) int64 numpy sample ids; row i of every tensor is sample_ids[i].
        true_labels: (N,) int64 truth when known (train split with synthetic noise), else None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    sample_ids: np.ndarray
    true_labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray | torch.Tensor) -> ImageData:
        ix = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=self.labels.device)
        return ImageData(
            self.images.take(ix) if isinstance(self.images, StreamedImages) else self.images[ix],
            self.labels[ix],
            self.sample_ids[ix.cpu().numpy()],
            None if self.true_labels is None else self.true_labels[ix],
        )


def load_split(
    frame: pl.DataFrame,
    labels: np.ndarray,
    size: int,
    channels: int | str,
    device: torch.device,
    true_labels: np.ndarray | None = None,
    workers: int = 0,
) -> ImageData:
    """Decode an INGESTED frame's images into an ImageData.

    A streamed frame (`data.stream`: no image bytes, a `file` column) gets `StreamedImages` instead of a
    tensor: its files are decoded per batch in `workers` processes.

    Args:
        frame: rows with `sample_id`, `image`, `source_path`; order defines row order.
        labels: (N,) labels aligned with `frame`.
        size: side length in pixels.
        channels: 1, 3 or "auto".
        device: where the tensors live.
        true_labels: optional (N,) truth aligned with `frame`.
    """
    if "file" in frame.columns and frame["image"].null_count() == frame.height:
        images = StreamedImages(frame["file"].to_list(), size, channels, device, workers)
    else:
        names = [
            p if p is not None else f"sample_id {i}"
            for p, i in zip(frame["source_path"].to_list(), frame["sample_id"].to_list(), strict=True)
        ]
        images = torch.from_numpy(decode_images(frame["image"].to_list(), size, channels, names)).to(device)
    return ImageData(
        images=images,
        labels=torch.as_tensor(np.array(labels), dtype=torch.long, device=device),
        sample_ids=frame["sample_id"].to_numpy().astype(np.int64),
        true_labels=None
        if true_labels is None
        else torch.as_tensor(np.array(true_labels), dtype=torch.long, device=device),
    )


@dataclass(frozen=True)
class Normalizer:
    """Batch preprocessing: resize to the network's input size (when it differs from the stored size),
    then per-channel mean/std of [0, 1] pixels.

    The statistics are computed once from the training images (random init) or taken from the pretrained
    weights' config (`from_stats`). Resizing happens here, on the batched tensor, so images stay in memory
    at their stored size (e.g. 32 px CIFAR fed to a pretrained backbone at 96 px).
    """

    mean: torch.Tensor  # (1, C, 1, 1)
    std: torch.Tensor  # (1, C, 1, 1)
    size: int | None = None  # px the network sees; None = as stored

    @staticmethod
    def fit(images: torch.Tensor | StreamedImages, size: int | None = None) -> Normalizer:
        """From every image in memory; from an evenly spaced sample of a streamed split."""
        if isinstance(images, StreamedImages):
            images = images.stats_sample()
        x = images.float().div_(255.0)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
        return Normalizer(mean, std, size)

    @staticmethod
    def from_stats(
        mean: tuple[float, ...], std: tuple[float, ...], in_chans: int, device: torch.device, size: int | None
    ) -> Normalizer:
        """Fixed RGB statistics (a pretrained model's); one channel gets their means."""
        m, s = torch.tensor(mean, device=device), torch.tensor(std, device=device)
        if in_chans == 1:
            m, s = m.mean(0, keepdim=True), s.mean(0, keepdim=True)
        return Normalizer(m.view(1, -1, 1, 1), s.view(1, -1, 1, 1), size)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) uint8 -> normalised float32 (B, C, size, size)."""
        x = x_uint8.float().div_(255.0)
        if self.size is not None and x.shape[-1] != self.size:
            down = x.shape[-1] > self.size
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=down
            )
        return (x - self.mean) / self.std


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device` without blocking the host: a CPU tensor goes to CUDA through pinned memory, since a
    copy from pageable memory first waits for the GPU to finish its queued work (a host sync per step)."""
    if device.type != "cuda" or t.device == device:
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def augment(x: torch.Tensor, p: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    """Random pad-crop and horizontal flip on a whole batch at once.

    Args:
        x: (B, C, H, W) uint8 or float batch.
        p: augmentation options.
        gen: CPU generator the random offsets are drawn from (the same draws on every device; they reach a
            GPU without a host sync, see `to_device`).

    Returns:
        (B, C, H, W) augmented batch, same dtype and device.
    """
    b, _, h, w = x.shape
    if p.pad_crop > 0:
        pad = p.pad_crop
        xp = F.pad(x, (pad, pad, pad, pad))
        dy = to_device(torch.randint(0, 2 * pad + 1, (b,), generator=gen), x.device)
        dx = to_device(torch.randint(0, 2 * pad + 1, (b,), generator=gen), x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # B,1,H,1
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # B,1,1,W
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = xp[bi, ci, rows, cols]
    if p.hflip:
        flip = to_device(torch.rand(b, generator=gen) < 0.5, x.device)[:, None, None, None]
        x = torch.where(flip, x.flip(-1), x)
    return x


def batch_indices(
    n: int, batch_size: int, gen: torch.Generator, *, shuffle: bool = True
) -> Iterator[torch.Tensor]:
    """Yield index tensors covering 0..n-1 once.

    When shuffling (training), a trailing batch smaller than a quarter of `batch_size` (and always one of a
    single sample) is left out: BatchNorm would normalise it, and update its running statistics, from a
    handful of samples, and an adaptive optimiser takes as large a step from it as from a full batch. On
    the CIFAR-10N dev set a trailing batch of 2 (1 858 rows, batch 64) cost the fine-tune 7 points of test
    accuracy (docs/results.md). The order is reshuffled every epoch, so every row is still trained on.
    """
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    smallest = max(2, batch_size // 4)
    for idx in order.split(batch_size):
        if len(idx) >= smallest or (len(idx) == n >= 2) or not shuffle:
            yield idx
