"""Credit assignment for multi-agent episodes: who gets which advantage.

Pure functions over [E] / [E, A] tensors (E episodes, A agents). The outcome estimator
(grpo, dr_grpo, rloo) does the normalising, over the episodes of the same start.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from siirl_core.algorithms.registry import Registry

CREDIT_ASSIGNMENTS = Registry("credit assignment")
# Estimators that need only an outcome per sample and its group.
OUTCOME_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline")


def _outcome(estimator: Callable, scores: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """The estimator on one-step episodes: each score is its own (single) token reward."""
    mask = torch.ones(len(scores), 1)
    extra = {"token_rewards": scores[:, None]} if "token_rewards" in inspect.signature(estimator).parameters else {}
    return estimator(scores, group_index, mask, **extra)[:, 0]  # [E]


@CREDIT_ASSIGNMENTS.register("per_agent")
def per_agent_credit(rewards: torch.Tensor, team: torch.Tensor, group_index: torch.Tensor,
                     estimator: Callable) -> torch.Tensor:
    """Each agent's own reward, normalised per agent over the episodes of one start:
    rewards [E, A] -> advantages [E, A]."""
    return torch.stack([_outcome(estimator, rewards[:, a], group_index) for a in range(rewards.shape[1])], dim=1)


@CREDIT_ASSIGNMENTS.register("team")
def team_credit(rewards: torch.Tensor, team: torch.Tensor, group_index: torch.Tensor,
                estimator: Callable) -> torch.Tensor:
    """The team reward's advantage, the same for every agent of an episode: [E] -> [E, A]."""
    return _outcome(estimator, team, group_index)[:, None].expand(-1, rewards.shape[1]).clone()
