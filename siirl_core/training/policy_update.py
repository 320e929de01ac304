"""The one update loop of every policy, single-agent or one of several agents: each
mini-batch is one optimizer step over its micro-batches. What a micro-batch's loss is
(which forward pass, which masks, which bonus) is the caller's; how losses are
weighted, gradients accumulated and metrics recorded is decided here, once."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from siirl_core.metrics import MetricBag

# micro (row indices [b]) -> (loss, metrics, the rows the forward pass computed [b] bool or None for all)
MicroLoss = Callable[[torch.Tensor], tuple[torch.Tensor, dict, Optional[torch.Tensor]]]


def run_policy_update(actor, minibatches: Iterable[torch.Tensor], micro_batch_size: int, micro_loss: MicroLoss,
                      response_mask: torch.Tensor, attention_mask: torch.Tensor, bag: MetricBag,
                      prefix: str = "") -> int:
    """Step `actor` once per mini-batch (row indices). A micro-batch's loss is a mean over
    its rows, so it counts with its share of the mini-batch's rows: the accumulated
    gradient is the mini-batch mean whatever the split. Loss metrics are weighted by the
    micro-batch's response tokens; keys are prefixed with `prefix`. Returns the tokens
    the forward passes covered (prompt and response, computed rows only)."""
    tokens, skipped_before = 0, actor.skipped_steps
    for mb in minibatches:
        for micro in mb.split(micro_batch_size):
            loss, metrics, computed = micro_loss(micro)
            actor.accumulate(loss, len(micro) / len(mb))
            weight = float(response_mask[micro].sum())
            tokens += int(attention_mask[micro if computed is None else micro[computed]].sum())
            for k, v in metrics.items():
                bag.add(prefix + k, v, weight=weight)
        bag.add(prefix + "actor/grad_norm", actor.grad_norm())
    bag.add(prefix + "actor/skipped_steps", actor.skipped_steps - skipped_before, reduce="max")
    bag.add(prefix + "actor/lr", actor.current_lr())
    return tokens
