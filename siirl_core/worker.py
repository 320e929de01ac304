"""RankWorker: one per rank, for single-agent and multi-agent runs alike. It owns the
rank's policies (one, or one per agent policy: training engine, rollout engine,
tokenizer, checkpoint folders) and a workload (what an iteration does with them: a
task's prompts, or an environment's episodes), and runs whole iterations on its shard.
It lives for the whole run (a Dask actor in the product; a plain object in tests and
scripts)."""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import socket
import tempfile

import numpy as np
import torch

from siirl_core import checkpoint as ckpt
from siirl_core import precision
from siirl_core.config import SINGLE_POLICY, SiirlConfig, from_dict, to_dict
from siirl_core.distributed import all_gather, barrier, init_process_group, rank_device
from siirl_core.metrics import MetricBag
from siirl_core.models import load_causal_lm, load_tokenizer
from siirl_core.pipeline import run_iteration
from siirl_core.policy import TrainedPolicy
from siirl_core.rollout.engines import build_rollout_engine
from siirl_core.rng import load_rng_state, save_rng_state
from siirl_core.storage import is_remote
from siirl_core.version import code_version

log = logging.getLogger("siirl.worker")


def model_dirs_by_policy(cfg: SiirlConfig, model_path: str | dict[str, str]) -> dict[str, str]:
    """{policy id: HF directory}; a single directory stands for a single-agent run's policy."""
    ids = cfg.policy_ids()
    dirs = {SINGLE_POLICY: model_path} if isinstance(model_path, str) else dict(model_path)
    missing = [pid for pid in ids if pid not in dirs]
    if missing:
        raise ValueError(f"no model directory for policies {missing}; got directories for {sorted(dirs)}")
    return {pid: dirs[pid] for pid in ids}


def build_workload(cfg: SiirlConfig, rank: int, world_size: int, device, bf16: bool):
    """An environment's episodes when the config names one, the task's prompts otherwise
    (imported here: each pulls in its own nodes)."""
    if cfg.agents.env:
        from siirl_core.agents.workload import EpisodeWorkload
        return EpisodeWorkload(cfg, rank, world_size, device, bf16)
    from siirl_core.workload import TaskWorkload
    return TaskWorkload(cfg, rank, world_size, device, bf16)


class RankWorker:
    def __init__(self, cfg: dict, model_path: str | dict[str, str], rank: int, world_size: int,
                 master_addr: str = "127.0.0.1", master_port: int = 29500,
                 local_rank: int = 0, local_world_size: int = 1):
        self.cfg: SiirlConfig = from_dict(cfg)
        self.model_dirs = model_dirs_by_policy(self.cfg, model_path)
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
        self.work = build_workload(cfg, self.rank, self.world_size, self.device, self.bf16)
        self.policies = {pid: self._build_policy(pid, path) for pid, path in self.model_dirs.items()}
        self.work.build(self.policies, self.model_dirs)
        self.trained = [*self.policies.values(), *self.work.engines]  # what a checkpoint holds
        actors = [p.actor for p in self.policies.values()]
        return {"rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(), "backend": self.backend,
                "device": str(self.device), "bf16": bool(actors[0].engine.bfloat16_enabled()),
                "bf16_autocast": precision.cpu_autocast(cfg.trainer.precision, self.device),
                "native_bf16_cpu": precision.native_bf16_cpu(),
                "zero_stage": actors[0].zero_stage, "policies": list(self.policies),
                "parameters": sum(a.total_parameters() for a in actors),
                "local_parameters": sum(a.local_parameters() for a in actors),
                "malloc_trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_")}

    def _build_policy(self, pid: str, model_dir: str) -> TrainedPolicy:
        """Policy `pid`: its tokenizer, its model (LoRA-wrapped when configured) in a
        DeepSpeed engine, and the rollout engine that samples from it."""
        cfg = self.cfg
        tokenizer = load_tokenizer(model_dir)
        module = load_causal_lm(model_dir)
        if cfg.model.lora.rank:
            from siirl_core.training.lora import apply_lora
            module = apply_lora(module, cfg.model.lora)
        actor = self._build_actor(pid, module)
        rollout = build_rollout_engine(cfg, tokenizer, model_dir, cfg.trainer.seed, module=actor.module,
                                       local_rank=self.local_rank, backend=self.work.rollout_backend)
        return TrainedPolicy(actor=actor, lr=cfg.policy_lr(pid), name=pid, tokenizer=tokenizer, rollout=rollout,
                             **self.work.policy_layout(pid))

    @property
    def parts(self):
        """What this rank's pipeline nodes are given (built afresh for each iteration, so
        an engine replaced on the worker is the one they use)."""
        return self.work.parts()

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
        """DeepSpeed engines train in bf16 on a GPU (unless trainer.precision=fp32), in fp32
        on the CPU (where trainer.precision=bf16 autocasts the passes instead)."""
        return precision.deepspeed_bf16(self.cfg.trainer.precision, self.device)

    def _compute(self):
        return precision.compute(self.cfg.trainer.precision, self.device)

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _build_actor(self, pid: str, module):
        from siirl_core.training.actor import DeepSpeedActor

        t = self.cfg.trainer
        return DeepSpeedActor(
            module, lr=self.cfg.policy_lr(pid), weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
            total_steps=self.cfg.policy_optimizer_steps(pid), schedule=t.lr_schedule,
            zero_stage=t.zero_stage, micro_batch_size=t.micro_batch_size,
            grad_accum=self.cfg.policy_grad_accum(pid, self.world_size), world_size=self.world_size,
            grad_clip=t.grad_clip, bf16=self.bf16, gradient_checkpointing=t.gradient_checkpointing,
            max_skipped_steps=t.max_skipped_steps, offload=t.offload)

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
            with self._compute():
                bag = run_iteration(self.parts, self.step + 1, self.work.pipeline, self.work.batch_type)
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
        """The workload's held-out evaluation (greedy task accuracy, or greedy episodes'
        success rate), sharded over ranks and reduced."""
        with self._compute():
            return self.work.evaluate()

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
                    json.dump({"step": self.step, "next_data_step": self.step + 1, **self.work.run_state()}, f)
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
                self.work.restore_run_state(json.load(f))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for policy in self.policies.values():
            policy.sync_rollout()
        self.step = step
        return step

    def export(self, out_dir: str) -> str:
        """Each policy as an HF-format directory (loads in transformers and vLLM): a single
        policy into out_dir, a team's into out_dir/<policy id>. Every rank must call it
        (ZeRO-3 gathers parameters collectively); rank 0 writes."""
        for policy in self.policies.values():
            policy.export(os.path.join(out_dir, policy.export_subdir), self.rank)
        return out_dir

    def current_step(self) -> int:
        return self.step
