"""Procedural tasks: problems generated from a seeded RNG, verified by a rule.

Training prompts are a deterministic function of (seed, step[, stream]): every rank
builds the same global batch and takes its own slice, and a resumed run sees the
prompts an uninterrupted one would. The held-out set is the problems whose stable
hash falls in a reserved bucket; training never samples them.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EVAL_BUCKETS = 10  # one problem in ten is reserved for evaluation


@dataclass(frozen=True)
class Problem:
    prompt: str
    # A reference answer: the target of exact match, and the warm start's demonstration.
    answer: str
    # What the reward function receives as ground_truth (the answer when None).
    ground_truth: Any = None
    data_source: str = ""
    extra_info: dict = field(default_factory=dict)
    # Where the problem comes from (file:row for data files), for error messages.
    uid: str = ""

    @property
    def truth(self):
        return self.answer if self.ground_truth is None else self.ground_truth


def is_heldout(prompt: str) -> bool:
    return zlib.crc32(prompt.encode()) % EVAL_BUCKETS == 0


class ProceduralTask:
    """Subclasses define name, alphabet, default_reward, sample(rng) and space_size()."""

    name = "procedural"
    alphabet = ""
    default_reward = "exact_match"
    eval_size = 500

    def sample(self, rng: np.random.Generator) -> Problem:
        raise NotImplementedError

    def space_size(self) -> int:
        """How many distinct problems exist (bounds the held-out set)."""
        raise NotImplementedError

    def _draw(self, rng: np.random.Generator, count: int, heldout: bool) -> list[Problem]:
        out: list[Problem] = []
        while len(out) < count:
            p = self.sample(rng)
            if is_heldout(p.prompt) == heldout:
                out.append(p)
        return out

    def train_batch(self, seed: int, step: int, size: int, stream: int = 0) -> list[Problem]:
        """The global training batch of one step: the same on every rank. `stream` != 0
        draws another sequence of batches (retraining uses one per date)."""
        key = [seed, step, 1] + ([stream] if stream else [])
        return self._draw(np.random.default_rng(key), size, heldout=False)

    def demonstrations(self, seed: int, step: int, size: int) -> list[Problem]:
        """Supervised warm-start examples, from the training distribution."""
        return self._draw(np.random.default_rng([seed, step, 2]), size, heldout=False)

    def eval_set(self) -> list[Problem]:
        """Held-out problems, distinct, fixed for a task configuration."""
        rng = np.random.default_rng([12345, 3])
        seen: dict[str, Problem] = {}
        target = min(self.eval_size, self.space_size() // EVAL_BUCKETS // 2)
        while len(seen) < target:
            for p in self._draw(rng, target, heldout=True):
                seen.setdefault(p.prompt, p)
        return list(seen.values())[:target]

    def score(self, response: str, problem: Problem, finished: bool) -> float:
        """Held-out correctness. Exact match: the response up to EOS is the answer, and EOS was produced."""
        return 1.0 if finished and response.strip() == problem.answer else 0.0

    def answer_of(self, response: str, finished: bool) -> str | None:
        """The normalised answer a response gives (for majority voting); None if it gives none."""
        return response.strip() if finished and self.format_ok(response, finished) else None

    def format_ok(self, response: str, finished: bool) -> bool:
        return finished and bool(response.strip())
