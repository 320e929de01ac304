"""RankWorker: one per rank, owns the models, the optimizer and the rollout engine,
and runs whole iterations on its shard. It lives for the whole run (a Dask actor
in the product; a plain object in tests and scripts)."""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import socket
import tempfile

import numpy as np
import torch

from siirl_core import checkpoint as ckpt
from siirl_core.batch import IterationBatch
from siirl_core.config import SiirlConfig, from_dict, to_dict
from siirl_core.data import build_task
from siirl_core.distributed import all_gather, barrier, init_process_group, rank_device
from siirl_core.metrics import MetricBag
from siirl_core.models import load_causal_lm, load_tokenizer
from siirl_core.pipeline import resolve_pipeline, run_iteration
from siirl_core.policy import TrainedEngine, TrainedPolicy
from siirl_core.rank_parts import RankParts
from siirl_core.evaluation import evaluate_sampled, greedy_correct
from siirl_core.rollout.base import RolloutEngine, SamplingConfig
from siirl_core.rollout.engines import build_rollout_engine
from siirl_core.algorithms.kl import AdaptiveKLController, FixedKLController
from siirl_core.rewards import build_reward_scorer
from siirl_core.rng import load_rng_state, save_rng_state
from siirl_core.storage import is_remote
from siirl_core.version import code_version

log = logging.getLogger("siirl.worker")


def build_kl_controller(algo):
    if algo.kl_ctrl == "adaptive":
        return AdaptiveKLController(algo.kl_reward_coef, algo.kl_target, algo.kl_horizon)
    return FixedKLController(algo.kl_reward_coef)


class RankWorker:
    batch_type = IterationBatch  # what run_iteration hands the pipeline's nodes

    def __init__(self, cfg: dict, model_path: str | dict[str, str], rank: int, world_size: int,
                 master_addr: str = "127.0.0.1", master_port: int = 29500,
                 local_rank: int = 0, local_world_size: int = 1):
        self.cfg: SiirlConfig = from_dict(cfg)
        self.model_path = model_path  # the policy's HF directory; multi-agent: {policy id: directory}
        self.rank, self.world_size = rank, world_size
        self.local_rank, self.local_world_size = local_rank, local_world_size
        self.master = (master_addr, master_port)
        self.step = 0  # last completed step
        self._save_bytes = 0  # what this rank's last checkpoint save wrote
        stale = ckpt.remove_stale_staging()  # left by ranks killed mid-save or mid-restore
        if stale:
            log.info("removed %d staging folders of processes that no longer run: %s", len(stale), stale)

    # --- set-up -------------------------------------------------------------
    def setup(self) -> dict:
        cfg = self.cfg
        self._init_distributed()
        self._seed_everything(cfg.trainer.seed)
        self.tokenizer = load_tokenizer(self.model_path)
        self.task = build_task(cfg.task, self.tokenizer)
        self.reward = build_reward_scorer(cfg.reward, self.task)
        module = load_causal_lm(self.model_path)
        if cfg.model.lora.rank:
            from siirl_core.training.lora import apply_lora
            module = apply_lora(module, cfg.model.lora)
        self.actor = self._build_actor(module)
        self.policy = TrainedPolicy(actor=self.actor, lr=cfg.trainer.lr, engine_dir="engine", name="policy",
                                    tokenizer=self.tokenizer, hf_dir="policy")
        self.trained = [self.policy]
        self.ref_module = None
        if cfg.algorithm.kl_coef > 0 or cfg.algorithm.kl_in_reward:  # otherwise no reference model at all
            self.ref_module = load_causal_lm(self.model_path).to(self.device).eval().requires_grad_(False)
        self.rollout = self._build_rollout()
        self.critic = None
        if cfg.algorithm.adv_estimator == "gae":
            self.critic = self._build_critic()
            self.trained.append(TrainedEngine(actor=self.critic.actor, lr=cfg.critic.lr, engine_dir="critic"))
        self.kl_ctrl = build_kl_controller(cfg.algorithm)
        self.pipeline = resolve_pipeline(cfg)
        return {"rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(), "backend": self.backend,
                "device": str(self.device), "bf16": bool(self.actor.engine.bfloat16_enabled()),
                "zero_stage": self.actor.zero_stage,
                "parameters": self.actor.total_parameters(), "local_parameters": self.actor.local_parameters()}

    @property
    def parts(self) -> RankParts:
        """What this rank's pipeline nodes are given (built afresh for each iteration, so
        an engine replaced on the worker is the one they use)."""
        return RankParts(cfg=self.cfg, rank=self.rank, world_size=self.world_size, tokenizer=self.tokenizer,
                         task=self.task, reward=self.reward, actor=self.actor, rollout=self.rollout,
                         kl_ctrl=self.kl_ctrl, ref_module=self.ref_module, critic=self.critic)

    def _init_distributed(self) -> None:
        self.backend = init_process_group(self.rank, self.world_size, *self.master, local_rank=self.local_rank,
                                          local_world_size=self.local_world_size,
                                          timeout_s=self.cfg.cluster.collective_timeout_s)
        self.device = rank_device()
        if self.device.type == "cpu":
            # Gradients of the policy loss reach denormal magnitudes (below 1.2e-38) in the backward
            # pass, where the CPU slows down many-fold (the `small` benchmark model's fused
            # backward with non-zero advantages: 0.81 s kept, 0.34 s flushed; bench/decode_paths.py).
            # Flushed to zero, they change no result by more than that. Set per process: a rank
            # worker owns its process.
            torch.set_flush_denormal(True)

    @property
    def bf16(self) -> bool:
        """DeepSpeed engines train in bf16 on a GPU, in fp32 on the CPU."""
        return self.device.type == "cuda"

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _build_actor(self, module):
        from siirl_core.training.actor import DeepSpeedActor

        t = self.cfg.trainer
        return DeepSpeedActor(
            module, lr=t.lr, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
            total_steps=t.steps * t.ppo_epochs * t.mini_batches, schedule=t.lr_schedule,
            zero_stage=t.zero_stage, micro_batch_size=t.micro_batch_size,
            grad_accum=self.cfg.grad_accum(self.world_size), world_size=self.world_size, grad_clip=t.grad_clip,
            bf16=self.bf16, gradient_checkpointing=t.gradient_checkpointing, max_skipped_steps=t.max_skipped_steps,
            offload=t.offload)

    def _build_critic(self):
        from siirl_core.training.critic import Critic

        t = self.cfg.trainer
        return Critic(self.model_path, init_from_policy=self.cfg.critic.init_from_policy, lr=self.cfg.critic.lr,
                      zero_stage=t.zero_stage, micro_batch_size=t.micro_batch_size,
                      grad_accum=self.cfg.grad_accum(self.world_size),
                      world_size=self.world_size, grad_clip=t.grad_clip, bf16=self.bf16,
                      gradient_checkpointing=t.gradient_checkpointing, max_skipped_steps=t.max_skipped_steps,
                      offload=t.offload)

    def _build_rollout(self) -> RolloutEngine:
        return build_rollout_engine(self.cfg, self.tokenizer, self.model_path, self.cfg.trainer.seed,
                                    module=self.actor.module, local_rank=self.local_rank)

    # --- iterations ---------------------------------------------------------
    def run_until(self, step: int) -> dict:
        """Complete steps up to `step` (replaying after a restore) and return the reduced
        metrics of `step`. Asking again for a completed step is an error, so a retry can
        never apply an optimizer step twice."""
        if step <= self.step:
            raise RuntimeError(f"rank {self.rank}: step {step} already applied (at step {self.step})")
        metrics = {}
        while self.step < step:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            bag = run_iteration(self.parts, self.step + 1, self.pipeline, self.batch_type)
            if torch.cuda.is_available():  # what the trainer's allocator held at most (vLLM's pool aside)
                bag.add("perf/gpu_peak_mib", torch.cuda.max_memory_allocated() / 2**20, reduce="max")
            self.step += 1
            metrics = self._finish_metrics(bag)
        return metrics

    def _finish_metrics(self, bag: MetricBag) -> dict:
        m = bag.reduce()
        it = m.get("timing_s/iteration", 0.0) or float("nan")
        m["perf/rollout_tokens_per_s"] = m.get("perf/rollout_tokens", 0) / max(m.get("timing_s/rollout", 0), 1e-9)
        m["perf/train_tokens_per_s"] = m.get("perf/train_tokens", 0) / max(m.get("timing_s/update", 0), 1e-9)
        m["perf/tokens_per_s"] = (m.get("perf/rollout_tokens", 0) + m.get("perf/train_tokens", 0)) / it
        return m

    # --- evaluation ---------------------------------------------------------
    def evaluate(self) -> dict:
        """Greedy exact-match accuracy on the held-out set (sharded over ranks); with
        evaluate.during_training, also mean@n, best@n, maj@n and pass@k per data source."""
        problems = self.task.eval_set()
        k = math.ceil(len(problems) / self.world_size)
        mine = problems[self.rank * k:(self.rank + 1) * k]
        bag = MetricBag()
        if mine:
            correct = greedy_correct(self.rollout, self.tokenizer, self.task, mine, self.cfg.rollout.max_new_tokens)
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
        results = evaluate_sampled(self.rollout, self.tokenizer, self.task, mine, sampling, ev.pass_k,
                                   ev.seed * 1_009 + self.rank) if mine else {}
        # Every rank adds every source's keys (weight 0 where it has none), so the
        # cross-rank reduction sees the same keys everywhere.
        for source in sources:
            scores, count = results.get(source, ({}, 0))
            for name in [f"mean@{ev.n}", f"best@{ev.n}", f"maj@{ev.n}"] + [f"pass@{k}" for k in ev.pass_k]:
                bag.add(f"val/{source}/{name}", scores.get(name, 0.0), weight=float(count))

    # --- checkpoints --------------------------------------------------------
    def save(self, root_uri: str, metrics: dict) -> str:
        """Every rank stages and uploads its own files; rank 0 writes the manifest last,
        only when every rank's upload succeeded."""
        st = self.cfg.storage
        folder = ckpt.step_dir(root_uri, self.step)
        # Agreed before anything is written: a disk too full for this save stops it cleanly.
        short = [s for s in all_gather(self._space_shortage(folder)) if s]
        if short:
            raise ckpt.CheckpointSaveError(f"checkpoint step {self.step} not started: {short[0]}; earlier "
                                           "checkpoints are untouched")
        staging = ckpt.staging_dir("save", self.step, self.rank)
        try:
            self._stage_models(staging)
            save_rng_state(os.path.join(staging, f"rng_rank{self.rank}.safetensors"))
            if self.rank == 0:
                with open(os.path.join(staging, "state.json"), "w") as f:
                    # Prompts are a function of (seed, step): the next step is the data position.
                    json.dump({"step": self.step, "next_data_step": self.step + 1, **self._run_state()}, f)
            try:
                files = ckpt.upload_folder(staging, folder, st.endpoint_url, st.retries,
                                           backoff_s=st.retry_backoff_s)
                error = ""
                self._save_bytes = sum(meta["size"] for meta in files.values())
            except OSError as err:
                files, error = {}, str(err)
            results = all_gather(files if not error else error)
            errors = [(r, e) for r, e in enumerate(results) if isinstance(e, str)]
            if errors:
                rank, err = errors[0]
                raise ckpt.CheckpointSaveError(f"saving checkpoint step {self.step} to {folder} failed on rank {rank}: "
                                          f"{err}; earlier checkpoints are untouched")
            if self.rank == 0:
                merged = {k: v for part in results for k, v in part.items()}
                ckpt.write_manifest(folder, self.step, self.world_size, merged, to_dict(self.cfg), metrics,
                                    code_version(), st.endpoint_url, st.retries, st.retry_backoff_s)
            barrier()
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def _space_shortage(self, folder: str) -> str:
        """Why this rank's next save would not fit ("" when it would): about what its last
        save wrote (unknown before the first), once for staging and, with local storage,
        once more for the checkpoint itself (twice on one disk)."""
        if not self._save_bytes:
            return ""
        paths = [tempfile.gettempdir()] + ([] if is_remote(folder) else [folder])
        problem = ckpt.space_shortage(paths, int(self._save_bytes * 1.1))
        return f"rank {self.rank}: {problem}" if problem else ""

    def _run_state(self) -> dict:
        """What state.json keeps beside the step: the adaptive KL coefficient moves every
        step, and a replay must start where it was."""
        return {"kl_reward_coef": self.kl_ctrl.value}

    def _restore_run_state(self, state: dict) -> None:
        self.kl_ctrl.value = state.get("kl_reward_coef", self.kl_ctrl.value)

    def _stage_models(self, staging: str) -> None:
        """Every engine's state (each rank its shards) and each policy as an HF directory."""
        for part in self.trained:
            part.stage(staging, self.rank)

    def _is_engine_file(self, rel: str) -> bool:
        return any(part.owns(rel) for part in self.trained)

    def _load_models(self, staging: str) -> None:
        for part in self.trained:
            part.load(staging)

    def _wanted(self, rel: str) -> bool:
        # This rank's optimizer shard and RNG, plus what every rank loads (model states).
        if "zero_pp_rank_" in rel:
            return f"zero_pp_rank_{self.rank}_" in rel
        if rel.startswith("rng_rank"):
            return rel == f"rng_rank{self.rank}.safetensors"
        return self._is_engine_file(rel) or rel == "state.json"

    def restore(self, folder: str, step: int) -> int:
        st = self.cfg.storage
        manifest = ckpt.read_manifest(folder, st.endpoint_url)
        if manifest is None:
            raise FileNotFoundError(f"checkpoint {folder} is incomplete")
        error = ckpt.world_size_error(manifest, folder, self.world_size)
        if error:
            raise ValueError(error)
        staging = ckpt.staging_dir("restore", step, self.rank)
        try:
            failure = None
            try:
                ckpt.download(folder, manifest, staging, self._wanted, st.endpoint_url)
            except (OSError, ckpt.ChecksumError) as err:
                failure = (type(err), f"rank {self.rank}: {err}")
            # Agree before DeepSpeed's collective load: all ranks load or none does.
            failures = [f for f in all_gather(failure) if f]
            if failures:  # every rank raises the first failure, as its own type
                kind, message = failures[0]
                raise kind(message)
            self._load_models(staging)
            load_rng_state(os.path.join(staging, f"rng_rank{self.rank}.safetensors"))
            with open(os.path.join(staging, "state.json")) as f:
                self._restore_run_state(json.load(f))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._after_restore()
        self.step = step
        return step

    def _after_restore(self) -> None:
        self.rollout.sync_weights(self.actor.named_weights())

    def export(self, out_dir: str) -> str:
        """The policy as an HF-format directory (loads in transformers and vLLM). Every
        rank must call it (ZeRO-3 gathers parameters collectively); rank 0 writes."""
        return self.policy.export(out_dir, self.rank)

    def current_step(self) -> int:
        return self.step
