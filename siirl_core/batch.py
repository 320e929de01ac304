"""The typed data an iteration's nodes share on one rank.

`IterationBatch` is the single-agent iteration's bus: each field is written by one kind
of node (see `pipeline.NODES`, which declares what every node reads and writes) and read
by the nodes after it. Shapes: B samples on this rank, P prompt tokens, R response
tokens, V vocabulary. Everything here stays on the rank; only metrics leave it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from siirl_core.rollout.base import RolloutBatch


@dataclass
class PaddedBatch:
    """A rollout in one layout: prompts left-padded, responses right-padded."""

    input_ids: torch.Tensor  # [B, P+R] long
    attention_mask: torch.Tensor  # [B, P+R] long, 1 on real tokens
    response_mask: torch.Tensor  # [B, R] float, 1 on generated tokens
    rollout_log_probs: torch.Tensor  # [B, R] the rollout engine's log-probs, 0 on padding
    group_index: torch.Tensor  # [B] long: which prompt each sample answers
    response_len: int  # R


def pad_rollout(batch: RolloutBatch, pad_id: int) -> PaddedBatch:
    """Left-pad prompts and right-pad responses into one [B, P+R] layout."""
    p_len = max(len(p) for p in batch.prompt_ids)
    r_len = max(1, max(len(r) for r in batch.response_ids))
    rows, masks, resp_mask, rollout_lp = [], [], [], []
    for p, r, lp in zip(batch.prompt_ids, batch.response_ids, batch.response_logprobs):
        rows.append([pad_id] * (p_len - len(p)) + p + r + [pad_id] * (r_len - len(r)))
        masks.append([0] * (p_len - len(p)) + [1] * (len(p) + len(r)) + [0] * (r_len - len(r)))
        resp_mask.append([1] * len(r) + [0] * (r_len - len(r)))
        rollout_lp.append(list(lp) + [0.0] * (r_len - len(lp)))
    return PaddedBatch(torch.tensor(rows), torch.tensor(masks), torch.tensor(resp_mask, dtype=torch.float32),
                       torch.tensor(rollout_lp), torch.tensor(batch.group_index), r_len)


@dataclass
class IterationBatch:
    """One single-agent iteration's data on a rank, filled in node by node."""

    step: int
    problems: list | None = None  # this rank's prompts (data.Problem), one per group
    rollout: RolloutBatch | None = None  # token ids, rollout log-probs, finished flags per sample
    tensors: PaddedBatch | None = None  # the rollout, padded
    rollout_logits: torch.Tensor | None = None  # [B, S, V] with S >= R, with the sampling graph (fused update)
    scores: torch.Tensor | None = None  # [B] reward per sample (format bonus and overlong penalty included)
    baseline_scores: torch.Tensor | None = None  # [B] ReMax: reward of the prompt's greedy response
    old_log_probs: torch.Tensor | None = None  # [B, R]; None: the update's own forward pass gives them
    is_weights: torch.Tensor | None = None  # [B, R] truncated importance weights; None: off
    ref_log_probs: torch.Tensor | None = None  # [B, R] ([B, R, V] for kl_estimator=full); None: no reference
    old_full_log_probs: torch.Tensor | None = None  # [B, R, V] the policy's, for the full KL in the reward
    values: torch.Tensor | None = None  # [B, R] the critic's V(s_t)
    token_rewards: torch.Tensor | None = None  # [B, R] score on the last response token, minus KL if in reward
    advantages: torch.Tensor | None = None  # [B, R]
    returns: torch.Tensor | None = None  # [B, R] the critic's targets
    update_rows: torch.Tensor | None = None  # [B] bool: rows the update computes; None: all


@dataclass(frozen=True)
class Node:
    """A pipeline step: `fn(parts, batch, bag)`, and the batch fields it reads and writes."""

    name: str
    fn: Callable
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


def declared(reads: tuple[str, ...] = (), writes: tuple[str, ...] = ()) -> Callable:
    """Decorator for a user's pipeline node: the batch fields it needs and the ones it sets,
    so that a pipeline that runs it before its inputs exist is refused at start."""
    def mark(fn: Callable) -> Callable:
        fn.reads, fn.writes = tuple(reads), tuple(writes)
        return fn
    return mark


def batch_fields(batch_type: type) -> set[str]:
    return {f.name for f in fields(batch_type)}


def order_error(nodes: list[Node], batch_type: type, given: tuple[str, ...] = ("step",)) -> str | None:
    """Why this order of nodes cannot run (a field read before any node writes it, or a
    field the batch does not have), or None when it can."""
    known, written = batch_fields(batch_type), set(given)
    writers: dict[str, list[str]] = {}
    for node in nodes:
        for name in node.writes:
            writers.setdefault(name, []).append(node.name)
    for node in nodes:
        for name in (*node.reads, *node.writes):
            if name not in known:
                return (f"node {node.name!r} names {name!r}, which is not a field of the batch "
                        f"(fields: {', '.join(sorted(known))})")
        missing = [name for name in node.reads if name not in written]
        if missing:
            later = sorted({w for name in missing for w in writers.get(name, [])})
            hint = f"written by {', '.join(later)}, which comes later" if later else "no node in the pipeline writes it"
            return f"node {node.name!r} reads {', '.join(missing)} before any node writes it ({hint})"
        written.update(node.writes)
    return None
