"""Scoring held-out problems with any rollout engine: greedy exact match, and the
sampled metrics mean@n, pass@k and maj@n."""
from __future__ import annotations

import math
from collections import Counter
from typing import Optional, Sequence

from siirl_core.rollout.base import SamplingConfig


def greedy_correct(engine, tokenizer, task, problems, max_new_tokens: int) -> int:
    """How many problems the engine's greedy answer solves exactly."""
    out = engine.generate([tokenizer(p.prompt)["input_ids"] for p in problems],
                          SamplingConfig(n=1, greedy=True, max_new_tokens=max_new_tokens), seed=0)
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in out.response_ids]
    return int(sum(task.score(t, p, f) for t, p, f in zip(texts, problems, out.finished)))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021):
    the chance that k samples drawn without replacement include a correct one."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_answer(answers: Sequence[Optional[str]]) -> Optional[str]:
    """The most frequent answer (None = no answer, never counted); ties go to the one given first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == top)


def sampled_metrics(correct: Sequence[Sequence[bool]], answers: Sequence[Sequence[Optional[str]]],
                    truths: Sequence[str], ks: Sequence[int]) -> dict[str, float]:
    """Per-prompt sample outcomes -> mean@n, pass@k for each k, and maj@n, averaged over prompts."""
    if not correct:
        raise ValueError("sampled_metrics needs at least one prompt")
    n = len(correct[0])
    out = {f"mean@{n}": sum(sum(c) / n for c in correct) / len(correct)}
    for k in ks:
        out[f"pass@{k}"] = sum(pass_at_k(n, sum(c), k) for c in correct) / len(correct)
    out[f"maj@{n}"] = sum(majority_answer(a) == t for a, t in zip(answers, truths)) / len(correct)
    return out


def evaluate_sampled(engine, tokenizer, task, problems, sampling: SamplingConfig, ks: Sequence[int],
                     seed: int) -> dict[str, tuple[dict[str, float], int]]:
    """Sample `sampling.n` responses per problem, score them with the task's verifier, and
    return {data source: (mean@n, best@n, pass@k, maj@n, number of prompts)}."""
    out = engine.generate([tokenizer(p.prompt)["input_ids"] for p in problems], sampling, seed=seed)
    correct: list[list[bool]] = [[] for _ in problems]
    answers: list[list[Optional[str]]] = [[] for _ in problems]
    for ids, finished, g in zip(out.response_ids, out.finished, out.group_index):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        correct[g].append(task.score(text, problems[g], finished) > 0)
        answers[g].append(task.answer_of(text, finished))
    by_source: dict[str, list[int]] = {}
    for i, p in enumerate(problems):
        by_source.setdefault(p.data_source or task.name, []).append(i)
    results = {}
    for source, idx in by_source.items():
        m = sampled_metrics([correct[i] for i in idx], [answers[i] for i in idx],
                            [task.answer_of(problems[i].answer, True) for i in idx], ks)
        m[f"best@{sampling.n}"] = sum(any(correct[i]) for i in idx) / len(idx)  # pass@n
        results[source] = (m, len(idx))
    return results
