"""Rewards: a registry of rule rewards with verl's signature, user functions by path,
and a scorer that runs them with timeouts and error handling."""
from __future__ import annotations

from siirl_core.rewards.builtin import REWARDS, exact_match, extract_numeric_answer
from siirl_core.rewards.scorer import RewardError, RewardScorer, Scored, add_format_bonus
from siirl_core.rewards.user import RewardFunctionError, load_reward_function


def build_reward_scorer(reward_cfg, task) -> RewardScorer:
    """The scorer for reward.function ("auto": the task's own verifier)."""
    name = task.default_reward if reward_cfg.function == "auto" else reward_cfg.function
    fn = load_reward_function(name, reward_cfg.batched, reward_cfg.kwargs)
    return RewardScorer(fn, name, reward_cfg.kwargs, reward_cfg.batched, reward_cfg.timeout_s,
                        reward_cfg.on_error, reward_cfg.error_score, reward_cfg.max_error_rate,
                        reward_cfg.max_error_batches, reward_cfg.threads)

__all__ = ["build_reward_scorer", "REWARDS", "RewardError", "RewardFunctionError", "RewardScorer", "Scored", "add_format_bonus", "exact_match", "extract_numeric_answer",
           "load_reward_function"]
