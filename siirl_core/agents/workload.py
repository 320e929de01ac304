"""What a multi-agent rank's iterations do with its policies: episodes of an environment,
each agent's turns sampled by its policy's rollout engine, credit assigned, each policy
updated on its agents' turns; evaluation is greedy episodes on held-out starts. The
counterpart of siirl_core.workload.TaskWorkload (same methods)."""
from __future__ import annotations

import math

from siirl_core.agents.envs import build_env
from siirl_core.agents.episodes import run_episodes
from siirl_core.agents.iteration import EPISODE_NODES, EpisodeBatch, record_outcomes
from siirl_core.config import SiirlConfig
from siirl_core.data import build_task
from siirl_core.metrics import MetricBag
from siirl_core.pipeline import timed
from siirl_core.policy import TrainedEngine, TrainedPolicy
from siirl_core.rank_parts import EpisodeParts


class EpisodeWorkload:
    batch_type = EpisodeBatch
    # Every policy samples with siirl's own decoder over its trained module (allowed-token
    # masks, no weight sync); a vLLM engine per policy is for the agentic rollouts to come.
    rollout_backend = "hf"
    engines: tuple[TrainedEngine, ...] = ()  # no trained engine beside the policies

    @staticmethod
    def policy_layout(pid: str) -> dict[str, str]:
        """Each policy's folders in a checkpoint (policies/<id>/engine, policies/<id>/hf)
        and in an export (<id>/)."""
        return {"engine_dir": f"policies/{pid}/engine", "hf_dir": f"policies/{pid}/hf", "export_subdir": pid}

    def __init__(self, cfg: SiirlConfig, rank: int, world_size: int, device=None, bf16: bool = False):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size

    def build(self, policies: dict[str, TrainedPolicy], model_dirs: dict[str, str]) -> None:
        a = self.cfg.agents
        self.policies = policies
        self.env = build_env(a, build_task(self.cfg.task) if a.env == "solver_verifier" else None)
        self.agent_names = [spec.name for spec in a.agents]
        self.pipeline = [timed(node.name, node.fn) for node in EPISODE_NODES]

    def parts(self) -> EpisodeParts:
        return EpisodeParts(cfg=self.cfg, rank=self.rank, world_size=self.world_size, env=self.env,
                            agent_names=self.agent_names, policies=self.policies)

    def evaluate(self) -> dict:
        """Greedy episodes on held-out starts (sharded over ranks): val/accuracy is the
        environment's success rate; team and per-agent rewards beside it."""
        a = self.cfg.agents
        starts = self.env.eval_starts(a.eval_episodes)
        k = math.ceil(len(starts) / self.world_size)
        mine = starts[self.rank * k:(self.rank + 1) * k]
        bag = MetricBag()
        outcomes = []
        if mine:
            _, transcripts = run_episodes(self.env, mine, 1, a.agents, a.graph, a.rounds, self.policies,
                                          seed=self.cfg.evaluate.seed * 1_009 + self.rank, greedy=True)
            outcomes = [self.env.outcome(s, t) for s, t in zip(mine, transcripts)]
        if outcomes:
            record_outcomes(bag, "val/", self.agent_names, outcomes)
        bag.add("val/accuracy", sum(o.success for o in outcomes) / max(len(outcomes), 1), weight=len(outcomes))
        return bag.reduce()

    def run_state(self) -> dict:
        return {}  # episodes are a function of (seed, step); nothing else moves

    def restore_run_state(self, state: dict) -> None:
        return None
