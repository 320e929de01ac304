"""Per-token KL estimators between the current policy and the reference.

All take log-probs of the sampled tokens, ``log_probs`` and ``ref_log_probs``
of shape [B, T], and return a [B, T] estimate of KL(pi || ref) per token
(see http://joschu.net/blog/kl-approx.html for k1/k2/k3). The exception is
"full", which needs the full next-token distributions [B, T, V] of both
policies and returns the exact per-token KL [B, T].

Also here: the KL penalty folded into token rewards (``kl_in_reward``) and
the fixed / adaptive controllers for its coefficient.
"""

from __future__ import annotations

import torch

from .aggregation import masked_mean
from .registry import KL_ESTIMATORS

# Bounds as in verl: the log-ratio bound keeps exp() finite, the k3 bound caps
# the penalty a single outlier token can contribute.
_LOG_RATIO_CLAMP = 20.0
_K3_CLAMP = 10.0


@KL_ESTIMATORS.register("k1")
def kl_k1(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log ref: unbiased but high variance, can be negative."""
    return log_probs - ref_log_probs


@KL_ESTIMATORS.register("k2")
def kl_k2(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log pi - log ref)^2: biased, low variance, non-negative."""
    return 0.5 * (log_probs - ref_log_probs).square()


@KL_ESTIMATORS.register("k3")
def kl_k3(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(r) - r - 1 with r = log ref - log pi: unbiased, low variance, >= 0."""
    r = (ref_log_probs - log_probs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return (torch.exp(r) - r - 1).clamp(-_K3_CLAMP, _K3_CLAMP)


@KL_ESTIMATORS.register("abs")
def kl_abs(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """|log pi - log ref|: non-negative, penalises drift in either direction."""
    return (log_probs - ref_log_probs).abs()


@KL_ESTIMATORS.register("full")
def kl_full(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Exact KL(pi || ref) per token [B, T] from full-vocabulary log-probs [B, T, V].

    Needs both policies' whole next-token distributions (log-softmax of the
    logits), not just the sampled tokens' log-probs: sum_v p_v (log p_v - log q_v).
    """
    if log_probs.dim() != 3 or log_probs.shape != ref_log_probs.shape:
        # Sampled-token log-probs [B, T] would otherwise be summed over T silently.
        raise ValueError(
            "the 'full' KL needs full-vocabulary log-probs [B, T, V] for both policies; "
            f"got {tuple(log_probs.shape)} and {tuple(ref_log_probs.shape)}"
        )
    p = torch.exp(log_probs)  # [B, T, V]
    # Tokens with p_v = 0 contribute 0 (0 * log 0 = 0); zeroing both log terms
    # there keeps -inf out of the product, and out of its gradient.
    support = p > 0
    zeros = torch.zeros_like(log_probs)
    diff = torch.where(support, log_probs, zeros) - torch.where(support, ref_log_probs, zeros)
    return (p * diff).sum(dim=-1)  # [B, T]


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL [B, T] with the estimator named in KL_ESTIMATORS (abs, full, k1, k2, k3)."""
    return KL_ESTIMATORS.get(estimator)(log_probs, ref_log_probs)


def kl_in_reward(
    token_rewards: torch.Tensor,
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    coef: float,
    estimator: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rewards minus coef * per-token KL on masked tokens, and the masked mean KL.

    token_rewards, log_probs, ref_log_probs, response_mask: [B, T] (for the
    "full" estimator the log-probs are [B, T, V]). Returns the new rewards
    [B, T] (unchanged on masked-out positions) and the masked mean KL over all
    masked tokens (0-dim), e.g. to feed a KL controller. Both are detached:
    rewards are constants to the policy gradient.
    """
    with torch.no_grad():
        kl = kl_penalty(log_probs, ref_log_probs, estimator)  # [B, T]
        valid = response_mask != 0
        # torch.where, not a product: a NaN/inf KL on padding must not leak into rewards.
        kl = torch.where(valid, kl, torch.zeros_like(kl))
        new_rewards = token_rewards - coef * kl.to(token_rewards.dtype)
        kl_mean = masked_mean(kl, response_mask)
    return new_rewards.detach(), kl_mean.detach()


class FixedKLController:
    """KL coefficient that never changes; same interface as AdaptiveKLController."""

    def __init__(self, coef: float) -> None:
        self.value = coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: a fixed coefficient ignores the observed KL."""


class AdaptiveKLController:
    """KL coefficient steered towards a target KL (Ziegler et al. 2019, as in verl).

    After each update: value *= 1 + clip(current_kl / target_kl - 1, -0.2, 0.2)
    * n_steps / horizon, so the coefficient grows when KL is above target and
    shrinks when below, by at most 20% per `horizon` steps.
    """

    def __init__(self, init_coef: float, target_kl: float, horizon: float) -> None:
        if not target_kl > 0:
            raise ValueError(f"target_kl must be > 0; got {target_kl}")
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0; got {horizon}")
        self.value = init_coef
        self.target_kl = target_kl
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move the coefficient given the KL observed over the last n_steps samples."""
        # The clip keeps one noisy KL reading from swinging the coefficient.
        proportional_error = min(max(current_kl / self.target_kl - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
