"""PPO-style policy-gradient losses over per-token log-probs [B, T]."""

from __future__ import annotations

import torch

from .aggregation import aggregate_loss, masked_mean
from .registry import POLICY_LOSSES

# Keeps exp(log-ratio) finite when the policies have drifted far apart.
_LOG_RATIO_CLAMP = 20.0


@POLICY_LOSSES.register("vanilla")
def ppo_clip_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    loss_agg_mode: str = "token-mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss (to minimise) and detached 0-dim metrics.

    Per token: max(-A * r, -A * clip(r, 1 - low, 1 + high)) with r = pi / pi_old,
    i.e. the pessimistic bound; asymmetric bounds allow DAPO's clip-higher.
    Metrics: clipfrac (share of masked tokens where the clipped term is the
    active, strictly larger one), approx_kl (masked mean of old - new log-prob,
    k1 of KL(old || new)), ratio_mean (masked mean of r).
    """
    neg_approx_kl = (log_probs - old_log_probs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # [B, T]
    ratio = torch.exp(neg_approx_kl)
    pg_losses_unclipped = -advantages * ratio
    pg_losses_clipped = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    loss_mat = torch.maximum(pg_losses_unclipped, pg_losses_clipped)  # [B, T]
    loss = aggregate_loss(loss_mat, response_mask, loss_agg_mode)

    with torch.no_grad():
        clipped = (pg_losses_clipped > pg_losses_unclipped).to(loss_mat.dtype)
        metrics = {
            "clipfrac": masked_mean(clipped, response_mask).detach(),
            "approx_kl": masked_mean(-neg_approx_kl, response_mask).detach(),
            "ratio_mean": masked_mean(ratio, response_mask).detach(),
        }
    return loss, metrics
