"""Per-token log-probs of responses under a causal LM, in micro-batches."""
from __future__ import annotations

import torch

from siirl_core.algorithms.entropy import logprobs_from_logits


def module_device(module) -> torch.device:
    """Where a module's weights live (a DeepSpeed engine or a plain module)."""
    return next(module.parameters()).device


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left-padded prompts: positions must count real tokens only, as generation does;
    # default positions would make the log-probs differ from the sampled policy.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                    temperature: float = 1.0) -> torch.Tensor:
    """input_ids [B, P+R] = left-padded prompt then right-padded response -> the logits
    that predict each response token, [B, R, V], temperature applied, on the module's
    device (batches are built on the CPU and move to the GPU here)."""
    device = module_device(module)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    out = module(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    # Logit at column t predicts token t+1: the response's predictions start one before it.
    logits = out.logits[:, -response_len - 1:-1].float()  # [B, R, V]
    return logits / temperature if temperature != 1.0 else logits


def forward_response_logprobs(module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              response_len: int, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of the response tokens [B, R]."""
    logits = response_logits(module, input_ids, attention_mask, response_len, temperature)
    return logprobs_from_logits(logits, input_ids[:, -response_len:].to(logits.device))


@torch.no_grad()
def compute_full_logprobs(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                          micro_batch_size: int, temperature: float = 1.0) -> torch.Tensor:
    """Whole-vocabulary log-probs at every response position, [B, R, V]: what the exact
    ("full") KL needs. Memory grows with the vocabulary size; fine for small vocabularies."""
    parts = [torch.log_softmax(response_logits(module, input_ids[s:s + micro_batch_size],
                                               attention_mask[s:s + micro_batch_size], response_len, temperature), -1)
             for s in range(0, input_ids.shape[0], micro_batch_size)]
    return torch.cat(parts, dim=0).cpu()


@torch.no_grad()
def compute_logprobs(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                     micro_batch_size: int, temperature: float = 1.0) -> torch.Tensor:
    """No-grad log-probs over a whole batch, micro-batch by micro-batch: [B, R]."""
    parts = []
    for start in range(0, input_ids.shape[0], micro_batch_size):
        sl = slice(start, start + micro_batch_size)
        lp = forward_response_logprobs(module, input_ids[sl], attention_mask[sl], response_len, temperature)
        parts.append(lp)
    return torch.cat(parts, dim=0).cpu()
