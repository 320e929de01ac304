"""The critic's loss."""
from __future__ import annotations

import torch

from .aggregation import aggregate_loss, masked_mean


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       response_mask: torch.Tensor, *, clip_range: float,
                       loss_agg_mode: str = "token-mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss, all [B, T]: 0.5 * max((V - R)^2, (V_clip - R)^2) with
    V_clip = V_old + clip(V - V_old, -clip_range, clip_range), so one update cannot move
    a value estimate far from the one the advantages were computed with."""
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    unclipped_sq, clipped_sq = (values - returns).square(), (clipped - returns).square()
    loss = aggregate_loss(0.5 * torch.maximum(unclipped_sq, clipped_sq), response_mask, loss_agg_mode)
    with torch.no_grad():
        metrics = {"vf_clipfrac": masked_mean((clipped_sq > unclipped_sq).to(values.dtype), response_mask),
                   "vpred_mean": masked_mean(values, response_mask)}
    return loss, metrics
