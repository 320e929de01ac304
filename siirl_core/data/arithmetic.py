"""Procedural arithmetic: prompts like `12+35=`, answers like `47`."""
from __future__ import annotations

import numpy as np

from siirl_core.data.procedural import Problem, ProceduralTask

ALPHABET = "0123456789+-*="


class ArithmeticTask(ProceduralTask):
    """Integer arithmetic over operands of min_digits..max_digits digits."""

    name = "arithmetic"
    alphabet = ALPHABET
    default_reward = "exact_match"

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

    @classmethod
    def from_config(cls, t, tokenizer=None) -> "ArithmeticTask":
        return cls(t.min_digits, t.max_digits, tuple(t.operators), t.eval_size)

    def _problem(self, a: int, op: str, b: int) -> Problem:
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        return Problem(f"{a}{op}{b}=", str(value))

    def sample(self, rng: np.random.Generator) -> Problem:
        a, b = rng.integers(self.low, self.high, size=2)
        op = self.operators[rng.integers(len(self.operators))]
        return self._problem(int(a), op, int(b))

    def space_size(self) -> int:
        return (self.high - self.low) ** 2 * len(self.operators)

    def format_ok(self, response: str, finished: bool) -> bool:
        text = response.strip()
        return finished and text.lstrip("-").isdigit()
