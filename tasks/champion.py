"""Tasks of scheduled retraining: find the policy to start from, and record the verdict."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from siirl_core import champion, retraining
from siirl_core.config import SiirlConfig


@task(cache_policy=NO_CACHE)
def starting_point(cfg: SiirlConfig) -> dict:
    """{"kind": champion|newest|warm_start, "folder", "step"} (siirl_core.retraining)."""
    return retraining.starting_point(cfg.checkpoint_root, cfg.storage.endpoint_url)


@task(cache_policy=NO_CACHE)
def record_verdict(cfg: SiirlConfig, decision: dict) -> None:
    champion.record_decision(cfg.checkpoint_root, decision, cfg.storage.endpoint_url)
    logger = get_run_logger()
    c, k = decision["champion"], decision["candidate"]
    verdict = "PROMOTED" if decision["promoted"] else "rejected"
    logger.info("candidate %s (accuracy %.3f) vs champion %s (accuracy %.3f), margin %.3f: %s",
                k["folder"], k["score"], c["folder"] or "warm start", c["score"], decision["margin"], verdict)
