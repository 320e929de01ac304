"""Procedural arithmetic: prompts like `12+35=`, answers like `47`.

Training prompts are a deterministic function of (seed, step): every rank builds
the same global batch and takes its own slice. The held-out evaluation set is the
problems whose stable hash falls in a reserved bucket; training never samples them.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

ALPHABET = "0123456789+-*="
EVAL_BUCKETS = 10  # one problem in ten is reserved for evaluation


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str


def _is_heldout(prompt: str) -> bool:
    return zlib.crc32(prompt.encode()) % EVAL_BUCKETS == 0


class ArithmeticTask:
    """Integer arithmetic over operands of min_digits..max_digits digits."""

    name = "arithmetic"
    alphabet = ALPHABET

    def __init__(self, min_digits: int = 1, max_digits: int = 2, operators=("+",), eval_size: int = 500):
        bad = [op for op in operators if op not in "+-*"]
        if bad or not operators:
            raise ValueError(f"task.operators={list(operators)!r}: expected a non-empty subset of ['+', '-', '*']")
        if not 1 <= min_digits <= max_digits <= 6:
            raise ValueError(f"task.min_digits/max_digits=({min_digits}, {max_digits}): expected 1 <= min <= max <= 6")
        self.low = 0 if min_digits == 1 else 10 ** (min_digits - 1)
        self.high = 10 ** max_digits  # exclusive
        self.operators = list(operators)
        self.eval_size = eval_size

    def _problem(self, a: int, op: str, b: int) -> Problem:
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        return Problem(f"{a}{op}{b}=", str(value))

    def _draw(self, rng: np.random.Generator, count: int, heldout: bool) -> list[Problem]:
        out: list[Problem] = []
        while len(out) < count:
            a, b = rng.integers(self.low, self.high, size=2)
            op = self.operators[rng.integers(len(self.operators))]
            p = self._problem(int(a), op, int(b))
            if _is_heldout(p.prompt) == heldout:
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
        n_space = (self.high - self.low) ** 2 * len(self.operators)
        target = min(self.eval_size, n_space // EVAL_BUCKETS // 2)
        while len(seen) < target:
            for p in self._draw(rng, target, heldout=True):
                seen.setdefault(p.prompt, p)
        return list(seen.values())[:target]

    def score(self, response: str, answer: str, finished: bool) -> float:
        """Exact match: the response up to EOS is the answer, and EOS was produced."""
        return 1.0 if finished and response.strip() == answer else 0.0

    def answer_of(self, response: str, finished: bool) -> str | None:
        """The normalised answer a response gives (for majority voting); None if it gives none."""
        return response.strip() if finished and self.format_ok(response, finished) else None

    def format_ok(self, response: str, finished: bool) -> bool:
        text = response.strip()
        return finished and text.lstrip("-").isdigit()
