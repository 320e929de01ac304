"""Policy-gradient losses over per-token log-probs [B, T], plus rollout IS correction.

Every registered loss has the same signature so the trainer can call any of them
by name:

    fn(log_probs, old_log_probs, advantages, response_mask, *,
       clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0,
       loss_agg_mode="token-mean", is_weights=None) -> (loss, metrics)

with all tensors [B, T], ``loss`` a 0-dim tensor to minimise and ``metrics`` a
dict of detached 0-dim tensors. A loss ignores the keywords it has no use for.

``is_weights`` (e.g. from :func:`truncated_is_weights`) multiplies the per-token
loss before aggregation. Rollouts are sampled by an inference engine whose
log-probs differ from the trainer's (kernels, precision, quantisation), so the
samples are slightly off-policy even on the first PPO epoch; reweighting each
token by pi_old / pi_rollout corrects the gradient for that mismatch.
"""

from __future__ import annotations

import math

import torch

from .aggregation import aggregate_loss, masked_mean
from .registry import POLICY_LOSSES

# Keeps exp(log-ratio) finite when the policies have drifted far apart.
_LOG_RATIO_CLAMP = 20.0
# Floor for IS weights before taking logs (GMPO's geometric mean of weights).
_MIN_IS_WEIGHT = 1e-10


def _log_ratio(log_probs: torch.Tensor, old_log_probs: torch.Tensor) -> torch.Tensor:
    """log(pi / pi_old) per token [B, T], clamped so exp() stays finite."""
    return (log_probs - old_log_probs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)


def _check_is_weights(is_weights: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """The IS weights as a constant [B, T] tensor; rejects shapes that would broadcast."""
    if is_weights.shape != log_probs.shape:
        # A [B] or [B, 1] tensor would broadcast silently and weight the wrong axis.
        raise ValueError(
            f"is_weights must have the shape of log_probs {tuple(log_probs.shape)}; got {tuple(is_weights.shape)}"
        )
    # The weights correct the sampling distribution; they are not a function of
    # the policy being optimised, so no gradient may flow into them.
    return is_weights.detach()


def _weighted(loss_mat: torch.Tensor, is_weights: torch.Tensor | None) -> torch.Tensor:
    """loss_mat [B, T] times the IS weights, or unchanged when there are none."""
    if is_weights is None:
        return loss_mat
    return loss_mat * _check_is_weights(is_weights, loss_mat).to(loss_mat.dtype)


def _seq_mean(seq_values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Mean of seq_values [B] over the sequences with at least one masked token."""
    # Empty rows are left out rather than counted as zeros, as in aggregation.py.
    return masked_mean(seq_values, (response_mask != 0).any(dim=-1))


def _loss_metrics(clipfrac: torch.Tensor, log_ratio: torch.Tensor, ratio_mean: torch.Tensor,
                  response_mask: torch.Tensor, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    """The keys every loss reports, detached: clipfrac, approx_kl (masked mean of
    old - new log-prob, k1 of KL(old || new)) and ratio_mean, plus any extra."""
    metrics = {"clipfrac": clipfrac, "approx_kl": masked_mean(-log_ratio, response_mask), "ratio_mean": ratio_mean,
               **extra}
    return {k: v.detach() for k, v in metrics.items()}


@POLICY_LOSSES.register("vanilla")
def ppo_clip_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss with dual clip (to minimise) and detached 0-dim metrics.

    Per token: L = max(-A * r, -A * clip(r, 1 - low, 1 + high)) with r = pi / pi_old,
    i.e. the pessimistic bound; asymmetric bounds allow DAPO's clip-higher.
    Dual clip (Ye et al. 2020): where A < 0 the loss is further capped,
    L = min(L, -A * clip_ratio_c), so one token with a huge ratio cannot
    dominate the batch. clip_ratio_c must be > 1.
    Metrics: clipfrac (share of masked tokens where the clipped term is the
    active, strictly larger one), clipfrac_lower (share where the dual-clip cap
    is active), approx_kl (masked mean of old - new log-prob, k1 of
    KL(old || new)), ratio_mean (masked mean of r).
    """
    if not clip_ratio_c > 1.0:
        # With c <= 1 the cap would bind even for on-policy tokens (r = 1).
        raise ValueError(f"clip_ratio_c must be > 1 for dual-clip PPO; got {clip_ratio_c}")
    neg_approx_kl = _log_ratio(log_probs, old_log_probs)  # [B, T]
    ratio = torch.exp(neg_approx_kl)
    pg_losses_unclipped = -advantages * ratio
    pg_losses_clipped = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    clip_losses = torch.maximum(pg_losses_unclipped, pg_losses_clipped)  # [B, T]
    pg_losses_cap = -advantages * clip_ratio_c
    negative_adv = advantages < 0
    loss_mat = torch.where(negative_adv, torch.minimum(clip_losses, pg_losses_cap), clip_losses)
    loss = aggregate_loss(_weighted(loss_mat, is_weights), response_mask, loss_agg_mode)

    with torch.no_grad():
        clipped = (pg_losses_clipped > pg_losses_unclipped).to(loss_mat.dtype)
        dual_clipped = ((clip_losses > pg_losses_cap) & negative_adv).to(loss_mat.dtype)
        metrics = _loss_metrics(masked_mean(clipped, response_mask), neg_approx_kl, masked_mean(ratio, response_mask),
                                response_mask, clipfrac_lower=masked_mean(dual_clipped, response_mask))
    return loss, metrics


@POLICY_LOSSES.register("gspo")
def gspo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO loss (Zheng et al. 2025): PPO clipping on a sequence-level ratio.

    s_i = exp(mean over sequence i's masked tokens of log(pi / pi_old)), the
    length-normalised sequence likelihood ratio. In the GSPO-token form each
    token uses s_i,t = sg[s_i] * pi_t / sg[pi_t]: its value is s_i but its
    gradient flows through that token's own log-prob, so token-level advantages
    remain usable. Per token: max(-A * s_i,t, -A * clip(s_i,t, 1 - low, 1 + high)),
    aggregated with loss_agg_mode (the paper's objective is "seq-mean-token-mean").
    clip_ratio_c is ignored. Note GSPO's clip ranges are typically far smaller
    than PPO's (e.g. 3e-4 / 4e-4), since s_i is a per-token geometric mean.
    Metrics: clipfrac (share of masked tokens whose clipped term is active),
    approx_kl (token-level masked mean of old - new log-prob), ratio_mean
    (mean of s_i over non-empty sequences).
    """
    log_ratio = log_probs - old_log_probs  # [B, T]
    # Clamp the sequence log-ratio only, in the detached branch, so the clamp
    # never cuts the per-token gradient path.
    seq_log_ratio = masked_mean(log_ratio, response_mask, dim=-1).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # [B]
    log_seq_ratio = log_probs - log_probs.detach() + seq_log_ratio.detach().unsqueeze(-1)  # [B, T]
    ratio = torch.exp(log_seq_ratio)  # [B, T], value s_i on every token of row i
    pg_losses_unclipped = -advantages * ratio
    pg_losses_clipped = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    loss_mat = torch.maximum(pg_losses_unclipped, pg_losses_clipped)  # [B, T]
    loss = aggregate_loss(_weighted(loss_mat, is_weights), response_mask, loss_agg_mode)

    with torch.no_grad():
        clipped = (pg_losses_clipped > pg_losses_unclipped).to(loss_mat.dtype)
        metrics = _loss_metrics(masked_mean(clipped, response_mask), _log_ratio(log_probs, old_log_probs),
                                _seq_mean(torch.exp(seq_log_ratio), response_mask), response_mask)
    return loss, metrics


@POLICY_LOSSES.register("gmpo")
def gmpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GMPO loss (Geometric-Mean Policy Optimization, arXiv 2507.20673).

    Per sequence i with advantage A_i (masked mean of the row's advantages;
    GMPO assumes sequence-level advantages, for which it is the row's value):
        loss_i = -A_i * exp(mean_t clip_pess(log r_t))
    where clip_pess clips log r_t to [log(1 - low), log(1 + high)] on the side
    that makes the bound pessimistic: from above if A_i >= 0, from below if
    A_i < 0 (as PPO's max). The loss is the mean of loss_i over non-empty
    sequences; loss_agg_mode and clip_ratio_c are ignored.
    Bounds are in ratio space like the other losses (so the defaults give
    [0.8, 1.2]); the paper's (e^-0.4, e^0.4) is low = 1 - e^-0.4, high = e^0.4 - 1.
    is_weights enter as their geometric mean over each sequence's tokens,
    matching the geometric mean of ratios (as verl does).
    Metrics: clipfrac (share of masked tokens whose log-ratio was clipped),
    approx_kl (masked mean of old - new log-prob), ratio_mean (mean over
    non-empty sequences of the clipped geometric-mean ratio).
    """
    if not 0.0 <= clip_ratio_low < 1.0:
        raise ValueError(f"clip_ratio_low must be in [0, 1) for GMPO's log-space clip; got {clip_ratio_low}")
    log_ratio = _log_ratio(log_probs, old_log_probs)  # [B, T]
    seq_adv = masked_mean(advantages, response_mask, dim=-1)  # [B]
    log_ratio_clamped = log_ratio.clamp(math.log(1.0 - clip_ratio_low), math.log1p(clip_ratio_high))
    # The clip side follows the sign of the advantage the sequence is scored
    # with, so the clipped objective is a lower bound like PPO's (for
    # sequence-level advantages this is verl's per-token sign rule).
    positive = (seq_adv >= 0).unsqueeze(-1)  # [B, 1]
    log_ratio_pess = torch.where(
        positive, torch.minimum(log_ratio, log_ratio_clamped), torch.maximum(log_ratio, log_ratio_clamped)
    )  # [B, T]
    seq_log_ratio = masked_mean(log_ratio_pess, response_mask, dim=-1)  # [B]
    if is_weights is not None:
        log_w = _check_is_weights(is_weights, log_probs).to(log_ratio.dtype).clamp_min(_MIN_IS_WEIGHT).log()
        seq_log_ratio = seq_log_ratio + masked_mean(log_w, response_mask, dim=-1)
    seq_losses = -seq_adv * torch.exp(seq_log_ratio)  # [B]
    loss = _seq_mean(seq_losses, response_mask)

    with torch.no_grad():
        clipped = (log_ratio_pess != log_ratio).to(log_ratio.dtype)
        metrics = _loss_metrics(masked_mean(clipped, response_mask), log_ratio,
                                _seq_mean(torch.exp(masked_mean(log_ratio_pess, response_mask, dim=-1)), response_mask),
                                response_mask)
    return loss, metrics


@POLICY_LOSSES.register("cispo")
def cispo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO loss (MiniMax-M1, arXiv 2506.13585): REINFORCE weighted by a clipped IS ratio.

    Per token: -sg[min(r, 1 + high)] * A * log pi. Clipping the detached
    weight rather than the surrogate keeps every token's gradient (PPO zeroes
    clipped tokens). The lower bound is 0, i.e. none: the paper sets
    eps_low very large to leave the lower side unclipped, so clip_ratio_low
    (like clip_ratio_c) is ignored. The loss value is only gradient-correct, not
    an estimate of the objective.
    Metrics: clipfrac (share of masked tokens with r > 1 + high), approx_kl
    (masked mean of old - new log-prob), ratio_mean (masked mean of r).
    """
    neg_approx_kl = _log_ratio(log_probs, old_log_probs)  # [B, T]
    ratio = torch.exp(neg_approx_kl)
    weight = ratio.clamp(max=1.0 + clip_ratio_high).detach()
    loss_mat = -weight * advantages * log_probs  # [B, T]
    loss = aggregate_loss(_weighted(loss_mat, is_weights), response_mask, loss_agg_mode)

    with torch.no_grad():
        clipped = (ratio > 1.0 + clip_ratio_high).to(loss_mat.dtype)
        metrics = _loss_metrics(masked_mean(clipped, response_mask), neg_approx_kl, masked_mean(ratio, response_mask),
                                response_mask)
    return loss, metrics


@POLICY_LOSSES.register("gpg")
def gpg_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GPG loss (Group Policy Gradient): plain REINFORCE, -A * log pi per token.

    No ratio and no clipping, so all clip keywords are ignored; old_log_probs
    only feeds the drift metrics. Metrics: clipfrac (always 0, kept so every
    loss reports the same keys), approx_kl, ratio_mean as for "vanilla".
    """
    loss_mat = -advantages * log_probs  # [B, T]
    loss = aggregate_loss(_weighted(loss_mat, is_weights), response_mask, loss_agg_mode)

    with torch.no_grad():
        neg_approx_kl = _log_ratio(log_probs, old_log_probs)
        metrics = _loss_metrics(torch.zeros((), dtype=loss_mat.dtype, device=loss_mat.device), neg_approx_kl,
                                masked_mean(torch.exp(neg_approx_kl), response_mask), response_mask)
    return loss, metrics


def truncated_is_weights(
    old_log_probs: torch.Tensor,
    rollout_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    cap: float = 2.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Truncated IS weights [B, T] (detached) for the rollout-engine / trainer mismatch.

    weights = min(pi_old / pi_rollout, cap) per token, 0 on masked positions;
    pass them as ``is_weights`` to a policy loss. Truncation bounds the variance
    that rare tokens with a tiny rollout probability would otherwise add.
    Metrics: mismatch_kl (masked mean of log pi_rollout - log pi_old, the k1
    estimate of KL(rollout || old) since tokens are sampled from the rollout
    policy), is_weight_mean (masked mean of the truncated weights),
    is_truncated_frac (share of masked tokens whose weight hit the cap).
    """
    if not cap > 0:
        raise ValueError(f"cap must be > 0; got {cap}")
    with torch.no_grad():
        log_w = (old_log_probs - rollout_log_probs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # [B, T]
        raw = torch.exp(log_w)
        valid = response_mask != 0
        # torch.where, not a product: NaN/inf in padding must not survive as weights.
        weights = torch.where(valid, raw.clamp(max=cap), torch.zeros_like(raw)).detach()
        metrics = {
            "mismatch_kl": masked_mean(rollout_log_probs - old_log_probs, response_mask).detach(),
            "is_weight_mean": masked_mean(weights, response_mask).detach(),
            "is_truncated_frac": masked_mean((raw > cap).to(raw.dtype), response_mask).detach(),
        }
    return weights, metrics
