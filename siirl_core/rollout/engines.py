"""The configured rollout engine, for a training rank and for the evaluation flow alike."""
from __future__ import annotations

import torch

from siirl_core.rollout.base import RolloutEngine


def build_rollout_engine(cfg, tokenizer, model_dir: str, seed: int, module: torch.nn.Module | None = None,
                         local_rank: int = 0) -> RolloutEngine:
    """rollout.backend=vllm: a vLLM engine loading `model_dir` (on CPU, pinned to this
    rank's share of the cores). hf: sampling with `module` (the trainer's own model, so
    weight sync is free), or with `model_dir` loaded when no module is given."""
    r = cfg.rollout
    if r.backend == "vllm":
        from siirl_core.distributed import cpu_cores_for
        from siirl_core.rollout.vllm_engine import VLLMRollout

        cores = None if torch.cuda.is_available() else cpu_cores_for(local_rank, cfg.cluster.threads_per_worker)
        return VLLMRollout(model_dir, eos_id=tokenizer.eos_token_id, seed=seed, kv_cache_gib=r.kv_cache_gib,
                           cpu_cores=cores, enforce_eager=r.enforce_eager)
    from siirl_core.rollout.hf_engine import HFRollout

    if module is None:
        from siirl_core.models import load_causal_lm

        module = load_causal_lm(model_dir).eval()
    return HFRollout(module, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, grouped=r.grouped_decode)
