"""What trainer.precision means on a rank's device: DeepSpeed's bf16 mode on a GPU, or
fp32 weights with the forward and backward passes under bf16 autocast on a CPU."""
from __future__ import annotations

import contextlib

import torch


def deepspeed_bf16(precision: str, device: torch.device) -> bool:
    """Whether the DeepSpeed engines train in bf16 (GPUs, unless trainer.precision=fp32)."""
    return device.type == "cuda" and precision in ("auto", "bf16")


def cpu_autocast(precision: str, device: torch.device) -> bool:
    """Whether a CPU rank runs its passes under bf16 autocast (trainer.precision=bf16)."""
    return device.type == "cpu" and precision == "bf16"


def compute(precision: str, device: torch.device):
    """The context a rank's iterations and evaluations run in: matrix products in bf16 on
    a CPU asked for bf16 (torch.autocast keeps reductions such as softmax in fp32), a
    no-op otherwise. Entered per call, as autocast state is per thread."""
    if cpu_autocast(precision, device):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rollout_dtype(precision: str) -> str:
    """vLLM's weight dtype: bf16 when asked for, fp32 otherwise (the trainer's own)."""
    return "bfloat16" if precision == "bf16" else "float32"


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere autocast
    emulates it, slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
