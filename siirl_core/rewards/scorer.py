"""Calling reward functions safely: the calls of a batch (one per sample, or one for the
batch when batched) run at once in `reward.threads` helper threads, each with its own
timeout from when it starts; an exception, a timeout or a return value that is
not a finite number gives the sample `reward.error_score`, is counted, and is logged once
with the sample's id, unless `reward.on_error=stop`, which stops the run with that message.
A function that fails on more than `reward.max_error_rate` of a batch's samples for
`reward.max_error_batches` batches in a row stops the run: it would train on error_score."""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

log = logging.getLogger("siirl.reward")
# Python cannot kill a thread: a call that never returns leaves its thread behind.
# Past this many, the run stops rather than pile up threads.
MAX_ABANDONED_THREADS = 16
_FAILED = object()  # a call that raised or timed out (None is a return value to reject)
_POLL_S = 0.05  # how often running calls are checked against their timeout


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
    """(score, accuracy) from a number or a {"score", "acc"} dict; ValueError saying what
    was returned otherwise, or when the score is not finite."""
    expected = "expected a finite number or a dict {'score': number, 'acc': bool}"
    if isinstance(result, dict) and "score" not in result:
        raise ValueError(f"returned a dict without 'score' (keys {sorted(result)}): {expected}")
    raw = result["score"] if isinstance(result, dict) else result
    if isinstance(raw, (str, bytes)) or raw is None:
        raise ValueError(f"returned {raw!r}: {expected}")
    try:
        score = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"returned a {type(raw).__name__}: {expected}") from None
    if not math.isfinite(score):
        raise ValueError(f"returned {score}: {expected}")
    return score, float(result.get("acc", score >= 1.0)) if isinstance(result, dict) else float(score >= 1.0)


class RewardScorer:
    def __init__(self, fn, name: str, kwargs: dict, batched: bool, timeout_s: float, on_error: str,
                 error_score: float, max_error_rate: float = 1.0, max_error_batches: int = 1, threads: int = 1):
        self.fn, self.name, self.kwargs, self.batched = fn, name, dict(kwargs), batched
        self.timeout_s, self.on_error, self.error_score = timeout_s, on_error, error_score
        self.max_error_rate, self.max_error_batches = max_error_rate, max_error_batches
        self.threads = threads
        self._pool = self._new_pool()
        self._abandoned = 0
        self._failing_batches = 0  # in a row, above max_error_rate
        self._logged: set[str] = set()
        self._last_failure = ""

    def score(self, samples: list[dict]) -> Scored:
        """samples: dicts with data_source, solution_str, ground_truth, extra_info (holding `id`)."""
        out = Scored([], [])
        pairs = self._score_batch(samples, out) if self.batched else self._score_each(samples, out)
        position = {s["extra_info"].get("id", "?"): k for k, s in enumerate(samples)}
        out.failed_ids.sort(key=lambda sid: position.get(sid, len(samples)))  # calls end in any order
        out.rewards = [p[0] for p in pairs]
        out.accuracies = [p[1] for p in pairs]
        self._check_error_rate(len(samples), out)
        return out

    def _score_each(self, samples: list[dict], out: Scored) -> list[tuple[float, float]]:
        results = self._call_all([[s] for s in samples], [
            lambda s=s: self.fn(s["data_source"], s["solution_str"], s["ground_truth"], s["extra_info"], **self.kwargs)
            for s in samples], out)
        return [(self.error_score, 0.0) if r is _FAILED else self._unpacked(r, s, out) for r, s in zip(results, samples)]

    def _score_batch(self, samples: list[dict], out: Scored) -> list[tuple[float, float]]:
        results = self._call_all([samples], [lambda: self.fn(*[[s[k] for s in samples] for k in (
            "data_source", "solution_str", "ground_truth", "extra_info")], **self.kwargs)], out)[0]
        if results is _FAILED:
            return [(self.error_score, 0.0)] * len(samples)
        if not isinstance(results, (list, tuple)) or len(results) != len(samples):
            out.errors += len(samples)
            got = f"{len(results)} scores" if isinstance(results, (list, tuple)) else type(results).__name__
            self._fail(samples, "ValueError", f"returned {got} for {len(samples)} samples", out)
            return [(self.error_score, 0.0)] * len(samples)
        return [self._unpacked(r, s, out) for r, s in zip(results, samples)]

    def _unpacked(self, result, sample: dict, out: Scored) -> tuple[float, float]:
        try:
            return _unpack(result)
        except ValueError as err:
            out.errors += 1
            self._fail([sample], "bad return value", str(err), out)
            return self.error_score, 0.0

    def _call_all(self, groups: list[list[dict]], thunks: list, out: Scored) -> list:
        """Run every thunk (thunks[i] scores groups[i]) and return its result or _FAILED.
        A call running longer than timeout_s is given up; its thread cannot be stopped, so
        the calls still waiting for a thread move to a fresh pool."""
        started: dict[int, float] = {}

        def timed(i: int):
            started[i] = time.monotonic()
            return thunks[i]()

        pending = {self._pool.submit(timed, i): i for i in range(len(thunks))}
        results: list = [_FAILED] * len(thunks)
        while pending:
            done, _ = wait(pending, timeout=_POLL_S, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=pending.get):  # failures are reported in sample order
                i = pending.pop(future)
                try:
                    results[i] = future.result()
                except Exception as err:  # the user's code: any exception is a failed sample
                    out.errors += len(groups[i])
                    self._fail(groups[i], type(err).__name__, str(err), out)
            now = time.monotonic()
            late = [f for f, i in pending.items() if i in started and now - started[i] > self.timeout_s]
            for future in late:
                i = pending.pop(future)
                out.timeouts += len(groups[i])
                self._fail(groups[i], "timeout", f"no result within reward.timeout_s={self.timeout_s}", out)
            if late:
                waiting = [(f, i) for f, i in pending.items() if f.cancel()]
                self._abandon(len(late))
                for future, i in waiting:
                    del pending[future]
                    pending[self._pool.submit(timed, i)] = i
        return results

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="siirl-reward")

    def _check_error_rate(self, n: int, out: Scored) -> None:
        failed = out.errors + out.timeouts
        if n == 0 or failed / n <= self.max_error_rate:
            self._failing_batches = 0
            return
        self._failing_batches += 1
        if self._failing_batches >= self.max_error_batches:
            raise RewardError(
                f"reward function {self.name} failed on {failed} of {n} samples, more than "
                f"reward.max_error_rate={self.max_error_rate}, in {self._failing_batches} batches in a row; the run "
                f"stops rather than train on reward.error_score. Last failure: {self._last_failure}")

    def _abandon(self, calls: int) -> None:
        """Give up `calls` stuck calls: their threads stay behind, later calls get a fresh pool."""
        self._pool.shutdown(wait=False)
        self._pool = self._new_pool()
        self._abandoned += calls
        if self._abandoned > MAX_ABANDONED_THREADS:
            raise RewardError(f"reward function {self.name} timed out {self._abandoned} times; "
                              "each left a thread behind, so the run stops")

    def _fail(self, samples: list[dict], kind: str, message: str, out: Scored) -> None:
        sid = samples[0]["extra_info"].get("id", "?")
        out.failed_ids.append(sid)
        text = f"reward function {self.name} failed on sample {sid}: {kind}: {message}"
        self._last_failure = text
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
