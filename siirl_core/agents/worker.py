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
from siirl_core.agents.iteration import node_credit, node_episodes, node_update, record_outcomes
from siirl_core.data import build_task
from siirl_core.metrics import MetricBag
from siirl_core.models import load_causal_lm, load_tokenizer
from siirl_core.pipeline import timed
from siirl_core.worker import RankWorker, build_kl_controller

MA_PIPELINE = (("episodes", node_episodes), ("credit", node_credit), ("update", node_update))


def trainable_policies(agents_cfg) -> list[str]:
    """Policy ids in order of first use, scripted players excluded."""
    out: list[str] = []
    for a in agents_cfg.agents:
        if a.policy != "scripted" and a.policy not in out:
            out.append(a.policy)
    return out


class MultiAgentWorker(RankWorker):
    def setup(self) -> dict:
        cfg = self.cfg
        self._init_distributed()
        self._seed_everything(cfg.trainer.seed)
        task = build_task(cfg.task) if cfg.agents.env == "solver_verifier" else None
        self.env = build_env(cfg.agents, task)
        self.agent_names = [a.name for a in cfg.agents.agents]
        self.actors, self.policies = {}, {}
        for pid in trainable_policies(cfg.agents):
            tokenizer = load_tokenizer(self.model_path[pid])
            self.actors[pid] = self._build_policy_actor(pid, load_causal_lm(self.model_path[pid]))
            self.policies[pid] = Policy(self.actors[pid].module, tokenizer)
        self.tokenizer = self.policies[trainable_policies(cfg.agents)[0]].tokenizer
        self.kl_ctrl = build_kl_controller(cfg.algorithm)  # unused; keeps state.json's shape
        self.critic = None
        self.pipeline = [timed(name, fn) for name, fn in MA_PIPELINE]
        return {"rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(),
                "parameters": sum(a.total_parameters() for a in self.actors.values()),
                "local_parameters": sum(a.local_parameters() for a in self.actors.values()),
                "policies": list(self.actors)}

    def _build_policy_actor(self, pid: str, module):
        from siirl_core.training.actor import DeepSpeedActor

        t, a = self.cfg.trainer, self.cfg.agents
        turns_per_episode = sum(1 for spec, _ in schedule(a.agents, a.graph, a.rounds) if spec.policy == pid)
        rows = self.cfg.samples_per_rank(self.world_size) * turns_per_episode
        updates = t.steps if a.schedule == "simultaneous" else math.ceil(t.steps / len(trainable_policies(a)))
        return DeepSpeedActor(
            module, lr=self.cfg.policy_lr(pid), weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
            total_steps=updates, schedule=t.lr_schedule, zero_stage=t.zero_stage,
            micro_batch_size=t.micro_batch_size, grad_accum=math.ceil(rows / t.micro_batch_size),
            world_size=self.world_size, grad_clip=t.grad_clip, bf16=self.bf16)

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

    # --- checkpoints: one engine and one HF export per policy -----------------
    def _stage_models(self, staging: str) -> None:
        for pid, actor in self.actors.items():
            actor.engine.save_checkpoint(os.path.join(staging, "policies", pid, "engine"), tag="state")
        self.export(os.path.join(staging, "policies"), subdir="hf")

    def _is_engine_file(self, rel: str) -> bool:
        return rel.startswith("policies/") and rel.split("/")[2:3] == ["engine"]

    def _load_models(self, staging: str) -> None:
        for pid, actor in self.actors.items():
            actor.engine.load_checkpoint(os.path.join(staging, "policies", pid, "engine"), tag="state",
                                         load_optimizer_states=True, load_lr_scheduler_states=True)
            actor.set_base_lr(self.cfg.policy_lr(pid))

    def _after_restore(self) -> None:
        return None  # episodes sample from the trained modules themselves

    def export(self, out_dir: str, subdir: str = "") -> str:
        """Each policy as an HF directory, out_dir/<policy id>[/subdir]. Every rank calls
        it (ZeRO-3 gathers collectively); rank 0 writes."""
        for pid, actor in self.actors.items():
            state = dict(actor.named_weights())
            if self.rank == 0:
                target = os.path.join(out_dir, pid, subdir) if subdir else os.path.join(out_dir, pid)
                os.makedirs(target, exist_ok=True)
                actor.module.save_pretrained(target, state_dict=state, safe_serialization=True)
                self.policies[pid].tokenizer.save_pretrained(target)
        return out_dir

