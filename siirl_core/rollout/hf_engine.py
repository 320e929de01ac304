"""transformers sampling (KV cache, left padding, one prefill per prompt) for machines
without vLLM. It samples from the training module itself, so weight sync is a no-op."""
from __future__ import annotations

from typing import Iterable

import torch

from siirl_core.rollout.base import RolloutBatch, SamplingConfig, check_room, strip_eos
from siirl_core.rollout.decode import decode


class HFRollout:
    def __init__(self, module: torch.nn.Module, pad_id: int, eos_id: int, batch_size: int = 256,
                 grouped: bool = True, max_positions: int | None = None):
        self.module = module
        self.grouped = grouped  # GroupedDecoder where the model fits it (rollout.grouped_decode)
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.batch_size = batch_size  # samples per forward pass
        self.max_positions = max_positions  # prompt + response, when given

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seed: int,
                 keep_graph: bool = False) -> RolloutBatch:
        """keep_graph: sample in training mode with autograd on and return the logits that
        predicted each sampled token, [B, S, V] with their graph, as batch.train_logits."""
        if self.max_positions:
            check_room(prompt_ids, sampling.max_new_tokens, self.max_positions)
        gen = torch.Generator().manual_seed(seed)
        per_chunk = max(1, self.batch_size // sampling.n)  # prompts per forward pass
        batch = RolloutBatch([], [], [], [], [])
        kept = []
        was_training = self.module.training
        self.module.train(keep_graph)  # the update's forward runs in training mode
        try:
            for start in range(0, len(prompt_ids), per_chunk):
                chunk = prompt_ids[start:start + per_chunk]
                out = decode(self.module, chunk, sampling, pad_id=self.pad_id, eos_id=self.eos_id, gen=gen,
                             keep_graph=keep_graph, grouped=self.grouped)
                self._append(batch, chunk, out.tokens.tolist(), out.logprobs.tolist(), start, sampling.n)
                kept.append(out.train_logits)
        finally:
            self.module.train(was_training)
        if keep_graph:
            batch.train_logits = _cat_padded(kept)
        return batch

    def _append(self, batch: RolloutBatch, chunk, tokens, logprobs, first_prompt: int, n: int) -> None:
        for row, (r, lp) in enumerate(zip(tokens, logprobs)):
            ids, finished = strip_eos(r, self.eos_id)
            batch.prompt_ids.append(list(chunk[row // n]))
            batch.response_ids.append(ids)
            batch.response_logprobs.append(lp[:len(ids)])
            batch.finished.append(finished)
            batch.group_index.append(first_prompt + row // n)

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        # Same module as the trainer: nothing to copy.
        return None

    def release(self) -> None:
        return None  # the trainer's own module: nothing of its own to free


def _cat_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Chunks may stop at different lengths (all rows finished): zero-pad the steps
    (those positions are past every response's end and masked out)."""
    steps = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0, 0, steps - p.shape[1])) for p in parts], 0)
