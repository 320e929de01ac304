"""Calling reward functions safely: each call (or each batch, for batched functions)
runs with a timeout in a helper thread; an exception or a timeout gives the sample
`reward.error_score`, is counted, and is logged once with the sample's id, unless
`reward.on_error=stop`, which stops the run with that message."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

log = logging.getLogger("siirl.reward")
# Python cannot kill a thread: a call that never returns leaves its thread behind.
# Past this many, the run stops rather than pile up threads.
MAX_ABANDONED_THREADS = 16


class RewardError(RuntimeError):
    """A reward function failed and reward.on_error=stop."""


@dataclass
class Scored:
    rewards: list[float]
    accuracies: list[float]
    errors: int = 0
    timeouts: int = 0
    failed_ids: list[str] = field(default_factory=list)


def _unpack(result) -> tuple[float, float]:
    """(score, accuracy) from a float or a {"score", "acc"} dict."""
    if isinstance(result, dict):
        score = float(result["score"])
        return score, float(result.get("acc", score >= 1.0))
    score = float(result)
    return score, float(score >= 1.0)


class RewardScorer:
    def __init__(self, fn, name: str, kwargs: dict, batched: bool, timeout_s: float, on_error: str,
                 error_score: float):
        self.fn, self.name, self.kwargs, self.batched = fn, name, dict(kwargs), batched
        self.timeout_s, self.on_error, self.error_score = timeout_s, on_error, error_score
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="siirl-reward")
        self._abandoned = 0
        self._logged: set[str] = set()

    def score(self, samples: list[dict]) -> Scored:
        """samples: dicts with data_source, solution_str, ground_truth, extra_info (holding `id`)."""
        out = Scored([], [])
        if self.batched:
            results = self._call(samples, lambda: self.fn(*[[s[k] for s in samples] for k in
                                                            ("data_source", "solution_str", "ground_truth",
                                                             "extra_info")], **self.kwargs), out)
            if results is not None and len(results) != len(samples):
                self._fail(samples, "ValueError", f"returned {len(results)} scores for {len(samples)} samples", out)
                results = None
            pairs = [_unpack(r) for r in results] if results is not None else [(self.error_score, 0.0)] * len(samples)
        else:
            pairs = []
            for s in samples:
                r = self._call([s], lambda s=s: self.fn(s["data_source"], s["solution_str"], s["ground_truth"],
                                                        s["extra_info"], **self.kwargs), out)
                pairs.append(_unpack(r) if r is not None else (self.error_score, 0.0))
        out.rewards = [p[0] for p in pairs]
        out.accuracies = [p[1] for p in pairs]
        return out

    def _call(self, samples: list[dict], thunk, out: Scored):
        future = self._pool.submit(thunk)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            out.timeouts += len(samples)
            self._abandon()
            self._fail(samples, "timeout", f"no result within reward.timeout_s={self.timeout_s}", out)
        except Exception as err:  # the user's code: any exception is a failed sample
            out.errors += len(samples)
            self._fail(samples, type(err).__name__, str(err), out)
        return None

    def _abandon(self) -> None:
        self._pool.shutdown(wait=False)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="siirl-reward")
        self._abandoned += 1
        if self._abandoned > MAX_ABANDONED_THREADS:
            raise RewardError(f"reward function {self.name} timed out {self._abandoned} times; "
                              "each left a thread behind, so the run stops")

    def _fail(self, samples: list[dict], kind: str, message: str, out: Scored) -> None:
        sid = samples[0]["extra_info"].get("id", "?")
        out.failed_ids.append(sid)
        text = f"reward function {self.name} failed on sample {sid}: {kind}: {message}"
        if self.on_error == "stop":
            raise RewardError(text + " (reward.on_error=stop)")
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("%s; the sample scores reward.error_score=%s (further %s failures are only counted "
                        "in reward/errors and reward/timeouts)", text, self.error_score, kind)


def add_format_bonus(task, texts: list[str], finished: list[bool], scored: Scored, weight: float) -> list[float]:
    """task.format_reward: a wrong but well-formed answer earns `weight` (a shaping bonus)."""
    if weight == 0:
        return list(scored.rewards)
    return [r if a else r + weight * float(task.format_ok(t, f))
            for r, a, t, f in zip(scored.rewards, scored.accuracies, texts, finished)]
