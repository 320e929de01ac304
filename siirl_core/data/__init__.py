"""Prompt sources (procedural tasks and data files) and their per-rank sharding."""
from __future__ import annotations

import dataclasses
import json
import os

from siirl_core.algorithms.registry import Registry
from siirl_core.config import ConfigError
from siirl_core.config_rules import config_rule, one_of
from siirl_core.data.arithmetic import ArithmeticTask
from siirl_core.data.countdown import CountdownTask
from siirl_core.data.files import DataFileError, FileTask
from siirl_core.data.procedural import Problem
from siirl_core.data.reverse import ReverseTask

TASKS = Registry("task")
for _cls in (ArithmeticTask, CountdownTask, ReverseTask, FileTask):
    TASKS.register(_cls.name)(_cls)


_BUILT: dict[str, object] = {}  # tasks built without a tokenizer, by settings and data-file versions


def build_task(task_cfg, tokenizer=None):
    """The task named by task.name, built from its config section. With a tokenizer,
    data-file prompts in chat form use its chat template. Without one, a process builds
    each task once while its settings and data files stay the same (the driver needs it
    to check the config, name the model cache and warm-start: data files are read once)."""
    if tokenizer is not None:
        return TASKS.get(task_cfg.name).from_config(task_cfg, tokenizer)
    key = _task_key(task_cfg)
    if key is None or key not in _BUILT:
        task = TASKS.get(task_cfg.name).from_config(task_cfg, None)
        if key is None:
            return task
        while len(_BUILT) >= 4:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[key] = task
    return _BUILT[key]


def _task_key(task_cfg) -> str | None:
    """The settings and each data file's (size, modification time); None when a file
    cannot be read (building the task then says why)."""
    if not dataclasses.is_dataclass(task_cfg):
        return None
    try:
        stats = [(p, os.stat(p)) for p in [*task_cfg.train_files, *task_cfg.val_files]]
    except OSError:
        return None
    files = [(p, s.st_size, s.st_mtime_ns) for p, s in stats]
    return json.dumps([dataclasses.asdict(task_cfg), files], sort_keys=True, default=str)


@config_rule("task")
def _task_rule(cfg) -> None:
    """Build the task once: bad options and malformed data files fail here, naming the
    key, or the file, row and field."""
    one_of("task.name", cfg.task.name, TASKS.names())
    try:
        build_task(cfg.task)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def shard(items: list, rank: int, world_size: int) -> list:
    """Contiguous equal slices: rank r takes items[r*k:(r+1)*k]; requires divisibility."""
    if len(items) % world_size:
        raise ValueError(f"{len(items)} items cannot be split evenly over {world_size} ranks")
    k = len(items) // world_size
    return items[rank * k:(rank + 1) * k]


__all__ = ["TASKS", "ArithmeticTask", "CountdownTask", "DataFileError", "FileTask", "Problem", "ReverseTask",
           "build_task", "shard"]
