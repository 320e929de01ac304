"""Prompt sources (procedural tasks and data files) and their per-rank sharding."""
from __future__ import annotations

from siirl_core.algorithms.registry import Registry
from siirl_core.data.arithmetic import ArithmeticTask
from siirl_core.data.countdown import CountdownTask
from siirl_core.data.files import DataFileError, FileTask
from siirl_core.data.procedural import Problem
from siirl_core.data.reverse import ReverseTask

TASKS = Registry("task")
for _cls in (ArithmeticTask, CountdownTask, ReverseTask, FileTask):
    TASKS.register(_cls.name)(_cls)


def build_task(task_cfg, tokenizer=None):
    """The task named by task.name, built from its config section. With a tokenizer,
    data-file prompts in chat form use its chat template."""
    return TASKS.get(task_cfg.name).from_config(task_cfg, tokenizer)


def shard(items: list, rank: int, world_size: int) -> list:
    """Contiguous equal slices: rank r takes items[r*k:(r+1)*k]; requires divisibility."""
    if len(items) % world_size:
        raise ValueError(f"{len(items)} items cannot be split evenly over {world_size} ranks")
    k = len(items) // world_size
    return items[rank * k:(rank + 1) * k]


__all__ = ["TASKS", "ArithmeticTask", "CountdownTask", "DataFileError", "FileTask", "Problem", "ReverseTask",
           "build_task", "shard"]
