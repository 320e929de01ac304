"""Rule-based rewards. A reward function maps (task, response text, answer,
finished) to a float; registered by name so configs and users can pick one."""
from __future__ import annotations

from siirl_core.algorithms.registry import Registry

REWARDS = Registry("reward function")


@REWARDS.register("exact_match")
def exact_match(task, response: str, answer: str, finished: bool) -> float:
    return task.score(response, answer, finished)


def score_responses(task, responses: list[str], answers: list[str], finished: list[bool],
                    format_weight: float = 0.0) -> tuple[list[float], list[float]]:
    """Returns (rewards, accuracies): accuracy is exact match; the reward adds the
    optional format bonus for well-formed but wrong answers."""
    acc = [exact_match(task, r, a, f) for r, a, f in zip(responses, answers, finished)]
    if format_weight == 0:
        return list(acc), acc
    rewards = [x if x else format_weight * float(task.format_ok(r, f))
               for x, r, f in zip(acc, responses, finished)]
    return rewards, acc
