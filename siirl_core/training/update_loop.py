"""The one update loop of every trained engine (the single-agent policy, each agent's
policy, the critic): each mini-batch is one optimizer step over its micro-batches. What
a micro-batch's loss is (which forward pass, which masks, which bonus) is the caller's;
how the mini-batch is split, how losses are weighted, gradients accumulated and metrics
recorded is decided here, once."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from siirl_core.metrics import MetricBag
from siirl_core.training.micro_batches import MicroBatching, loss_shares

# (rows [b], share) -> (the micro-batch's contribution to the step's loss, metrics,
#                       the rows its forward pass computed [b] bool or None for all)
MicroLoss = Callable[[torch.Tensor, float], tuple[torch.Tensor, dict, Optional[torch.Tensor]]]


def share_mode(algo) -> str:
    """How the policy loss averages (GMPO's is a sequence mean whatever loss_agg_mode says)."""
    return "seq-mean-token-mean" if algo.policy_loss == "gmpo" else algo.loss_agg_mode


def run_update(actor, minibatches: Iterable[torch.Tensor], batching: MicroBatching, micro_loss: MicroLoss,
               response_mask: torch.Tensor, attention_mask: torch.Tensor, agg_mode: str, bag: MetricBag,
               prefix: str = "", step_prefix: str = "actor/") -> int:
    """Step `actor` once per mini-batch (row indices), split by `batching`. Each
    micro-batch's loss counts with its exact share of the mini-batch's loss under
    `agg_mode`, so the gradient is the same however the rows are split. The micro-batches'
    metrics are weighted by their response tokens, keys prefixed with `prefix`; the
    step's grad_norm, skipped_steps, lr and micro_batches (passes per update) go under
    `step_prefix`. Returns the real tokens
    the forward passes covered (prompt and response, computed rows)."""
    tokens, passes, skipped_before = 0, 0, actor.skipped_steps
    lengths = attention_mask.sum(-1)  # [B] tokens per row
    for mb in minibatches:
        micros = batching.split(mb, lengths)
        shares = loss_shares(agg_mode, response_mask, micros)
        passes += len(micros)
        for i, (micro, share) in enumerate(zip(micros, shares)):
            contribution, metrics, computed = micro_loss(micro.rows, share)
            actor.accumulate(contribution, boundary=i == len(micros) - 1)
            if micro.filler:
                continue
            rows = micro.rows if computed is None else micro.rows[computed]
            tokens += int(attention_mask[rows].sum())
            weight = float(response_mask[micro.rows].sum())
            for k, v in metrics.items():
                bag.add(prefix + k, v, weight=weight)
        bag.add(step_prefix + "grad_norm", actor.grad_norm())
    bag.add(step_prefix + "skipped_steps", actor.skipped_steps - skipped_before, reduce="max")
    bag.add(step_prefix + "lr", actor.current_lr())
    bag.add(step_prefix + "micro_batches", passes, reduce="max")
    return tokens
