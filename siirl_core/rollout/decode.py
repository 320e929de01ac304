"""The sampling loop of the transformers (`hf`) rollout backend.

Each distinct prompt is prefilled once and its KV cache is repeated for its n samples
(a GRPO group shares its prompt), so prompt tokens cost one forward pass per prompt,
not one per sample. With `keep_graph`, autograd records the loop: the temperature-
scaled logits that predicted every sampled token come back with their graph, and an
on-policy update can back-propagate through the rollout's own forward passes instead
of running a second forward pass over the same tokens with the same weights.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
from transformers.cache_utils import DynamicCache

from siirl_core.rollout.base import SamplingConfig
from siirl_core.rollout.grouped_decode import GroupedDecoder, grouped_decode_blocker
from siirl_core.training.logprobs import module_device, position_ids_from_mask


@dataclass
class Decoded:
    tokens: torch.Tensor  # [B, S] sampled tokens (pad after a row's EOS), on the CPU
    logprobs: torch.Tensor  # [B, S] log-probs of the sampled tokens under the raw logits, on the CPU
    train_logits: Optional[torch.Tensor]  # [B, S, V] logits / temperature with autograd, when kept


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (input_ids [P, W], attention_mask [P, W]), padded on the left."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p
    (always at least the most likely one); the others get -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # probability of the more likely tokens
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def allowed_tokens(sampling: SamplingConfig, vocab_size: int, device) -> Optional[torch.Tensor]:
    """[V] bool of sampling.allowed_token_ids, or None when every token is allowed."""
    if not sampling.allowed_token_ids:
        return None
    allowed = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    allowed[list(sampling.allowed_token_ids)] = True
    return allowed


def choose_tokens(raw: torch.Tensor, sampling: SamplingConfig, step: int, eos_id: int,
                  gen: torch.Generator, allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Next tokens [B] from the raw next-token logits [B, V] (no autograd); `allowed`
    ([V] bool) restricts the choice."""
    logits = raw.detach().float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if step < sampling.min_new_tokens:
        logits = logits.clone()
        logits[:, eos_id] = float("-inf")
    if sampling.greedy:
        return logits.argmax(-1)
    logits = top_p_filter(logits / sampling.temperature, sampling.top_p)
    probs = logits.softmax(-1).cpu()  # sampled on the CPU: the same draws on any device
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1).to(raw.device)


class CacheDecoder:
    """The sampling loop's forward passes through the model's own forward and a
    transformers KV cache: any causal LM. The prompt's cache is repeated for its n samples."""

    def __init__(self, module, n: int):
        self.module, self.n = module, n
        self.cache, self.mask = DynamicCache(), None

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.module(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=self.cache,
                          use_cache=True)
        self.cache = out.past_key_values
        if self.n > 1:
            self.cache.batch_repeat_interleave(self.n)  # autograd sums the samples' gradients into the prompt's
        self.mask = mask.repeat_interleave(self.n, 0)
        return out.logits[:, -1].float().repeat_interleave(self.n, 0)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], 1)
        out = self.module(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=positions[:, None],
                          past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1].float()


def decoder_for(module, n: int, grouped: bool = True):
    """The grouped Llama-family decoder where it fits the model, else the generic one."""
    if grouped and grouped_decode_blocker(module) is None:
        return GroupedDecoder(module, n)
    return CacheDecoder(module, n)


def decode(module, prompts: list[list[int]], sampling: SamplingConfig, *, pad_id: int, eos_id: int,
           gen: torch.Generator, keep_graph: bool = False, grouped: bool = True) -> Decoded:
    """Sample sampling.n responses for each prompt; rows come prompt-major
    (prompt i's samples are rows i*n .. i*n+n-1). grouped: use GroupedDecoder where it fits."""
    device = module_device(module)
    ids, mask = (x.to(device) for x in left_pad(prompts, pad_id))
    positions = position_ids_from_mask(mask)
    n = sampling.n
    with nullcontext() if keep_graph else torch.no_grad():
        decoder = decoder_for(module, n, grouped)
        raw = decoder.prefill(ids, mask, positions)  # [B, V]
        allowed = allowed_tokens(sampling, raw.shape[-1], device)
        last_pos = positions[:, -1].repeat_interleave(n, 0)
        finished = torch.zeros(raw.shape[0], dtype=torch.bool, device=device)
        tokens, logprobs, kept = [], [], []
        for step in range(sampling.max_new_tokens):
            nxt = choose_tokens(raw, sampling, step, eos_id, gen, allowed).masked_fill(finished, pad_id)
            tokens.append(nxt)
            logprobs.append(torch.log_softmax(raw.detach(), -1).gather(-1, nxt[:, None]).squeeze(-1))
            if keep_graph:
                kept.append(raw / sampling.temperature if sampling.temperature != 1.0 else raw)
            finished |= nxt == eos_id
            if step + 1 == sampling.max_new_tokens or bool(finished.all()):
                break  # the last token is never fed back: nothing reads its hidden states
            last_pos = last_pos + 1
            raw = decoder.step(nxt, last_pos)
    return Decoded(torch.stack(tokens, 1).cpu(), torch.stack(logprobs, 1).cpu(),
                   torch.stack(kept, 1) if keep_graph else None)
