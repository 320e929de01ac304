"""Metric accumulation, reduction across ranks, and sinks (JSONL, TensorBoard).

Each metric is recorded with a reduction so the cross-rank result equals what one
process would compute from all samples: means are weighted by their counts.
"""
from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

from siirl_core.distributed import collective_device

REDUCTIONS = ("mean", "sum", "max", "min")


class MetricBag:
    def __init__(self) -> None:
        self._values: dict[str, list[float]] = {}  # name -> [value*weight or value, weight]
        self._kinds: dict[str, str] = {}

    def add(self, name: str, value, weight: float = 1.0, reduce: str = "mean") -> None:
        if reduce not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduce!r}; expected one of {REDUCTIONS}")
        value = float(value)
        kind = self._kinds.setdefault(name, reduce)
        if name not in self._values:
            self._values[name] = [value * weight if kind == "mean" else value, weight]
            return
        acc = self._values[name]
        if kind == "mean":
            acc[0] += value * weight
            acc[1] += weight
        elif kind == "sum":
            acc[0] += value
        elif kind == "max":
            acc[0] = max(acc[0], value)
        else:
            acc[0] = min(acc[0], value)

    def local(self) -> dict[str, float]:
        return {k: (v[0] / v[1] if self._kinds[k] == "mean" and v[1] else v[0]) for k, v in self._values.items()}

    def reduce(self) -> dict[str, float]:
        """Combine across the default process group; every rank must hold the same names."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.local()
        names = sorted(self._values)
        out: dict[str, float] = {}
        for kind, op in (("mean", dist.ReduceOp.SUM), ("sum", dist.ReduceOp.SUM),
                         ("max", dist.ReduceOp.MAX), ("min", dist.ReduceOp.MIN)):
            group = [n for n in names if self._kinds[n] == kind]
            if not group:
                continue
            t = torch.tensor([self._values[n] for n in group], dtype=torch.float64,
                             device=collective_device())  # [K, 2]
            dist.all_reduce(t, op=op)
            for n, (a, w) in zip(group, t.tolist()):
                out[n] = a / w if kind == "mean" and w else a
        return out


class MetricSinks:
    """Driver-side: one JSONL line and TensorBoard scalars per step. A run resumed from
    checkpoint step `resumed_from` drops what the log holds after that step from both, so
    the replayed steps are not there twice."""

    def __init__(self, run_dir: str, resumed_from: int = 0, tensorboard: bool = True, also: tuple = ()) -> None:
        """also: more sinks (objects with write(step, metrics)), e.g. an MLflow tracker."""
        os.makedirs(run_dir, exist_ok=True)
        self.also = [sink for sink in also if sink is not None]
        self.jsonl_path = os.path.join(run_dir, "metrics.jsonl")
        self._truncate_after(resumed_from)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step: TensorBoard discards the earlier files' events from that step on.
            self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=resumed_from + 1)

    def _truncate_after(self, step: int) -> None:
        self.last_step: int | None = None  # the newest step the log keeps
        if not os.path.exists(self.jsonl_path):
            return
        with open(self.jsonl_path) as f:
            keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.jsonl_path, "w") as f:
            f.writelines(keep)
        if keep:
            self.last_step = json.loads(keep[-1])["step"]

    def write(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        for sink in self.also:
            sink.write(step, metrics)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
