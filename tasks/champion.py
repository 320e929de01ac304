"""Tasks of scheduled retraining: find the policy to start from, and record the verdict."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from siirl_core import checkpoint as ckpt
from siirl_core import champion
from siirl_core.config import SiirlConfig


@task(cache_policy=NO_CACHE)
def starting_point(cfg: SiirlConfig) -> dict:
    """{"kind": champion|newest|warm_start, "folder", "step"}: the champion when there is
    one, else the newest complete checkpoint, else the warm-start policy (step 0)."""
    root, ep = cfg.checkpoint_root, cfg.storage.endpoint_url
    current = champion.read_champion(root, ep)
    if current is not None:
        if ckpt.verify(current["folder"], ep) is None:
            raise FileNotFoundError(f"the champion recorded in {root}/{champion.CHAMPION} ({current['folder']}) "
                                    "is not a complete checkpoint (see the log); restore it or remove the pointer")
        return {"kind": "champion", "folder": current["folder"], "step": current["step"]}
    complete = ckpt.complete_checkpoints(root, ep)
    if complete:
        step, folder = complete[-1]
        return {"kind": "newest", "folder": folder, "step": step}
    return {"kind": "warm_start", "folder": "", "step": 0}


@task(cache_policy=NO_CACHE)
def record_verdict(cfg: SiirlConfig, decision: dict) -> None:
    champion.record_decision(cfg.checkpoint_root, decision, cfg.storage.endpoint_url)
    logger = get_run_logger()
    c, k = decision["champion"], decision["candidate"]
    verdict = "PROMOTED" if decision["promoted"] else "rejected"
    logger.info("candidate %s (accuracy %.3f) vs champion %s (accuracy %.3f), margin %.3f: %s",
                k["folder"], k["score"], c["folder"] or "warm start", c["score"], decision["margin"], verdict)
