"""Thin tasks over the rank group: each fans one control message out to every rank
and returns a small dict. Retries rebuild the group and restore the newest checkpoint
before replaying."""
from __future__ import annotations

import json
import os

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from infra.rank_group import RankFailure
from infra.worker_prep import for_ranks
from siirl_core import checkpoint as ckpt
from siirl_core.config import SiirlConfig
from siirl_core.rewards.scorer import RewardError
from siirl_core.rollout.base import ContextTooShort
from siirl_core.training.actor import NonFiniteUpdate


def record_ranks(group, run_dir: str) -> None:
    """ranks.json: which process is which rank, for operators (and the kill test)."""
    with open(os.path.join(run_dir, "ranks.json"), "w") as f:
        json.dump(group.info, f, indent=1)


def restore_newest(group, cfg: SiirlConfig, candidates: list[tuple[int, str]]) -> int:
    """Restore every rank from the first of `candidates` that loads; returns its step (0 if
    there are none). A checkpoint whose files fail their checksum on download is skipped for
    the next one."""
    if not candidates:
        return 0
    for step, folder in candidates:
        try:
            group.call("restore", for_ranks(folder), step)
            return step
        except RankFailure as err:
            if not err.caused_by(ckpt.ChecksumError):
                raise
            get_run_logger().warning("skipping checkpoint %s: %s", folder, err)
    raise FileNotFoundError(f"no loadable checkpoint in {cfg.checkpoint_root} (all failed their checksums; "
                            f"see the log)")


def recover(group, cfg: SiirlConfig, step: int, what: str) -> None:
    """After a failed attempt (a rank raised or its process died): restart every worker,
    restore every rank from the newest complete checkpoint and replay up to `step`."""
    from prefect.runtime import task_run

    logger = get_run_logger()
    group.rebuild()
    record_ranks(group, cfg.run_dir)
    logger.warning("retry %d of %s: rebuilt the rank group (%s)", task_run.run_count - 1, what,
                   ", ".join(f"rank {i['rank']} pid {i['pid']}" for i in group.info))
    candidates = ckpt.recovery_candidates(cfg.checkpoint_root, cfg.trainer.resume, step, cfg.storage.endpoint_url,
                                          world_size=cfg.cluster.n_workers)
    restored = restore_newest(group, cfg, candidates)
    logger.warning("restored every rank from checkpoint step %d, replaying steps %d..%d",
                   restored, restored + 1, step)


@task(cache_policy=NO_CACHE, task_run_name="iteration-{step}")
def run_iteration(group, step: int, cfg: SiirlConfig) -> dict:
    from prefect.runtime import task_run

    if task_run.run_count > 1:
        recover(group, cfg, step, f"iteration {step}")
    return group.call_rank0("run_until", step)


@task(cache_policy=NO_CACHE, task_run_name="checkpoint-{step}")
def save_checkpoint(group, cfg: SiirlConfig, step: int, metrics: dict) -> str:
    try:
        folder = group.call_rank0("save", for_ranks(cfg.checkpoint_root), metrics)
    except RankFailure as err:
        if cfg.storage.on_save_error == "stop" or not err.caused_by(ckpt.CheckpointSaveError):
            raise
        get_run_logger().error("checkpoint step %d not saved, training continues "
                               "(storage.on_save_error=continue): %s", step, err)
        return ""
    ckpt.apply_retention(cfg.checkpoint_root, cfg.trainer.keep_checkpoints, cfg.storage.endpoint_url)
    return folder


@task(cache_policy=NO_CACHE, task_run_name="find-checkpoint")
def find_checkpoint(cfg: SiirlConfig) -> list[tuple[int, str]]:
    """Before any compute: a storage fault or a bad trainer.resume stops the run here."""
    return ckpt.resume_candidates(cfg.checkpoint_root, cfg.trainer.resume, cfg.storage.endpoint_url,
                                  world_size=cfg.cluster.n_workers)


@task(cache_policy=NO_CACHE, task_run_name="restore")
def restore_checkpoint(group, cfg: SiirlConfig, candidates: list[tuple[int, str]]) -> int:
    step = restore_newest(group, cfg, candidates)
    if step:
        get_run_logger().info("resumed from checkpoint step %d in %s", step, cfg.checkpoint_root)
    return step


@task(cache_policy=NO_CACHE, task_run_name="evaluate-{label}")
def evaluate(group, label: str, cfg: SiirlConfig, step: int) -> dict:
    """Validation of the policy after `step`; a retry recovers the group as an iteration's does."""
    from prefect.runtime import task_run

    if task_run.run_count > 1:
        recover(group, cfg, step, f"evaluation {label}")
        if group.call_rank0("current_step") < step:
            group.call_rank0("run_until", step)
    return group.call_rank0("evaluate")


@task(cache_policy=NO_CACHE)
def export_policy(group, out_dir: str) -> str:
    return group.call_rank0("export", for_ranks(out_dir))


def worth_retrying(task, task_run, state) -> bool:
    """Prefect's retry condition: a dead rank or a fault may pass, but a failure of the
    user's reward function, a prompt too long for the context or a non-finite update would
    only fail again after a costly rebuild and replay."""
    err = state.data
    return not (isinstance(err, RankFailure) and err.caused_by((RewardError, ContextTooShort, NonFiniteUpdate)))


def retry_delays(cfg: SiirlConfig) -> list[float]:
    """trainer.retry_delay_s, doubling with each retry: an outage gets time to pass."""
    return [cfg.trainer.retry_delay_s * 2 ** i for i in range(cfg.trainer.retries)]


def iteration_task(cfg: SiirlConfig):
    return run_iteration.with_options(retries=cfg.trainer.retries, retry_delay_seconds=retry_delays(cfg) or 0,
                                      retry_condition_fn=worth_retrying)


def evaluation_task(cfg: SiirlConfig):
    return evaluate.with_options(retries=cfg.trainer.retries, retry_delay_seconds=retry_delays(cfg) or 0,
                                 retry_condition_fn=worth_retrying)
