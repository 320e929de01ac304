"""How a mini-batch's rows are split into micro-batches for the forward and backward
passes: a fixed number of rows (trainer.micro_batch_size), or a token budget
(trainer.max_tokens_per_micro_batch) over rows grouped by length, so that short samples
share a micro-batch and long ones get fewer companions. Every rank runs the same number
of micro-batches (ZeRO reduces gradients and gathers parameters in every pass), and each
micro-batch's loss counts with its exact share of the mini-batch's loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from siirl_core.distributed import all_gather


@dataclass(frozen=True)
class MicroBatch:
    rows: torch.Tensor  # [b] long: row indices into the batch
    filler: bool = False  # only there so that every rank runs as many passes: its loss counts 0


@dataclass(frozen=True)
class MicroBatching:
    rows: int  # trainer.micro_batch_size: rows per micro-batch without a token budget
    max_tokens: int = 0  # trainer.max_tokens_per_micro_batch; 0: fixed rows
    # trainer.padding_free: each micro-batch runs as one packed sequence, and the budget
    # counts its real tokens instead of rows x the longest row
    packed: bool = False

    def split(self, rows: torch.Tensor, lengths: torch.Tensor) -> list[MicroBatch]:
        """Micro-batches of `rows` (indices), each row `lengths[row]` tokens long, as many on
        every rank (a collective when ranks could differ: every rank must call it alike)."""
        if not self.max_tokens:
            return [MicroBatch(m) for m in rows.split(self.rows)]
        plan = by_token_budget(rows, lengths, self.max_tokens, padded=not self.packed)
        return even_out(plan, max(all_gather(len(plan))))


def micro_batching(cfg) -> MicroBatching:
    """The configured split (trainer.micro_batch_size, trainer.max_tokens_per_micro_batch)."""
    t = cfg.trainer
    return MicroBatching(t.micro_batch_size, t.max_tokens_per_micro_batch, t.padding_free)


def by_token_budget(rows: torch.Tensor, lengths: torch.Tensor, budget: int, padded: bool = True) -> list[torch.Tensor]:
    """Rows longest first, cut into runs whose size fits `budget`: rows x the run's longest
    row when padded, the sum of their lengths when packed. A row longer than the budget
    runs alone."""
    order = rows[torch.argsort(lengths[rows], descending=True, stable=True)]
    plan, current, size = [], [], 0
    for row in order.tolist():
        n = int(lengths[row])
        grown = (len(current) + 1) * int(lengths[current[0]]) if padded and current else size + n
        if current and grown > budget:
            plan.append(torch.tensor(current))
            current, grown = [], n
        current.append(row)
        size = grown
    if current:
        plan.append(torch.tensor(current))
    return plan


def even_out(plan: list[torch.Tensor], count: int) -> list[MicroBatch]:
    """`count` micro-batches from `plan`: the largest ones halved while there are too few,
    then fillers (one row, loss weight 0) when every one is down to a single row."""
    plan = list(plan)
    while len(plan) < count and max(len(m) for m in plan) > 1:
        i = max(range(len(plan)), key=lambda j: len(plan[j]))
        half = (len(plan[i]) + 1) // 2
        plan[i:i + 1] = [plan[i][:half], plan[i][half:]]
    out = [MicroBatch(m) for m in plan]
    out += [MicroBatch(plan[-1][:1], filler=True) for _ in range(count - len(plan))]
    return out


def loss_shares(mode: str, response_mask: torch.Tensor, micros: list[MicroBatch]) -> list[float]:
    """Each micro-batch's weight in its mini-batch's loss under `mode`, when its own loss
    is its mean under that mode: its tokens over all ranks' mini-batch tokens (token-mean),
    or its non-empty rows over all ranks' (the sequence means), times the world size
    (DeepSpeed averages the ranks' gradients). The sum is then exactly the loss over the
    whole mini-batch of every rank, however it was split. A collective."""
    if mode == "token-mean":
        counts = [0.0 if m.filler else float(response_mask[m.rows].sum()) for m in micros]
    else:
        counts = [0.0 if m.filler else float((response_mask[m.rows] != 0).any(-1).sum()) for m in micros]
    ranks = all_gather(sum(counts))
    total = sum(ranks)
    if total == 0:  # nothing to learn from anywhere: any finite weights give a zero gradient
        return [0.0 for _ in micros]
    return [c * len(ranks) / total for c in counts]
