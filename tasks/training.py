"""Thin tasks over the rank group: each fans one control message out to every rank
and returns a small dict. Retries restore the newest checkpoint before replaying."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from siirl_core import checkpoint as ckpt
from siirl_core.config import SiirlConfig


def record_ranks(group, run_dir: str) -> None:
    """ranks.json: which process is which rank, for operators (and the kill test)."""
    import json
    import os

    with open(os.path.join(run_dir, "ranks.json"), "w") as f:
        json.dump(group.info, f, indent=1)


def restore_newest(group, run_dir: str, resume: str = "auto") -> int:
    """Restore every rank from the newest complete checkpoint; returns its step (0 if none)."""
    point = ckpt.find_resume_point(run_dir, resume)
    if point is None:
        return 0
    step, folder = point
    group.call("restore", folder, step)
    return step


@task(cache_policy=NO_CACHE, task_run_name="iteration-{step}")
def run_iteration(group, step: int, run_dir: str) -> dict:
    from prefect.runtime import task_run

    if task_run.run_count > 1:
        logger = get_run_logger()
        group.rebuild()
        record_ranks(group, run_dir)
        logger.warning("retry %d of iteration %d: rebuilt the rank group (%s)", task_run.run_count - 1, step,
                       ", ".join(f"rank {i['rank']} pid {i['pid']}" for i in group.info))
        restored = restore_newest(group, run_dir)
        logger.warning("restored every rank from checkpoint step %d, replaying steps %d..%d",
                       restored, restored + 1, step)
    return group.call_rank0("run_until", step)


@task(cache_policy=NO_CACHE, task_run_name="checkpoint-{step}")
def save_checkpoint(group, run_dir: str, step: int, metrics: dict, keep_last: int) -> str:
    folder = group.call_rank0("save", run_dir, metrics)
    ckpt.apply_retention(run_dir, keep_last)
    return folder


@task(cache_policy=NO_CACHE, task_run_name="restore")
def restore_checkpoint(group, run_dir: str, resume: str) -> int:
    step = restore_newest(group, run_dir, resume)
    if step:
        get_run_logger().info("resumed from checkpoint step %d in %s", step, run_dir)
    return step


@task(cache_policy=NO_CACHE, task_run_name="evaluate-{label}")
def evaluate(group, label: str) -> dict:
    return group.call_rank0("evaluate")


@task(cache_policy=NO_CACHE)
def export_policy(group, out_dir: str) -> str:
    return group.call_rank0("export", out_dir)


def iteration_task(cfg: SiirlConfig):
    return run_iteration.with_options(retries=cfg.trainer.retries, retry_delay_seconds=1)
