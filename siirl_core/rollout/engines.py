"""The configured rollout engine, for a training rank and for the evaluation flow alike."""
from __future__ import annotations

import json
import os

import torch

from siirl_core.precision import rollout_dtype
from siirl_core.rollout.base import RolloutEngine


def build_rollout_engine(cfg, tokenizer, model_dir: str, seed: int, module: torch.nn.Module | None = None,
                         local_rank: int = 0, backend: str | None = None) -> RolloutEngine:
    """rollout.backend (or `backend`) vllm: a vLLM engine loading `model_dir` (on CPU,
    pinned to this rank's share of the cores). hf: sampling with `module` (the trainer's
    own model, so weight sync is free), or with `model_dir` loaded when no module is given."""
    r = cfg.rollout
    if (backend or r.backend) == "vllm":
        from siirl_core.distributed import cpu_cores_for
        from siirl_core.rollout.vllm_engine import VLLMRollout

        cores = None if torch.cuda.is_available() else cpu_cores_for(local_rank, cfg.cluster.threads_per_worker)
        return VLLMRollout(model_dir, eos_id=tokenizer.eos_token_id, seed=seed, kv_cache_gib=r.kv_cache_gib,
                           dtype=rollout_dtype(cfg.trainer.precision),
                           lora_rank=cfg.model.lora.rank if r.lora_sync == "adapters" else 0,
                           cpu_cores=cores, enforce_eager=r.enforce_eager,
                           max_model_len=rollout_positions(r.max_model_len, model_positions_of(model_dir)),
                           sleep_during_update=r.sleep_during_update)
    from siirl_core.rollout.hf_engine import HFRollout

    if module is None:
        from siirl_core.models import load_causal_lm

        module = load_causal_lm(model_dir).eval()
    return HFRollout(module, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, grouped=r.grouped_decode,
                     max_positions=rollout_positions(r.max_model_len, model_positions_of(model_dir)))


# Planned positions per sequence when rollout.max_model_len is 0: a model's whole context
# (32768 and more for real families) would make vLLM reserve KV cache for it.
DEFAULT_MAX_MODEL_LEN = 2048


def model_positions_of(model_dir: str) -> int | None:
    """max_position_embeddings of an HF model directory's config.json (None when the file
    or the field is absent; an unreadable or malformed file is an error)."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            return json.load(f).get("max_position_embeddings")
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON ({err})") from None


def rollout_positions(max_model_len: int, model_positions: int | None) -> int:
    """Positions per sequence the rollout plans for: rollout.max_model_len, or the model's
    context capped at DEFAULT_MAX_MODEL_LEN."""
    if max_model_len:
        return max_model_len
    return min(model_positions or DEFAULT_MAX_MODEL_LEN, DEFAULT_MAX_MODEL_LEN)
