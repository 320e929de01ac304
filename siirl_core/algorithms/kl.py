"""Per-token KL estimators between the current policy and the reference.

All take log-probs of the sampled tokens, ``log_probs`` and ``ref_log_probs``
of shape [B, T], and return a [B, T] estimate of KL(pi || ref) per token
(see http://joschu.net/blog/kl-approx.html for k1/k2/k3).
"""

from __future__ import annotations

import torch

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


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL [B, T] with the estimator named in KL_ESTIMATORS (k1, k2, k3)."""
    return KL_ESTIMATORS.get(estimator)(log_probs, ref_log_probs)
