from siirl_core.rollout.base import RolloutBatch, RolloutEngine, SamplingConfig

__all__ = ["RolloutBatch", "RolloutEngine", "SamplingConfig"]
