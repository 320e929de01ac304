"""What a single-agent rank's iterations do with its one policy: prompts from a task,
scored by a reward, optionally against a frozen reference and with a critic (GAE), through
the configured pipeline; evaluation is greedy accuracy on the task's held-out set.

A rank worker holds its policies and one workload: this one, or a multi-agent run's
agents.workload.EpisodeWorkload. Both offer the same methods."""
from __future__ import annotations

import math

import torch

from siirl_core.algorithms.kl import AdaptiveKLController, FixedKLController
from siirl_core.batch import IterationBatch
from siirl_core.config import SINGLE_POLICY, SiirlConfig
from siirl_core.data import build_task
from siirl_core.evaluation import evaluate_sampled, greedy_correct
from siirl_core.metrics import MetricBag
from siirl_core.models import load_causal_lm
from siirl_core.pipeline import resolve_pipeline
from siirl_core.policy import TrainedEngine, TrainedPolicy
from siirl_core.rank_parts import RankParts
from siirl_core.rewards import build_reward_scorer
from siirl_core.rollout.base import SamplingConfig


def build_kl_controller(algo):
    if algo.kl_ctrl == "adaptive":
        return AdaptiveKLController(algo.kl_reward_coef, algo.kl_target, algo.kl_horizon)
    return FixedKLController(algo.kl_reward_coef)


class TaskWorkload:
    batch_type = IterationBatch  # what run_iteration hands the pipeline's nodes

    def __init__(self, cfg: SiirlConfig, rank: int, world_size: int, device: torch.device, bf16: bool):
        self.cfg, self.rank, self.world_size, self.device, self.bf16 = cfg, rank, world_size, device, bf16

    @property
    def rollout_backend(self) -> str:
        return self.cfg.rollout.backend

    @staticmethod
    def policy_layout(pid: str) -> dict[str, str]:
        """The policy's folders in a checkpoint ("engine", "policy") and where an export
        puts it (the export folder itself)."""
        return {"engine_dir": "engine", "hf_dir": "policy", "export_subdir": ""}

    def build(self, policies: dict[str, TrainedPolicy], model_dirs: dict[str, str]) -> None:
        """The task, reward, reference model, critic and KL controller around the policy."""
        cfg = self.cfg
        self.policy = policies[SINGLE_POLICY]
        model_dir = model_dirs[SINGLE_POLICY]
        self.task = build_task(cfg.task, self.policy.tokenizer)
        self.reward = build_reward_scorer(cfg.reward, self.task)
        self.ref_module = None
        if cfg.algorithm.kl_coef > 0 or cfg.algorithm.kl_in_reward:  # otherwise no reference model at all
            self.ref_module = load_causal_lm(model_dir).to(self.device).eval().requires_grad_(False)
        self.critic = self.build_critic(model_dir) if cfg.algorithm.adv_estimator == "gae" else None
        self.kl_ctrl = build_kl_controller(cfg.algorithm)
        self.pipeline = resolve_pipeline(cfg)

    def build_critic(self, model_dir: str):
        from siirl_core.training.critic import Critic

        t = self.cfg.trainer
        return Critic(model_dir, init_from_policy=self.cfg.critic.init_from_policy, lr=self.cfg.critic.lr,
                      zero_stage=t.zero_stage, micro_batch_size=t.micro_batch_size,
                      grad_accum=self.cfg.grad_accum(self.world_size),
                      world_size=self.world_size, grad_clip=t.grad_clip, bf16=self.bf16,
                      gradient_checkpointing=t.gradient_checkpointing, max_skipped_steps=t.max_skipped_steps,
                      offload=t.offload)

    @property
    def engines(self) -> list[TrainedEngine]:
        """Trained engines beside the policy, each with its own checkpoint folder."""
        if self.critic is None:
            return []
        return [TrainedEngine(actor=self.critic.actor, lr=self.cfg.critic.lr, engine_dir="critic")]

    def parts(self) -> RankParts:
        p = self.policy
        return RankParts(cfg=self.cfg, rank=self.rank, world_size=self.world_size, tokenizer=p.tokenizer,
                         task=self.task, reward=self.reward, actor=p.actor, rollout=p.rollout,
                         kl_ctrl=self.kl_ctrl, ref_module=self.ref_module, critic=self.critic)

    # --- evaluation ---------------------------------------------------------
    def evaluate(self) -> dict:
        """Greedy exact-match accuracy on the held-out set (sharded over ranks); with
        evaluate.during_training, also mean@n, best@n, maj@n and pass@k per data source."""
        problems = self.task.eval_set()
        k = math.ceil(len(problems) / self.world_size)
        mine = problems[self.rank * k:(self.rank + 1) * k]
        bag = MetricBag()
        if mine:
            correct = greedy_correct(self.policy.rollout, self.policy.tokenizer, self.task, mine,
                                     self.cfg.rollout.max_new_tokens)
            bag.add("val/accuracy", correct / len(mine), weight=len(mine))
        else:
            bag.add("val/accuracy", 0.0, weight=0.0)
        if self.cfg.evaluate.during_training:
            sources = sorted({p.data_source or self.task.name for p in problems})
            self._sampled_validation(mine, sources, bag)
        return bag.reduce()

    def _sampled_validation(self, mine: list, sources: list[str], bag: MetricBag) -> None:
        ev = self.cfg.evaluate
        sampling = SamplingConfig(n=ev.n, temperature=ev.temperature, top_p=ev.top_p,
                                  max_new_tokens=self.cfg.rollout.max_new_tokens)
        results = evaluate_sampled(self.policy.rollout, self.policy.tokenizer, self.task, mine, sampling, ev.pass_k,
                                   ev.seed * 1_009 + self.rank) if mine else {}
        # Every rank adds every source's keys (weight 0 where it has none), so the
        # cross-rank reduction sees the same keys everywhere.
        for source in sources:
            scores, count = results.get(source, ({}, 0))
            for name in [f"mean@{ev.n}", f"best@{ev.n}", f"maj@{ev.n}"] + [f"pass@{k}" for k in ev.pass_k]:
                bag.add(f"val/{source}/{name}", scores.get(name, 0.0), weight=float(count))

    # --- what state.json keeps beside the step ------------------------------
    def run_state(self) -> dict:
        """The adaptive KL coefficient moves every step, and a replay must start where it was."""
        return {"kl_reward_coef": self.kl_ctrl.value}

    def restore_run_state(self, state: dict) -> None:
        self.kl_ctrl.value = state.get("kl_reward_coef", self.kl_ctrl.value)
