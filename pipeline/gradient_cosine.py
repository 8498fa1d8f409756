"""Gradient similarity of the last linear layer, in closed form, and the `grad_similarity` scoring pass.

For cross-entropy on logits z = W h + b, the gradient of sample i with respect to (W, b) is
g_i = δ_i ⊗ [h_i, 1] with δ_i = p_i − e_{ỹ_i}. So <g_i, g_j> = (δ_i·δ_j)(h_i·h_j + 1) and a whole
minibatch's B×B cosine matrix costs two small matrix products, O(B²(K + D)), with no per-sample autograd.
`last_layer_cosine` computes it; `topk_mean` and `similarity_weights` turn it into the per-sample scores
of the gradient-similarity paper; `grad_similarity_scores` is the pass that fills the `grad_similarity`
column of every method's score table. The `gradsim` method trains with these cosines; `grad_similarity`
is a score that every method gets, not a method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pipeline.data.tensors import ImageData
from pipeline.models import FeaturesAndLogits, features_and_logits  # noqa: F401 (re-exported)
from pipeline.train import TrainContext


def _check(features: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor) -> None:
    if features.ndim != 2 or probs.ndim != 2 or labels.ndim != 1:
        raise ValueError(
            f"expected features (B, D), probs (B, K), labels (B,); got {tuple(features.shape)}, "
            f"{tuple(probs.shape)}, {tuple(labels.shape)}"
        )
    if not len(features) == len(probs) == len(labels):
        raise ValueError(f"batch sizes differ: {len(features)}, {len(probs)}, {len(labels)}")
    # the value check reads the labels on the host: done for CPU tensors only (no device sync per step)
    if labels.device.type == "cpu" and len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {probs.shape[1] - 1}]")


def last_layer_cosine(
    features: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor, *, bias: bool = True
) -> torch.Tensor:
    """Cosine similarity of the per-example cross-entropy gradients of the last linear layer.

    Args:
        features: (B, D) penultimate features h (the classifier's input).
        probs: (B, K) softmax probabilities p of the classifier's output.
        labels: (B,) labels the loss uses.
        bias: the classifier has a bias (adds the constant 1 to h·h').

    Returns:
        (B, B) float32 cosine matrix in [-1, 1]; a zero gradient (p exactly one-hot on the label) has
        cosine 0 with everything.
    """
    _check(features, probs, labels)
    h = features.detach().float()
    delta = probs.detach().float().clone()
    delta[torch.arange(len(labels), device=delta.device), labels] -= 1.0
    gram = (delta @ delta.T) * (h @ h.T + (1.0 if bias else 0.0))  # (B, B) <g_i, g_j>
    norm = gram.diagonal().clamp_min(1e-30).sqrt()
    return (gram / (norm[:, None] * norm[None, :])).clamp(-1.0, 1.0)


def _check_square(cos: torch.Tensor) -> None:
    if cos.ndim != 2 or cos.shape[0] != cos.shape[1] or cos.shape[0] < 2:
        raise ValueError(f"cos must be a square matrix with at least 2 rows, got {tuple(cos.shape)}")


def _partner_scores(cos: torch.Tensor, k: int | None, labels: torch.Tensor | None) -> torch.Tensor:
    """(B, k') top-k' partner cosines per row (j ≠ i, same label when `labels`), −inf where none."""
    b = cos.shape[0]
    mask = torch.eye(b, dtype=torch.bool, device=cos.device)
    if labels is not None:
        mask |= labels[:, None] != labels[None, :]
    masked = cos.masked_fill(mask, -math.inf)
    kk = b - 1 if k is None else min(k, b - 1)
    return masked.topk(kk, dim=1).values


def topk_mean(cos: torch.Tensor, k: int | None, *, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Each sample's mean cosine with its top-k most similar partners in the batch.

    Args:
        cos: (B, B) cosine matrix, B ≥ 2.
        k: partners (capped at B − 1); None = all.
        labels: (B,) when given, partners must share the label (within-class); a sample with no partner
            gets NaN.

    Returns:
        (B,) float32.
    """
    _check_square(cos)
    top = _partner_scores(cos, k, labels)
    finite = torch.isfinite(top)
    count = finite.sum(1)
    total = top.where(finite, torch.zeros_like(top)).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


def similarity_weights(
    cos: torch.Tensor, *, k: int | None, a: float, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """The paper's per-sample weights: w_i ∝ Σ over the top-k j ≠ i of exp(a · cos_ij), summing to 1.

    Within-class (`labels` given), a sample's sum runs over its same-label partners only and is taken as
    a mean (so a class with fewer than k members in the batch is not penalised); a sample with no
    same-label partner gets the batch's mean weight.

    Args:
        cos: (B, B) cosine matrix, B ≥ 2.
        k: partners (capped at B − 1); None = all.
        a: annealing constant (> 0): larger a up-weights strongly agreeing pairs.
        labels: (B,) for the within-class variant.

    Returns:
        (B,) float32 weights, non-negative, summing to 1 (1/B each = an average sample).
    """
    if a <= 0:
        raise ValueError(f"a must be > 0, got {a}")
    _check_square(cos)
    top = _partner_scores(cos, k, labels)
    finite = torch.isfinite(top)
    count = finite.sum(1)
    s = (a * top).exp().where(finite, torch.zeros_like(top)).sum(1) / count.clamp_min(1)
    if labels is not None:  # lone samples take the mean of the others (1 when all are lone); no host sync
        has = (count > 0).float()
        mean = (s * has).sum() / has.sum().clamp_min(1)
        s = torch.where(count > 0, s, torch.where(has.sum() > 0, mean, torch.ones_like(mean)))
    return s / s.sum()


@torch.no_grad()
def grad_similarity_scores(
    nets: Sequence[nn.Module], data: ImageData, ctx: TrainContext, *, k: int | None, seed: int
) -> torch.Tensor:
    """The `grad_similarity` score of every sample: its mean top-k last-layer gradient cosine against the
    other samples of a random minibatch of the training batch size, averaged over `nets`.

    One eval-mode pass (no augmentation) gives each network's features and probabilities for the given
    labels; one seeded shuffle splits the samples into minibatches of `ctx.cfg.batch_size` (a remainder
    smaller than k + 1 joins the previous batch), and the cosines are taken within each minibatch.

    Args:
        nets: the networks whose predictions the method reports.
        data: images (N, C, H, W) uint8 and given labels (N,).
        ctx: training context (normaliser, batch sizes, autocast).
        k: partners per sample; None = the whole minibatch.
        seed: seed of the shuffle.

    Returns:
        (N,) float32 on the data's device, in [-1, 1] (NaN only when N < 2).
    """
    n = len(data)
    device = data.images.device
    if n < 2:
        return torch.full((n,), math.nan, device=device)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    bounds = list(range(0, n, ctx.cfg.batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < (k or 1) + 1:
        bounds.pop(-2)  # a tiny remainder joins the previous batch
    total = torch.zeros(n, device=device)
    for net in nets:
        was = net.training
        net.eval()
        feats, probs = [], []
        for i in range(0, n, ctx.cfg.eval_batch_size):
            with ctx.amp:
                h, logits = features_and_logits(
                    net, ctx.normalize(data.images[i : i + ctx.cfg.eval_batch_size])
                )
            feats.append(h.float())
            probs.append(logits.float().softmax(-1))
        net.train(was)
        h, p = torch.cat(feats), torch.cat(probs)
        bias = net.get_classifier().bias is not None
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            idx = perm[lo:hi]
            total[idx] += topk_mean(last_layer_cosine(h[idx], p[idx], data.labels[idx], bias=bias), k)
    return total / len(nets)
