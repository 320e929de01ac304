"""The rollout engine protocol: prompts in, n sampled responses per prompt out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Protocol

import torch


@dataclass
class SamplingConfig:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8
    greedy: bool = False
    # EOS is suppressed before this many tokens (fixed-length generation for timing).
    min_new_tokens: int = 0
    # Only these tokens may be sampled (an agent's action vocabulary); None: any. Log-probs
    # stay those of the unrestricted logits, as for temperature.
    allowed_token_ids: Optional[tuple[int, ...]] = None


@dataclass
class RolloutBatch:
    """Samples in prompt-major order: the n samples of prompt i are rows i*n..i*n+n-1."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    # Log-probs of the sampled tokens under the rollout engine (raw, temperature 1 logits).
    response_logprobs: list[list[float]]
    finished: list[bool]  # the response ended with EOS
    group_index: list[int] = field(default_factory=list)
    # [B, S, V] logits / temperature that predicted each sampled token, with their autograd
    # graph: only from the hf backend when asked (trainer.fused_update).
    train_logits: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.response_ids)


class RolloutEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seed: int) -> RolloutBatch:
        """Sample sampling.n responses for each prompt; deterministic for a given seed and weights."""

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new policy weights in place, without restarting the engine."""

    def release(self) -> None:
        """Free what the engine holds on the device while the trainer runs (or nothing);
        the next generate or sync_weights takes it back."""


def strip_eos(ids: list[int], eos_id: int) -> tuple[list[int], bool]:
    """Response tokens up to and including the first EOS, and whether EOS was produced."""
    if eos_id in ids:
        cut = ids.index(eos_id)
        return ids[:cut + 1], True
    return ids, False


class ContextTooShort(ValueError):
    """A prompt and its answer do not fit the planned positions (not worth a retry)."""


def check_room(prompt_ids: list[list[int]], max_new_tokens: int, positions: int) -> None:
    """Every prompt leaves max_new_tokens positions: vLLM would otherwise end the answer
    early at the context's end without saying so."""
    for i, p in enumerate(prompt_ids):
        if len(p) + max_new_tokens > positions:
            raise ContextTooShort(f"prompt {i} has {len(p)} tokens: with rollout.max_new_tokens={max_new_tokens} it "
                             f"needs {len(p) + max_new_tokens} positions, more than the {positions} planned "
                             "(rollout.max_model_len, at most the model's context); shorten the prompts "
                             "(task.max_prompt_length for data files) or raise rollout.max_model_len")
