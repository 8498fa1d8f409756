"""Data parallelism across processes (`torchrun`), built so that every method runs unchanged.

How a step runs on R ranks (`Dist`, read from torchrun's environment):

* Every rank holds the data and draws the same global index batch, augmentation and random numbers from
  the shared seed, so all of a method's bookkeeping (per-sample buffers, CDAS pools, GSS pools) is the
  same on every rank without any exchange.
* A network forward goes through `ShardedForward`: the rank runs its DDP-wrapped network on its
  contiguous shard of the batch's rows only, and the outputs of all shards are gathered (`gather_rows`), so
  each rank again holds the whole batch's logits (B, K).
* The method's loss, small-loss selection, mixing and weighting then run on the whole batch, the same on
  every rank, exactly as in one process. `gather_rows`'s backward hands each rank the gradient of its own
  rows (times R), and DDP's gradient mean across ranks turns that into the full batch's gradient.
* GAL's agreement gate therefore reads gradients that DDP has already all-reduced: every rank decides the
  same. Eval passes (`pipeline.train.predict`) shard and gather the same way, so whatever a method derives
  from them once per epoch (DivideMix's GMM, GSS's pools) is computed from the gathered predictions.

What differs from one process: BatchNorm normalises each shard by its own batch statistics (the usual DDP
behaviour; `train.sync_bn` converts to SyncBatchNorm on CUDA, which PyTorch does not offer on CPU), and
float sums are taken in another order. With a normalisation-free or GroupNorm backbone a 2-rank run matches
a 1-rank run to float tolerance (tests/test_distributed.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job.

    Attributes:
        rank: global rank in [0, world).
        world: number of processes (1 = no data parallelism).
        local_rank: rank on this node (selects the CUDA device).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes outputs, checkpoints and progress."""
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's contiguous shard of n rows (shard sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)


def from_env(environ: dict[str, str] | None = None) -> Dist:
    """The `Dist` torchrun describes in WORLD_SIZE, RANK and LOCAL_RANK; one process when they are unset."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ConfigError(f"WORLD_SIZE / RANK / LOCAL_RANK: not integers ({e})") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return Dist(rank, world, local)


def device_for(dist: Dist, device: torch.device) -> torch.device:
    """On CUDA each rank takes GPU `local_rank`; other devices are unchanged."""
    if dist.active and device.type == "cuda":
        return torch.device("cuda", dist.local_rank)
    return device


def init(dist: Dist, device: torch.device) -> bool:
    """Join the process group (NCCL on CUDA, gloo elsewhere) when the job has more than one rank.

    Returns:
        True when this call joined it (the caller then calls `shutdown`).
    """
    if not dist.active or tdist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend, rank=dist.rank, world_size=dist.world)
    return True


def shutdown() -> None:
    """Leave the process group if this process joined one."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


@contextlib.contextmanager
def process_group(dist: Dist, device: torch.device) -> Iterator[None]:
    """`init` on entry; on exit `shutdown`, when this block joined the group."""
    joined = init(dist, device)
    try:
        yield
    finally:
        if joined:
            shutdown()


class _GatherRows(torch.autograd.Function):
    """All ranks' shards (n_r, ...) -> the whole batch (n, ...) in rank order; backward keeps this rank's
    rows of the (identical on every rank) upstream gradient, times the world size (see module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dist: Dist, n: int) -> torch.Tensor:
        sizes = [Dist(r, dist.world).bounds(n) for r in range(dist.world)]
        longest = max(hi - lo for lo, hi in sizes)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(dist.world)]
        tdist.all_gather(parts, padded.contiguous())
        ctx.lo, ctx.hi, ctx.world = *dist.bounds(n), dist.world
        return torch.cat([p[: hi - lo] for p, (lo, hi) in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[ctx.lo : ctx.hi] * ctx.world, None, None


def gather_rows(x: torch.Tensor, dist: Dist, n: int) -> torch.Tensor:
    """Concatenate every rank's shard of an n-row batch, differentiably; `x` is this rank's (n_r, ...)."""
    return _GatherRows.apply(x, dist, n) if dist.active else x


class ShardedForward:
    """Calls `module` on this rank's shard of a whole batch and returns the whole batch's outputs.

    `module` is the DDP-wrapped (and possibly compiled) network; its outputs are a tensor or a tuple of
    tensors with one row per input row. In a single process this is a plain call.
    """

    def __init__(self, module: Callable, dist: Dist) -> None:
        self.module, self.dist = module, dist

    def __call__(self, x: torch.Tensor):
        if not self.dist.active:
            return self.module(x)
        n = len(x)
        lo, hi = self.dist.bounds(n)
        out = self.module(x[lo:hi])
        if isinstance(out, tuple):
            return tuple(gather_rows(o.float(), self.dist, n) for o in out)
        return gather_rows(out.float(), self.dist, n)


def wrap_ddp(net: nn.Module, dist: Dist, device: torch.device, sync_bn: bool) -> nn.Module:
    """`net` in a DistributedDataParallel wrapper (SyncBatchNorm first when asked and on CUDA)."""
    if sync_bn and device.type == "cuda":
        from timm.layers import convert_sync_batchnorm  # keeps timm's fused BatchNorm + activation layers

        net = convert_sync_batchnorm(net)
    return nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None
    )
