"""Advantage estimators: GRPO family, RLOO, REINFORCE++, ReMax and GAE.

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


# ---------------------------------------------------------------------------
# Leave-one-out, REINFORCE++, ReMax and GAE estimators.
#
# Extra inputs are keyword-only with fixed names (token_rewards, values,
# baseline_scores, gamma, lam, eps, norm_by_std) so a caller can pass only what
# an estimator's signature asks for. Required extras have no default, so leaving
# one out raises Python's own TypeError naming the missing argument.
# ---------------------------------------------------------------------------


def _check_token_tensor(name: str, x: torch.Tensor, response_mask: torch.Tensor) -> None:
    if x is None:
        raise ValueError(f"{name} is required (a [B, T] tensor), got None")
    if x.shape != response_mask.shape:
        raise ValueError(
            f"{name} must match response_mask shape {tuple(response_mask.shape)}, got {tuple(x.shape)}"
        )


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(x - masked mean) / (masked std + eps) over all positions where mask != 0.

    x [B, T], mask [B, T] (treated as 0/1). Returns [B, T], zero where mask is 0.
    The std uses the unbiased (n - 1) masked variance like verl's masked_whiten;
    the mean is not shifted back. verl raises on n < 2 (needs a host sync); here
    n = 0 gives all zeros and n = 1 gives 0 / (0 + eps) = 0.
    """
    valid = mask != 0  # [B, T] bool
    # torch.where, not multiplication, so inf/NaN sitting in padding cannot leak.
    x_valid = torch.where(valid, x, torch.zeros_like(x))  # [B, T]
    n = valid.sum().to(x.dtype)  # scalar
    mean = x_valid.sum() / n.clamp_min(1)  # scalar
    centered = torch.where(valid, x - mean, torch.zeros_like(x))  # [B, T]
    var = (centered**2).sum() / (n - 1).clamp_min(1)  # scalar
    return centered / (var.sqrt() + eps)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_advantages(
    scores: torch.Tensor,
    group_index: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """RLOO: score minus the mean score of the *other* samples of the same prompt.

    Equals n / (n - 1) * (score - group mean). A group of size 1 has no other
    samples, so its advantage is 0. Returns [B, T], zero where masked.
    """
    _check_inputs(scores, group_index, response_mask)
    uniq, inverse, counts = torch.unique(group_index, return_inverse=True, return_counts=True)  # [G], [B], [G]
    sums = torch.zeros(uniq.numel(), dtype=scores.dtype, device=scores.device).index_add_(
        0, inverse, scores
    )  # [G]
    n = counts[inverse].to(scores.dtype)  # [B]
    # clamp keeps singletons finite; they are set to 0 just below.
    others_mean = (sums[inverse] - scores) / (n - 1).clamp_min(1)  # [B]
    adv = torch.where(n > 1, scores - others_mean, torch.zeros_like(scores))  # [B]
    return adv.unsqueeze(-1) * response_mask.to(adv.dtype)  # [B, 1] * [B, T] -> [B, T]


def discounted_returns(
    token_rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """Per-token discounted returns: G_t = r_t + gamma * G_{next valid token}.

    token_rewards [B, T], response_mask [B, T]. Only positions with mask != 0
    take part: rewards in masked-out positions are ignored, and the running
    return carries across a masked-out gap (e.g. tool/observation tokens)
    without being discounted there. Each row is its own sequence. Returns
    [B, T], zero where masked.
    NB: verl instead resets the running return at every masked-out position;
    the two agree for right-padded responses.
    """
    valid = response_mask != 0  # [B, T]
    running = torch.zeros_like(token_rewards[:, 0])  # [B]
    zero = torch.zeros_like(running)
    out = []
    for t in reversed(range(token_rewards.shape[1])):
        ret_t = token_rewards[:, t] + gamma * running  # [B]
        running = torch.where(valid[:, t], ret_t, running)
        out.append(torch.where(valid[:, t], ret_t, zero))
    return torch.stack(out[::-1], dim=1)  # [B, T]


@ADVANTAGE_ESTIMATORS.register("reinforce_plus_plus")
def reinforce_plus_plus_advantages(
    scores: torch.Tensor,
    group_index: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    token_rewards: torch.Tensor,
    gamma: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """REINFORCE++: per-token discounted returns of token_rewards, whitened over the batch.

    token_rewards [B, T] (e.g. outcome score on the last response token minus a
    per-token KL penalty). scores and group_index are unused (the reward is
    already in token_rewards) but kept for the common signature. Returns
    [B, T], zero where masked.
    """
    _check_inputs(scores, group_index, response_mask)
    _check_token_tensor("token_rewards", token_rewards, response_mask)
    returns = discounted_returns(token_rewards, response_mask, gamma)  # [B, T]
    # Whitening over the whole batch (not per prompt) is what replaces a critic
    # or group baseline in REINFORCE++.
    return masked_whiten(returns, response_mask, eps)


@ADVANTAGE_ESTIMATORS.register("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline_advantages(
    scores: torch.Tensor,
    group_index: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    eps: float = 1e-6,
) -> torch.Tensor:
    """REINFORCE++-baseline: (score - group mean) broadcast over tokens, whitened over the batch.

    As verl's REINFORCE++-baseline, with the per-token KL applied in the loss,
    not here. A singleton group's mean is its own score (see group_mean_std),
    so it gets 0 before whitening; verl uses raw score there.
    Returns [B, T], zero where masked.
    """
    _check_inputs(scores, group_index, response_mask)
    mean, _ = group_mean_std(scores, group_index)  # [B]
    centered = (scores - mean).unsqueeze(-1).expand_as(response_mask).to(scores.dtype)  # [B, T]
    # Whitening is token-weighted: longer responses count more, as in verl.
    return masked_whiten(centered, response_mask, eps)


@ADVANTAGE_ESTIMATORS.register("remax")
def remax_advantages(
    scores: torch.Tensor,
    group_index: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    baseline_scores: torch.Tensor,
) -> torch.Tensor:
    """ReMax: score minus baseline_scores [B] (the greedy rollout's score of the same prompt).

    Returns [B, T]: the per-sequence advantage broadcast over tokens, zero where masked.
    """
    _check_inputs(scores, group_index, response_mask)
    if baseline_scores is None:
        raise ValueError("remax requires baseline_scores (the greedy rollout's score per sample), got None")
    if baseline_scores.shape != scores.shape:
        raise ValueError(
            f"baseline_scores shape {tuple(baseline_scores.shape)} != scores shape {tuple(scores.shape)}"
        )
    adv = scores - baseline_scores  # [B]
    return adv.unsqueeze(-1) * response_mask.to(adv.dtype)  # [B, 1] * [B, T] -> [B, T]


def gae_advantages_returns(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation: (advantages [B, T], returns [B, T]), unwhitened.

    delta_t = r_t + gamma * V_{next} - V_t and A_t = delta_t + gamma * lam * A_{next},
    where "next" is the next position with mask != 0 in the same row, and V
    (and A) beyond a row's last valid token are 0. returns = A + V. Rewards and
    values at masked-out positions are ignored (like verl, which skips
    observation tokens), and both outputs are zero there.
    """
    valid = response_mask != 0  # [B, T]
    next_value = torch.zeros_like(values[:, 0])  # [B]
    next_adv = torch.zeros_like(next_value)  # [B]
    zero = torch.zeros_like(next_value)
    adv_rev = []
    for t in reversed(range(values.shape[1])):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]  # [B]
        adv_t = delta + gamma * lam * next_adv  # [B]
        # torch.where, not mask multiplication, so NaN/inf in padding cannot leak.
        next_adv = torch.where(valid[:, t], adv_t, next_adv)
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        adv_rev.append(torch.where(valid[:, t], adv_t, zero))
    advantages = torch.stack(adv_rev[::-1], dim=1)  # [B, T]
    returns = torch.where(valid, advantages + values, torch.zeros_like(advantages))  # [B, T]
    return advantages, returns


@ADVANTAGE_ESTIMATORS.register("gae")
def gae_advantages(
    scores: torch.Tensor,
    group_index: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """PPO's GAE advantages with a critic, whitened over the batch's masked tokens.

    token_rewards [B, T], values [B, T] critic values. scores and group_index
    are unused but kept for the common signature. The critic's targets
    (returns) come from gae_advantages_returns, which the caller calls itself.
    Returns [B, T], zero where masked.
    """
    _check_inputs(scores, group_index, response_mask)
    _check_token_tensor("token_rewards", token_rewards, response_mask)
    _check_token_tensor("values", values, response_mask)
    advantages, _ = gae_advantages_returns(token_rewards, values, response_mask, gamma, lam)  # [B, T]
    return masked_whiten(advantages, response_mask, eps)
