"""Greedy exact-match scoring of held-out problems with any rollout engine."""
from __future__ import annotations

from siirl_core.rollout.base import SamplingConfig


def greedy_correct(engine, tokenizer, task, problems, max_new_tokens: int) -> int:
    """How many problems the engine's greedy answer solves exactly."""
    out = engine.generate([tokenizer(p.prompt)["input_ids"] for p in problems],
                          SamplingConfig(n=1, greedy=True, max_new_tokens=max_new_tokens), seed=0)
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in out.response_ids]
    return int(sum(task.score(t, p.answer, f) for t, p, f in zip(texts, problems, out.finished)))
