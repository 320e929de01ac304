"""Per-token log-probs of responses under a causal LM, in micro-batches."""
from __future__ import annotations

import torch

from siirl_core.algorithms.entropy import logprobs_from_logits
from siirl_core.training.micro_batches import MicroBatching


def module_device(module) -> torch.device:
    """Where a module's weights live (a DeepSpeed engine or a plain module)."""
    return next(module.parameters()).device


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left-padded prompts: positions must count real tokens only, as generation does;
    # default positions would make the log-probs differ from the sampled policy.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 response_len: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows [b, P+R] in the batch layout without the columns that are padding in every
    row (prompt columns on the left, response columns on the right): (input_ids,
    attention_mask, the rows' longest response r <= R). Positions come from the mask, so
    the real tokens see exactly what they saw."""
    real = attention_mask.bool()
    prompt_cols = real[:, :-response_len].any(0)
    first = int(prompt_cols.nonzero()[0]) if bool(prompt_cols.any()) else input_ids.shape[1] - response_len
    answered = real[:, -response_len:].any(0)
    kept = int(answered.nonzero()[-1]) + 1 if bool(answered.any()) else 1
    end = input_ids.shape[1] - response_len + kept
    return input_ids[:, first:end], attention_mask[:, first:end], kept


def pad_responses(x: torch.Tensor, response_len: int) -> torch.Tensor:
    """[b, r, ...] -> [b, R, ...] with zeros after each row's r positions."""
    missing = response_len - x.shape[1]
    if missing == 0:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], missing, *x.shape[2:])], 1)


def packed_outputs(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int) -> torch.Tensor:
    """The rows' real tokens as one sequence [1, T] with positions restarting at each row
    and no attention mask, from which transformers builds a block-diagonal causal mask
    (FlashAttention-2 runs it as variable-length sequences): no compute on padding. The
    output at the positions that predict each response token, [b, R, ...], 0 on padding."""
    device = module_device(module)
    real = attention_mask.bool()
    positions = position_ids_from_mask(attention_mask)
    out = module(input_ids=input_ids[real][None].to(device), position_ids=positions[real][None].to(device),
                 use_cache=False).logits[0]  # [T, ...]
    packed_index = real.flatten().long().cumsum(0).view(real.shape) - 1  # where each real token went
    answer = real[:, -response_len:]  # [b, R]
    predictor = (packed_index[:, -response_len:] - 1).clamp(min=0).to(device)  # the token before each answer token
    picked = out[predictor]  # [b, R, ...]
    keep = answer.to(device).view(*answer.shape, *([1] * (picked.dim() - 2)))
    return torch.where(keep, picked, torch.zeros_like(picked))


def padded_outputs(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int) -> torch.Tensor:
    """The same from the padded rows, with the columns that are padding in every row left out."""
    device = module_device(module)
    ids, mask, kept = trim_padding(input_ids, attention_mask, response_len)
    ids, mask = ids.to(device), mask.to(device)
    out = module(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
    # The output at column t predicts token t+1: the response's predictions start one before it.
    return pad_responses(out.logits[:, -kept - 1:-1], response_len)


def response_outputs(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                     packed: bool = False) -> torch.Tensor:
    """input_ids [b, P+R] = left-padded prompt then right-padded response -> the model's
    output (logits, or a value head's) at the positions that predict each response
    token, [b, R, ...], on the module's device (batches are built on the CPU and move to
    the GPU here); packed: one sequence without padding (trainer.padding_free)."""
    return (packed_outputs if packed else padded_outputs)(module, input_ids, attention_mask, response_len)


def response_logits(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                    temperature: float = 1.0, packed: bool = False) -> torch.Tensor:
    """The logits that predict each response token, [b, R, V], temperature applied."""
    logits = response_outputs(module, input_ids, attention_mask, response_len, packed).float()
    return logits / temperature if temperature != 1.0 else logits


def forward_response_logprobs(module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              response_len: int, temperature: float = 1.0, packed: bool = False) -> torch.Tensor:
    """Log-probs of the response tokens [B, R]."""
    logits = response_logits(module, input_ids, attention_mask, response_len, temperature, packed)
    return logprobs_from_logits(logits, input_ids[:, -response_len:].to(logits.device))


def in_micro_batches(forward, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     batching: MicroBatching) -> torch.Tensor:
    """forward(input_ids, attention_mask) -> [b, ...] over the rows, micro-batch by
    micro-batch, gathered back in row order on the CPU."""
    out = None
    for micro in batching.split(torch.arange(input_ids.shape[0]), attention_mask.sum(-1)):
        part = forward(input_ids[micro.rows], attention_mask[micro.rows]).cpu()
        if micro.filler:  # run so that every rank makes the same passes (ZeRO-3 gathers in each)
            continue
        if out is None:
            out = part.new_zeros(input_ids.shape[0], *part.shape[1:])
        out[micro.rows] = part
    return out


@torch.no_grad()
def compute_full_logprobs(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                          batching: MicroBatching, temperature: float = 1.0) -> torch.Tensor:
    """Whole-vocabulary log-probs at every response position, [B, R, V]: what the exact
    ("full") KL needs. Memory grows with the vocabulary size; fine for small vocabularies."""
    return in_micro_batches(
        lambda ids, mask: torch.log_softmax(response_logits(module, ids, mask, response_len, temperature,
                                                            batching.packed), -1),
        input_ids, attention_mask, batching)


@torch.no_grad()
def compute_logprobs(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                     batching: MicroBatching, temperature: float = 1.0) -> torch.Tensor:
    """No-grad log-probs over a whole batch, micro-batch by micro-batch: [B, R]."""
    return in_micro_batches(
        lambda ids, mask: forward_response_logprobs(module, ids, mask, response_len, temperature, batching.packed),
        input_ids, attention_mask, batching)
