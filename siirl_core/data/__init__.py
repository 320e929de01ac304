"""Prompt sources and their per-rank sharding."""
from __future__ import annotations

from siirl_core.algorithms.registry import Registry
from siirl_core.data.arithmetic import ArithmeticTask, Problem

TASKS = Registry("task")
TASKS.register("arithmetic")(ArithmeticTask)


def build_task(task_cfg):
    cls = TASKS.get(task_cfg.name)
    return cls(min_digits=task_cfg.min_digits, max_digits=task_cfg.max_digits,
               operators=tuple(task_cfg.operators), eval_size=task_cfg.eval_size)


def shard(items: list, rank: int, world_size: int) -> list:
    """Contiguous equal slices: rank r takes items[r*k:(r+1)*k]; requires divisibility."""
    if len(items) % world_size:
        raise ValueError(f"{len(items)} items cannot be split evenly over {world_size} ranks")
    k = len(items) // world_size
    return items[rank * k:(rank + 1) * k]


__all__ = ["TASKS", "ArithmeticTask", "Problem", "build_task", "shard"]
