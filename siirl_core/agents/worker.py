"""MultiAgentWorker: a rank of a multi-agent run. Same life cycle and checkpoint format
as RankWorker (the flow drives both alike), with one DeepSpeed engine per policy:
agents naming the same policy share it, every rank holds every policy, and each
engine reduces its gradients over all ranks."""
from __future__ import annotations

import math
import os
import socket

from siirl_core.agents.envs import build_env
from siirl_core.agents.episodes import Policy, run_episodes, schedule
from siirl_core.agents.iteration import EPISODE_NODES, EpisodeBatch, record_outcomes
from siirl_core.data import build_task
from siirl_core.metrics import MetricBag
from siirl_core.models import load_causal_lm, load_tokenizer
from siirl_core.pipeline import timed
from siirl_core.policy import TrainedPolicy
from siirl_core.rank_parts import EpisodeParts
from siirl_core.rollout.hf_engine import HFRollout
from siirl_core.worker import RankWorker


class MultiAgentWorker(RankWorker):
    batch_type = EpisodeBatch

    def setup(self) -> dict:
        cfg = self.cfg
        self._init_distributed()
        self._seed_everything(cfg.trainer.seed)
        task = build_task(cfg.task) if cfg.agents.env == "solver_verifier" else None
        self.env = build_env(cfg.agents, task)
        self.agent_names = [a.name for a in cfg.agents.agents]
        self.actors, self.policies, self.trained = {}, {}, []
        for pid in cfg.agents.trained_policies():
            tokenizer = load_tokenizer(self.model_path[pid])
            self.actors[pid] = self._build_policy_actor(pid, load_causal_lm(self.model_path[pid]))
            engine = HFRollout(self.actors[pid].module, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                               grouped=cfg.rollout.grouped_decode)
            self.policies[pid] = Policy(engine, tokenizer)
            self.trained.append(TrainedPolicy(actor=self.actors[pid], lr=cfg.policy_lr(pid),
                                              engine_dir=f"policies/{pid}/engine", name=pid, tokenizer=tokenizer,
                                              hf_dir=f"policies/{pid}/hf"))
        self.pipeline = [timed(node.name, node.fn) for node in EPISODE_NODES]
        return {"rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(),
                "parameters": sum(a.total_parameters() for a in self.actors.values()),
                "local_parameters": sum(a.local_parameters() for a in self.actors.values()),
                "policies": list(self.actors)}

    @property
    def parts(self) -> EpisodeParts:
        return EpisodeParts(cfg=self.cfg, rank=self.rank, world_size=self.world_size, env=self.env,
                            agent_names=self.agent_names, actors=self.actors, policies=self.policies)

    def _build_policy_actor(self, pid: str, module):
        from siirl_core.training.actor import DeepSpeedActor

        t, a = self.cfg.trainer, self.cfg.agents
        turns_per_episode = sum(1 for spec, _ in schedule(a.agents, a.graph, a.rounds) if spec.policy == pid)
        rows = self.cfg.samples_per_rank(self.world_size) * turns_per_episode
        updates = t.steps if a.schedule == "simultaneous" else math.ceil(t.steps / len(a.trained_policies()))
        return DeepSpeedActor(
            module, lr=self.cfg.policy_lr(pid), weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
            total_steps=updates, schedule=t.lr_schedule, zero_stage=t.zero_stage,
            micro_batch_size=t.micro_batch_size, grad_accum=math.ceil(rows / t.micro_batch_size),
            world_size=self.world_size, grad_clip=t.grad_clip, bf16=self.bf16,
            gradient_checkpointing=t.gradient_checkpointing, max_skipped_steps=t.max_skipped_steps,
            offload=t.offload)

    # --- evaluation ---------------------------------------------------------
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

    # --- checkpoints: one engine and one HF export per policy (self.trained) ---
    def _run_state(self) -> dict:
        return {}

    def _restore_run_state(self, state: dict) -> None:
        return None

    def _after_restore(self) -> None:
        return None  # the hf engines sample from the trained modules themselves

    def export(self, out_dir: str) -> str:
        """Each policy as an HF directory, out_dir/<policy id>. Every rank calls it (ZeRO-3
        gathers collectively); rank 0 writes."""
        for policy in self.trained:
            policy.export(os.path.join(out_dir, policy.name), self.rank)
        return out_dir

