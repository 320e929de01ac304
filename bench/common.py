"""Shared by the benchmarks: a warm-started policy for a config, made in a temp dir."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from siirl_core.data import build_task  # noqa: E402
from siirl_core.models import create_tiny_model  # noqa: E402
from siirl_core.sft import train_sft  # noqa: E402


def warm_policy(cfg, tmp: str) -> str:
    task = build_task(cfg.task)
    base = create_tiny_model(os.path.join(tmp, "base"), task.alphabet, cfg.model.size, cfg.model.architecture)
    return train_sft(base, os.path.join(tmp, "sft"), task, cfg.sft.steps, cfg.sft.batch_size, cfg.sft.lr,
                     cfg.sft.seed)
