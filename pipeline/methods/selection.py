"""Small-loss selection shared by JoCoR and Co-teaching (plain functions, no state)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from pipeline.errors import ConfigError
from pipeline.schemas import Column


def forget_rate_at(epoch: int, forget_rate: float, num_gradual: int, exponent: float) -> float:
    """R(t) = τ · min((t / T_k)^c, 1) with t the 0-based epoch: 0 at the start, τ from epoch T_k on."""
    if num_gradual <= 0:
        return forget_rate
    return forget_rate * min((epoch / num_gradual) ** exponent, 1.0)


def small_loss_indices(loss: torch.Tensor, forget: float) -> torch.Tensor:
    """Positions of the ⌊(1 - forget)·B⌋ smallest losses (at least one), ties broken by position.

    Args:
        loss: (B,) per-sample losses.
        forget: fraction of the batch to leave out, in [0, 1).

    Returns:
        (M,) int64 positions into `loss`.
    """
    keep = max(int((1.0 - forget) * loss.numel()), 1)
    return torch.argsort(loss.detach(), stable=True)[:keep]


def resolve_forget_rate(value: float | Literal["auto"], estimated: float | None, key: str) -> float:
    """A number stays; `auto` becomes the estimated noise rate (never the injected truth)."""
    if value != "auto":
        return float(value)
    if estimated is None:
        raise ConfigError(
            f"{key}: 'auto' needs the estimated noise rate; set noise.estimate: true or give a number"
        )
    return min(max(float(estimated), 0.0), 0.95)


class KeptTracker:
    """How often each training sample was selected: one (N,) bool mask per epoch, summed over epochs."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.counts = torch.zeros(n, device=device)
        self.epochs = 0
        self.device = device

    def new_epoch(self) -> torch.Tensor:
        """A fresh (N,) False mask for the methods to set kept samples in."""
        return torch.zeros(len(self.counts), dtype=torch.bool, device=self.device)

    def end_epoch(self, kept: torch.Tensor) -> None:
        self.counts += kept
        self.epochs += 1

    def fraction(self) -> np.ndarray:
        """(N,) float32 share of the epochs each sample was kept in."""
        return (self.counts / max(self.epochs, 1)).cpu().numpy().astype(np.float32)

    def state_dict(self) -> dict:
        return {"counts": self.counts, "epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.counts = state["counts"].to(self.device)
        self.epochs = int(state["epochs"])


KEPT_COLUMNS = (
    Column(
        "kept_fraction",
        pa.float32(),
        min_value=0.0,
        max_value=1.0,
        direction="higher = selected as small-loss more often (more likely clean)",
        description="JoCoR, Co-teaching: share of epochs the sample was selected.",
    ),
)
"""Score columns of the small-loss selection methods (JoCoR, Co-teaching)."""
