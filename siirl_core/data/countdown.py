"""Countdown, as in TinyZero: given numbers and a target, write an equation that uses
each number exactly once and equals the target. Prompts look like `7,3,5>22:`; the
reference answer is the equation the generator built (`3*5+7`); any correct equation
is rewarded (see the `countdown` reward)."""
from __future__ import annotations

import numpy as np

from siirl_core.data.procedural import Problem, ProceduralTask
from siirl_core.rewards.builtin import countdown, evaluate_expression

ALPHABET = "0123456789+-*,>:"


class CountdownTask(ProceduralTask):
    name = "countdown"
    alphabet = ALPHABET
    default_reward = "countdown"

    def __init__(self, terms: int = 3, max_number: int = 9, operators=("+", "-", "*"), eval_size: int = 500):
        if not 2 <= terms <= 5:
            raise ValueError(f"task.terms={terms}: expected 2..5 numbers per countdown problem")
        if not 2 <= max_number <= 99:
            raise ValueError(f"task.max_number={max_number}: expected 2..99")
        bad = [op for op in operators if op not in "+-*"]
        if bad or not operators:
            raise ValueError(f"task.operators={list(operators)!r}: expected a non-empty subset of ['+', '-', '*']")
        self.terms, self.max_number, self.operators, self.eval_size = terms, max_number, list(operators), eval_size

    @classmethod
    def from_config(cls, t, tokenizer=None) -> "CountdownTask":
        return cls(t.terms, t.max_number, tuple(t.operators), t.eval_size)

    def sample(self, rng: np.random.Generator) -> Problem:
        nums = [int(x) for x in rng.integers(1, self.max_number + 1, size=self.terms)]
        ops = [self.operators[i] for i in rng.integers(len(self.operators), size=self.terms - 1)]
        expr = str(nums[0]) + "".join(op + str(n) for op, n in zip(ops, nums[1:]))
        target = int(evaluate_expression(expr))
        shown = [nums[i] for i in rng.permutation(self.terms)]  # the prompt does not give the order away
        prompt = ",".join(map(str, shown)) + f">{target}:"
        return Problem(prompt, expr, ground_truth={"numbers": nums, "target": target})

    def space_size(self) -> int:
        return self.max_number ** self.terms * len(self.operators) ** (self.terms - 1)

    def score(self, response: str, problem: Problem, finished: bool) -> float:
        """1 for any equation that uses each number once and hits the target."""
        return countdown(self.name, response, problem.truth, {"finished": finished}, format_score=0.0)

    def answer_of(self, response: str, finished: bool) -> str | None:
        """Equations vote by value: different correct equations agree."""
        text = response.strip()
        if not self.format_ok(text, finished):
            return None
        try:
            return str(evaluate_expression(text))
        except (SyntaxError, ValueError, ZeroDivisionError):
            return None

    def format_ok(self, response: str, finished: bool) -> bool:
        text = response.strip()
        return finished and bool(text) and set(text) <= set("0123456789+-*") and text[0].isdigit()
