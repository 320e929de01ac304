"""What a run holds in memory on one machine at the least, from the model's parameter count
and the configuration, so that a model too large for the machine is refused before
anything loads (with the estimate), not killed by the kernel's OOM killer mid-start.
Activations come on top; the estimate is a floor, not a forecast."""
from __future__ import annotations

import os

GIB = 1024 ** 3
FP32 = 4


def parameter_count(cfg) -> int | None:
    """Parameters of the configured policy (None when it cannot be known before loading)."""
    from siirl_core.models.shapes import REAL_SHAPES
    from siirl_core.models.shapes import parameter_count as shape_count

    if not cfg.model.path:
        return shape_count(cfg.model.size) if cfg.model.size in REAL_SHAPES else None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(cfg.model.path)  # a broken config.json is an error here
    with torch.device("meta"):  # the shapes only, no memory
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def lora_parameters(cfg, parameters: int) -> int:
    """An upper bound of the adapters' size: 2 r (d_in + d_out) per targeted projection is
    under 2 r / d of the base per layer; 1% of the base covers every rank up to 64 on
    the real shapes here."""
    return max(1, parameters // 100) if cfg.model.lora.rank else 0


def estimate(cfg, parameters: int) -> dict[str, float]:
    """Bytes per part, for all ranks on this machine (cluster=local)."""
    ranks = cfg.cluster.n_workers
    trainable = lora_parameters(cfg, parameters) or parameters
    zero_shards = ranks if cfg.trainer.zero_stage >= 1 and ranks > 1 else 1
    parts = {
        "policy weights": FP32 * parameters * ranks / (ranks if cfg.trainer.zero_stage == 3 else 1),
        "gradients": FP32 * trainable * ranks / (zero_shards if cfg.trainer.zero_stage >= 2 else 1),
        "Adam state": 2 * FP32 * trainable * ranks / zero_shards,
    }
    if cfg.algorithm.kl_coef > 0 or cfg.algorithm.kl_in_reward:
        parts["reference model"] = FP32 * parameters * ranks
    if cfg.rollout.backend == "vllm":
        parts["vLLM weights"] = (2 if cfg.trainer.precision == "bf16" else FP32) * parameters * ranks
        parts["vLLM KV cache"] = cfg.rollout.kv_cache_gib * GIB * ranks
    if cfg.algorithm.adv_estimator == "gae":
        parts["critic (weights, gradients, Adam)"] = 4 * FP32 * parameters * ranks
    return parts


def available_bytes() -> int | None:
    """MemAvailable of this machine (None where /proc/meminfo is not there)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def shortage(cfg, parameters: int, available: int) -> str | None:
    """Why the run cannot fit `available` bytes, with the estimate; None when it may."""
    parts = estimate(cfg, parameters)
    need = sum(parts.values())
    if need <= available:
        return None
    listed = ", ".join(f"{name} {value / GIB:.1f}" for name, value in parts.items())
    where = f"model.path={cfg.model.path!r}" if cfg.model.path else f"model.size={cfg.model.size}"
    return (f"{where} ({parameters / 1e9:.2f}B parameters) needs at least {need / GIB:.1f} GiB on this machine "
            f"({listed} GiB, before activations) and {available / GIB:.1f} GiB are available; train adapters "
            "(model.lora.rank=16), sample with rollout=hf (no second copy of the weights), shard with "
            "trainer.zero_stage=3 over more ranks, or use a machine with more memory")


def check_fits(cfg) -> str | None:
    """The shortage on this machine for a cluster=local run on the CPU; None otherwise."""
    import torch

    if cfg.cluster.kind != "local" or torch.cuda.is_available() or os.environ.get("SIIRL_SKIP_MEMORY_CHECK"):
        return None
    parameters, available = parameter_count(cfg), available_bytes()
    if parameters is None or available is None:
        return None
    return shortage(cfg, parameters, available)
