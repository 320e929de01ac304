"""Per-token log-probs of responses under a causal LM, in micro-batches."""
from __future__ import annotations

import torch

from siirl_core.algorithms.entropy import entropy_from_logits, logprobs_from_logits


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left-padded prompts: positions must count real tokens only, as generation does;
    # default positions would make the log-probs differ from the sampled policy.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_response_logprobs(module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              response_len: int, temperature: float = 1.0, with_entropy: bool = False):
    """input_ids [B, P+R] = left-padded prompt then right-padded response.
    Returns log-probs [B, R] (and entropy [B, R] when asked)."""
    out = module(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    # Logit at column t predicts token t+1: the response's predictions start one before it.
    logits = out.logits[:, -response_len - 1:-1].float()  # [B, R, V]
    if temperature != 1.0:
        logits = logits / temperature
    log_probs = logprobs_from_logits(logits, input_ids[:, -response_len:])
    entropy = entropy_from_logits(logits) if with_entropy else None
    return log_probs, entropy


@torch.no_grad()
def compute_logprobs(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                     micro_batch_size: int, temperature: float = 1.0) -> torch.Tensor:
    """No-grad log-probs over a whole batch, micro-batch by micro-batch: [B, R]."""
    parts = []
    for start in range(0, input_ids.shape[0], micro_batch_size):
        sl = slice(start, start + micro_batch_size)
        lp, _ = forward_response_logprobs(module, input_ids[sl], attention_mask[sl], response_len, temperature)
        parts.append(lp)
    return torch.cat(parts, dim=0)
