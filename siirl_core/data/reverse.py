"""String reversal: `abcd<` -> `dcba`. Exact-match verified; a quick task for
checking that an algorithm learns something other than arithmetic."""
from __future__ import annotations

import numpy as np

from siirl_core.data.procedural import Problem, ProceduralTask

LETTERS = "abcdefgh"


class ReverseTask(ProceduralTask):
    name = "reverse"
    alphabet = LETTERS + "<"
    default_reward = "exact_match"

    def __init__(self, min_length: int = 3, max_length: int = 6, eval_size: int = 500):
        if not 1 <= min_length <= max_length <= 32:
            raise ValueError(f"task.min_length/max_length=({min_length}, {max_length}): expected 1 <= min <= max <= 32")
        self.min_length, self.max_length, self.eval_size = min_length, max_length, eval_size

    @classmethod
    def from_config(cls, t, tokenizer=None) -> "ReverseTask":
        return cls(t.min_length, t.max_length, t.eval_size)

    def sample(self, rng: np.random.Generator) -> Problem:
        n = int(rng.integers(self.min_length, self.max_length + 1))
        s = "".join(LETTERS[i] for i in rng.integers(len(LETTERS), size=n))
        return Problem(s + "<", s[::-1])

    def space_size(self) -> int:
        return sum(len(LETTERS) ** n for n in range(self.min_length, self.max_length + 1))

    def format_ok(self, response: str, finished: bool) -> bool:
        text = response.strip()
        return finished and bool(text) and set(text) <= set(LETTERS)
