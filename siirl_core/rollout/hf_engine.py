"""transformers generation (KV cache, left padding) for machines without vLLM.
It samples from the training module itself, so weight sync is a no-op."""
from __future__ import annotations

from typing import Iterable

import torch

from siirl_core.algorithms.entropy import logprobs_from_logits
from siirl_core.rollout.base import RolloutBatch, SamplingConfig, strip_eos
from siirl_core.training.logprobs import module_device


class HFRollout:
    def __init__(self, module: torch.nn.Module, pad_id: int, eos_id: int, batch_size: int = 256):
        self.module = module
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.batch_size = batch_size

    @torch.no_grad()
    def _generate_chunk(self, prompts: list[list[int]], sampling: SamplingConfig, gen: torch.Generator):
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts])  # [B, P]
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
        device = module_device(self.module)
        ids, mask = ids.to(device), mask.to(device)
        # Seed the global RNG from our generator: HF sampling uses torch's default generator.
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        was_training = self.module.training
        self.module.eval()
        out = self.module.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=sampling.min_new_tokens or None,
            do_sample=not sampling.greedy, temperature=sampling.temperature if not sampling.greedy else None,
            top_p=sampling.top_p if not sampling.greedy else None, top_k=0 if not sampling.greedy else None,
            num_return_sequences=1, pad_token_id=self.pad_id, eos_token_id=self.eos_id,
            output_logits=True, return_dict_in_generate=True)
        self.module.train(was_training)
        resp = out.sequences[:, width:]  # [B, R]
        logits = torch.stack(out.logits, dim=1).float()  # [B, R, V]
        lps = logprobs_from_logits(logits, resp)  # raw logits, as vLLM reports
        return resp.tolist(), lps.tolist()

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seed: int) -> RolloutBatch:
        gen = torch.Generator().manual_seed(seed)
        expanded = [p for p in prompt_ids for _ in range(sampling.n)]  # prompt-major
        batch = RolloutBatch([], [], [], [], [])
        for start in range(0, len(expanded), self.batch_size):
            chunk = expanded[start:start + self.batch_size]
            resp, lps = self._generate_chunk(chunk, sampling, gen)
            for j, (r, lp) in enumerate(zip(resp, lps)):
                ids, finished = strip_eos(r, self.eos_id)
                batch.prompt_ids.append(list(chunk[j]))
                batch.response_ids.append(ids)
                batch.response_logprobs.append(lp[:len(ids)])
                batch.finished.append(finished)
                batch.group_index.append((start + j) // sampling.n)
        return batch

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        # Same module as the trainer: nothing to copy.
        return None
