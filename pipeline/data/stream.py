"""Images read from their files batch by batch, for datasets too large to hold in memory (`data.stream`).

`StreamedImages` stands in for the (N, C, H, W) uint8 image tensor of an in-memory split: indexing it with
a batch of row indices (a tensor, a list or a slice) reads, decodes and resizes just those files, in
`train.workers` worker processes, and returns the uint8 batch on the training device. Methods draw their own
index batches (GAL's class-matched pairs, DivideMix's labeled/unlabeled subsets), so the reader is driven by
indices rather than by a fixed epoch order; everything after the indexing (augmentation, normalisation,
the methods) is the same code as for in-memory data.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from functools import partial

import numpy as np
import torch

from pipeline.data.images import check_modes, decode_file, file_is_grayscale

STATS_SAMPLE = 8192  # images the normaliser's mean/std are computed from (all of them when fewer)


def _decode_many(paths: Sequence[str], size: int, channels: int) -> np.ndarray:
    return np.stack([decode_file(p, size, channels) for p in paths])


class StreamedImages:
    """The image 'tensor' of a streamed split: files decoded on demand.

    Attributes:
        files: N absolute image paths, row i = sample row i.
        shape: (N, C, size, size), as the in-memory tensor would have.
        device: where decoded batches are put.
    """

    dtype = torch.uint8

    def __init__(
        self,
        files: Sequence[str],
        size: int,
        channels: int | str,
        device: torch.device,
        workers: int = 0,
        pool: Executor | None = None,
    ) -> None:
        self.files = list(files)
        self.size = size
        self.device = device
        self.workers = workers
        self._pool = pool
        if channels == "auto":
            gray = list(self._map(_gray_many, self.files))
            channels = check_modes(gray, self.files)
        self.channels = int(channels)
        self.shape = (len(self.files), self.channels, size, size)

    # ---------------------------------------------------------------------------------------- workers
    def _executor(self) -> Executor | None:
        if self.workers <= 0:
            return None
        if self._pool is None:
            ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
        return self._pool

    def _map(self, fn, items: list) -> list:
        """`fn(chunk)` over `workers` contiguous chunks of `items` (inline for 0 workers), concatenated."""
        pool = self._executor()
        if pool is None or len(items) < 2:
            return list(fn(items))
        step = -(-len(items) // self.workers)
        chunks = [items[i : i + step] for i in range(0, len(items), step)]
        return [x for part in pool.map(fn, chunks) for x in part]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    # --------------------------------------------------------------------------------------- indexing
    def __len__(self) -> int:
        return len(self.files)

    def _rows(self, idx) -> list[int]:
        if isinstance(idx, slice):
            return list(range(*idx.indices(len(self.files))))
        if isinstance(idx, torch.Tensor):
            return idx.detach().cpu().reshape(-1).tolist()
        return [int(i) for i in np.asarray(idx).reshape(-1)]

    def __getitem__(self, idx) -> torch.Tensor:
        """(B, C, size, size) uint8 on `device` for the rows `idx` (tensor, array, list or slice)."""
        rows = self._rows(idx)
        if not rows:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8, device=self.device)
        paths = [self.files[r] for r in rows]
        decode = partial(_decode_many, size=self.size, channels=self.channels)
        arrays = self._map(decode, paths)
        return torch.from_numpy(np.stack(arrays)).to(self.device)

    def take(self, idx) -> StreamedImages:
        """A lazy view of the rows `idx` (what `ImageData.subset` uses): nothing is decoded."""
        view = StreamedImages.__new__(StreamedImages)
        view.__dict__.update(self.__dict__)
        view.files = [self.files[r] for r in self._rows(idx)]
        view.shape = (len(view.files), *self.shape[1:])
        return view

    def stats_sample(self) -> torch.Tensor:
        """Up to STATS_SAMPLE evenly spaced images (all when fewer), decoded: (M, C, H, W) uint8."""
        n = len(self.files)
        rows = np.unique(np.linspace(0, n - 1, min(n, STATS_SAMPLE)).round().astype(np.int64)) if n else []
        return self[list(rows)]


def _gray_many(paths: Sequence[str]) -> list[bool]:
    return [file_is_grayscale(p) for p in paths]
