"""Pure tensor math for RL post-training: advantages, KL, losses, entropy.

Importing this package imports every module so all estimators, losses and
aggregation modes are registered before anyone looks them up by name.
"""

from .registry import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    Registry,
)
from .advantages import dr_grpo_advantages, group_mean_std, grpo_advantages
from .aggregation import aggregate_loss, masked_mean, masked_sum
from .entropy import entropy_from_logits, logprobs_from_logits
from .kl import kl_k1, kl_k2, kl_k3, kl_penalty
from .policy_loss import ppo_clip_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "POLICY_LOSSES",
    "Registry",
    "aggregate_loss",
    "dr_grpo_advantages",
    "entropy_from_logits",
    "group_mean_std",
    "grpo_advantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "ppo_clip_loss",
]
