"""Losses. Token / sample / square averaging of the next-token cross-entropy (spec §5).

A sample with x supervised tokens gives each of them weight 1 (token), 1/x (sample) or 1/sqrt(x) (square,
the paper's choice: a sample's total weight grows like sqrt(x), between the other two). The loss is
sum(ce * w) / D with D = sum(w) over the micro-batch, or over all ranks: D is all-reduced (averaged) so that,
once data-parallel gradients are averaged, the objective is the global weighted mean.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nativevl.model.internvl import IGNORE_INDEX

REDUCTIONS = ("token", "sample", "square")


def sample_weight(supervised: int, reduction: str) -> float:
    """Weight of each supervised token of a sample with `supervised` such tokens."""
    if supervised == 0:
        return 0.0
    if reduction == "token":
        return 1.0
    if reduction == "sample":
        return 1.0 / supervised
    if reduction == "square":
        return supervised**-0.5
    raise ValueError(f"loss reduction must be one of {REDUCTIONS}, got {reduction!r}")


def token_weights(labels: torch.Tensor, cu_seqlens: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """(B, L) float weights for packed or single samples: each sample's weight on its supervised tokens, 0 elsewhere.

    `cu_seqlens` (n + 1,) marks the samples of a packed row (batch of 1); without it every row is one sample.
    """
    supervised = labels != IGNORE_INDEX
    weights = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    if cu_seqlens is None:
        for row in range(labels.shape[0]):
            weights[row] = sample_weight(int(supervised[row].sum()), reduction)
    else:
        bounds = cu_seqlens.tolist()
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            weights[:, start:end] = sample_weight(int(supervised[:, start:end].sum()), reduction)
    return weights * supervised


def reduce_denominator(local: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Average the local weight sum over ranks (a no-op without an initialised process group)."""
    if dist.is_available() and dist.is_initialized():
        local = local.detach().clone()
        dist.all_reduce(local, op=dist.ReduceOp.SUM, group=group)
        local /= dist.get_world_size(group)
    return local


def weighted_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """sum_t ce_t * w_t / D over next-token predictions (logits[t] predicts labels[t + 1], weighted by
    weights[t + 1]); D defaults to the local sum of those weights."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    shift_weights = weights[:, 1:].reshape(-1).to(shift_logits.dtype)
    ce = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
    if denominator is None:
        denominator = shift_weights.sum()
    return (ce * shift_weights).sum() / torch.clamp_min(torch.as_tensor(denominator, device=ce.device), 1e-12)
