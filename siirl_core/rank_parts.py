"""What an iteration's nodes work with on a rank. Every node is `node(parts, batch, bag)`:
the parts are the configuration, the rank's place and the engines the iteration uses;
the worker's checkpoints, process group and step counter are out of the nodes' reach."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from siirl_core.config import SiirlConfig
from siirl_core.rollout.base import RolloutEngine


@dataclass(frozen=True)
class RankParts:
    """A single-agent rank's parts (workload.TaskWorkload.parts)."""

    cfg: SiirlConfig
    rank: int
    world_size: int
    tokenizer: Any
    task: Any  # data.Task: the prompts for (seed, step) and the held-out set
    reward: Any  # rewards.RewardScorer
    actor: Any  # training.actor.DeepSpeedActor: the policy being trained
    rollout: RolloutEngine
    kl_ctrl: Any  # the KL-in-reward coefficient (fixed or adaptive); moves every step
    ref_module: Optional[torch.nn.Module] = None  # the frozen reference policy (KL), when used
    critic: Any = None  # training.critic.Critic for GAE


@dataclass(frozen=True)
class EpisodeParts:
    """A multi-agent rank's parts (agents.workload.EpisodeWorkload.parts): every policy
    that plays, with its training engine, rollout engine and tokenizer."""

    cfg: SiirlConfig
    rank: int
    world_size: int
    env: Any  # agents.envs: starts, scripted moves, outcomes
    agent_names: list[str]
    policies: dict[str, Any]  # policy id -> policy.TrainedPolicy (actor, rollout, tokenizer)
