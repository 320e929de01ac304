"""Which rank worker a config needs. It sits above both worker modules, so the base
worker does not import its multi-agent subclass."""
from __future__ import annotations


def worker_class(cfg: dict):
    """MultiAgentWorker when the config names an environment, RankWorker otherwise
    (imported here, not at the top: each pulls in the rollout and training engines)."""
    if cfg.get("agents", {}).get("env"):
        from siirl_core.agents.worker import MultiAgentWorker
        return MultiAgentWorker
    from siirl_core.worker import RankWorker
    return RankWorker
