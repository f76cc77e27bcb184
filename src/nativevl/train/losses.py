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

from nativevl.config import IGNORE_INDEX
from nativevl.model.internvl import lm_loss
from nativevl.train.config import LOSS_REDUCTIONS

REDUCTIONS = LOSS_REDUCTIONS


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
    weights[t + 1]); D defaults to the local sum of those weights. (The trainer has the model compute the same
    loss in chunks: `InternVL.forward(labels=…, label_weights=…, loss_chunk=…)`.)"""
    return lm_loss(logits, None, labels, weights, denominator)


# --- MPO: preference (DPO sigmoid) + quality (BCO pair) + generation (SFT) losses, spec §9 ----------------------


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the supervised tokens (logits[t] predicts labels[t + 1]) and their counts:
    per row (B,), or per packed segment (n,) given `cu_seqlens` (n + 1,) of a one-row batch. As TRL's
    `get_batch_logps` with `average_log_prob=False`."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    token = -F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.clamp_min(0).reshape(-1),
                             reduction="none").view(shift_labels.shape) * mask
    if cu_seqlens is None:
        return token.sum(-1), mask.sum(-1)
    # the target at position p belongs to the segment whose span holds p
    targets = torch.arange(1, labels.shape[1], device=labels.device)
    segment = torch.searchsorted(cu_seqlens[1:].to(labels.device, torch.long), targets, right=True)
    n = cu_seqlens.numel() - 1
    sums = torch.zeros(n, dtype=token.dtype, device=token.device).index_add(0, segment, token[0])
    counts = torch.zeros(n, dtype=torch.long, device=token.device).index_add(0, segment, mask[0].long())
    return sums, counts


def dpo_sigmoid_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """(B,) -log σ(β (c - r)) with c, r = log π/π_ref of the chosen and rejected answers (label smoothing 0)."""
    return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))


def bco_pair_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float, delta: torch.Tensor | float
                  ) -> torch.Tensor:
    """(B,) -log σ(β c - δ) - log σ(-(β r - δ)): the chosen answer rewarded above the running reward mean δ,
    the rejected one below it."""
    return -F.logsigmoid(beta * chosen_ratio - delta) - F.logsigmoid(-(beta * rejected_ratio - delta))


class RunningMean:
    """The reward shift δ of the BCO-pair loss: the count-weighted mean of every batch-mean reward so far, over
    all ranks (TRL's `RunningMoments`, whose variance the loss never reads). Its state is checkpointed."""

    def __init__(self) -> None:
        self.mean, self.count = 0.0, 1e-24  # TRL's initial state

    def update(self, rewards: torch.Tensor) -> float:
        """Fold in this step's rewards (a 1-d tensor per rank); returns the new mean."""
        local = torch.stack([rewards.detach().float().mean(), torch.tensor(float(rewards.numel()))]).to(rewards.device)
        if dist.is_available() and dist.is_initialized():
            # every rank contributes its batch mean, as TRL gathers the per-rank scalars
            gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, local)
            means = torch.stack([g[0] for g in gathered])
        else:
            means = local[:1]
        batch_mean, batch_count = float(means.mean()), float(means.numel())
        total = self.count + batch_count
        self.mean += (batch_mean - self.mean) * batch_count / total
        self.count = total
        return self.mean

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.count = float(state["mean"]), float(state["count"])


def mpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, nll: torch.Tensor, running: RunningMean, beta: float = 0.1,
             weights: tuple[float, float, float] = (0.8, 0.2, 1.0)) -> tuple[torch.Tensor, dict[str, float]]:
    """The paper's MPO objective, mean over the pairs: w_p · DPO + w_q · BCO-pair + w_g · NLL(chosen).

    `nll` is the token-mean cross-entropy of the chosen answers (the original's `rpo_alpha` term). δ is updated
    with this batch's rewards before it is used, as TRL does."""
    c, r = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    w_p, w_q, w_g = weights
    losses = torch.zeros_like(c)
    if w_p:
        losses = losses + w_p * dpo_sigmoid_loss(c, r, beta)
    if w_q:
        delta = running.update(torch.cat([beta * c, beta * r]))
        losses = losses + w_q * bco_pair_loss(c, r, beta, delta)
    loss = losses.mean() + w_g * nll
    stats = {"reward_chosen": float(beta * c.detach().mean()), "reward_rejected": float(beta * r.detach().mean()),
             "reward_accuracy": float((c > r).float().mean()), "nll": float(nll.detach())}
    return loss, stats
