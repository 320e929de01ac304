"""Built-in rule rewards. Every reward function, built in or a user's, has verl's
per-sample signature

    fn(data_source: str, solution_str: str, ground_truth, extra_info: dict, **kwargs) -> float | dict

where extra_info carries the row's own `extra_info` plus `finished` (the response
ended with EOS) and `id`. A dict result gives `score` and may give `acc` (correct or
not); a float is the score, and a sample counts as correct when it is >= 1.
"""
from __future__ import annotations

import ast
import operator
import re
from collections import Counter

from siirl_core.algorithms.registry import Registry

REWARDS = Registry("reward function")

_NUMBER = r"-?\d+(?:\.\d+)?"


@REWARDS.register("exact_match")
def exact_match(data_source, solution_str: str, ground_truth, extra_info: dict) -> float:
    """1 when the response (stripped) is the answer and EOS was produced."""
    return 1.0 if extra_info.get("finished", True) and solution_str.strip() == str(ground_truth).strip() else 0.0


def extract_numeric_answer(text: str) -> str | None:
    """The answer of a `#### 42` line or the last `\\boxed{42}`; None when there is neither."""
    hashes = re.findall(rf"####\s*({_NUMBER})", text.replace(",", ""))
    if hashes:
        return hashes[-1]
    boxed = re.findall(rf"\\boxed\{{\s*({_NUMBER})\s*\}}", text.replace(",", ""))
    return boxed[-1] if boxed else None


@REWARDS.register("numeric")
def numeric_answer(data_source, solution_str: str, ground_truth, extra_info: dict) -> float:
    """1 when the `#### n` / `\\boxed{n}` answer equals the ground truth as a number."""
    got = extract_numeric_answer(solution_str)
    try:
        return 1.0 if got is not None and abs(float(got) - float(str(ground_truth).replace(",", ""))) < 1e-6 else 0.0
    except ValueError:
        return 0.0


@REWARDS.register("format")
def format_match(data_source, solution_str: str, ground_truth, extra_info: dict, pattern: str = r".+",
                 score: float = 1.0) -> float:
    """`score` when the whole response matches the regular expression `pattern`."""
    return score if re.fullmatch(pattern, solution_str.strip(), flags=re.DOTALL) else 0.0


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(node):
    """Arithmetic over integer literals with + - * / only; anything else raises ValueError."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError("not a + - * / expression over integers")


def evaluate_expression(text: str):
    """The value of an arithmetic expression over integers with + - * / and parentheses;
    anything else (powers, names, calls) raises ValueError, so no input can run code."""
    return _evaluate(ast.parse(text, mode="eval"))


@REWARDS.register("countdown")
def countdown(data_source, solution_str: str, ground_truth, extra_info: dict, format_score: float = 0.1) -> float:
    """TinyZero's countdown: 1 when the equation uses each given number exactly once and
    equals the target; `format_score` for a well-formed equation that misses."""
    expr = solution_str.strip()
    if not extra_info.get("finished", True) or not re.fullmatch(r"[\d+\-*/() ]+", expr):
        return 0.0
    used = Counter(int(n) for n in re.findall(r"\d+", expr))
    if used != Counter(int(n) for n in ground_truth["numbers"]):
        return format_score
    try:
        value = evaluate_expression(expr)
    except (SyntaxError, ValueError, ZeroDivisionError):
        return 0.0
    return 1.0 if abs(value - ground_truth["target"]) < 1e-6 else format_score


@REWARDS.register("length_penalty")
def length_penalty(data_source, solution_str: str, ground_truth, extra_info: dict, max_length: int = 64,
                   coef: float = 0.01) -> float:
    """-coef per character beyond max_length (0 within it); meant to be added to another reward."""
    return -coef * max(0, len(solution_str) - max_length)
