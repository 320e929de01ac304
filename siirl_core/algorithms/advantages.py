"""Outcome-reward advantage estimators (GRPO family).

Every registered estimator has the signature
``fn(scores [B], group_index [B], response_mask [B, T], **kwargs) -> [B, T]``
so a trainer can look one up by name in ADVANTAGE_ESTIMATORS.
"""

from __future__ import annotations

import torch

from .registry import ADVANTAGE_ESTIMATORS


def _check_inputs(scores: torch.Tensor, group_index: torch.Tensor, response_mask: torch.Tensor) -> None:
    if scores.dim() != 1:
        raise ValueError(f"scores must be [B], got shape {tuple(scores.shape)}")
    if group_index.shape != scores.shape:
        raise ValueError(
            f"group_index shape {tuple(group_index.shape)} != scores shape {tuple(scores.shape)}"
        )
    if response_mask.dim() != 2 or response_mask.shape[0] != scores.shape[0]:
        raise ValueError(
            f"response_mask must be [B, T] with B={scores.shape[0]}, got {tuple(response_mask.shape)}"
        )


def group_mean_std(scores: torch.Tensor, group_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and unbiased std of the sample's group, both [B].

    A group of size 1 gets mean = its own score and std = 1, so its
    advantage is 0 (a lone sample carries no relative signal).
    NB: verl instead uses mean 0 / std 1 there, i.e. advantage = raw score.
    """
    # Compact arbitrary (possibly huge, non-contiguous) ids to 0..G-1 so the
    # scatter buffers are sized by the number of groups, not the max id.
    uniq, inverse = torch.unique(group_index, return_inverse=True)  # [G], [B] in 0..G-1
    num_groups = uniq.numel()
    x = scores
    counts = torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(
        0, inverse, torch.ones_like(x)
    )  # [G]
    sums = torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, inverse, x)  # [G]
    mean = (sums / counts)[inverse]  # [B]
    sq_dev = torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(
        0, inverse, (x - mean) ** 2
    )  # [G]
    # Unbiased (n - 1) denominator, matching torch.std's default as verl uses;
    # clamp avoids 0/0 for singletons, which are overwritten below anyway.
    var = sq_dev / (counts - 1).clamp_min(1)
    n = counts[inverse]  # [B]
    singleton = n < 2
    std = torch.where(singleton, torch.ones_like(x), var.sqrt()[inverse])
    mean = torch.where(singleton, x, mean)
    return mean, std


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(
    scores: torch.Tensor,
    group_index: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO outcome advantages: (score - group mean) / (group std + eps).

    scores [B] float, group_index [B] long (same id = same prompt; ids need not
    be contiguous or sorted), response_mask [B, T]. Returns [B, T]: each
    sequence's scalar advantage broadcast over its tokens, zero where masked.
    norm_by_std=False gives Dr. GRPO (no std division, avoids up-weighting
    near-uniform groups).
    """
    _check_inputs(scores, group_index, response_mask)
    mean, std = group_mean_std(scores, group_index)
    adv = scores - mean  # [B]
    if norm_by_std:
        adv = adv / (std + eps)
    return adv.unsqueeze(-1) * response_mask.to(adv.dtype)  # [B, 1] * [B, T] -> [B, T]


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo_advantages(
    scores: torch.Tensor,
    group_index: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Dr. GRPO: GRPO without the std normalisation (score - group mean)."""
    return grpo_advantages(scores, group_index, response_mask, norm_by_std=False, eps=eps)
