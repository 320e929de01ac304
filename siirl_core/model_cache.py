"""Where the generated base models and warm starts are cached (storage.cache_dir): one
folder per combination of everything that changes their weights, so a change of
model, task, seed or SFT setting never reuses a stale model, and anything else
(RL settings, evaluation, storage) shares it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

from siirl_core.config import SiirlConfig, to_dict
from siirl_core.data import build_task
from siirl_core.models.shapes import REAL_SHAPES


def cache_key(*parts) -> str:
    """12 hex digits of the SHA-256 of the parts as sorted-key JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def base_model_dir(cfg: SiirlConfig) -> str:
    """model.path when given; else the generated model of this size, architecture,
    vocabulary (the task's alphabet; for a real shape, the task whose text trains the BPE
    tokenizer and its vocabulary bound) and seed."""
    if cfg.model.path:
        return cfg.model.path
    if cfg.model.size in REAL_SHAPES:
        key = cache_key(cfg.model.size, to_dict(cfg)["task"], cfg.model.bpe_vocab_size, cfg.trainer.seed)
        return os.path.join(cfg.storage.cache_dir, f"base-{cfg.model.size}-{key}")
    key = cache_key(cfg.model.size, cfg.model.architecture, build_task(cfg.task).alphabet, cfg.trainer.seed)
    return os.path.join(cfg.storage.cache_dir, f"base-{cfg.model.architecture}-{cfg.model.size}-{key}")


def warm_start_dir(cfg: SiirlConfig) -> str:
    """The supervised warm start of the base model on this task with these SFT settings."""
    d = to_dict(cfg)
    return os.path.join(cfg.storage.cache_dir, f"sft-{cfg.model.size}-{cache_key(base_model_dir(cfg), d['task'], d['sft'])}")


def agent_base_dir(cfg: SiirlConfig, alphabet: str, pid: str, index: int) -> tuple[str, int]:
    """(folder, seed) of multi-agent policy `pid`'s fresh model: separate policies get
    separate initialisations (trainer.seed + the policy's index)."""
    spec, seed = cfg.agents.policy(pid), cfg.trainer.seed + index
    key = cache_key(alphabet, spec.size, cfg.model.architecture, seed, spec.init_std)
    return os.path.join(cfg.storage.cache_dir, f"agent-base-{spec.size}-{key}"), seed


def staging_dir(out: str) -> str:
    """A folder of this process's own to build cache entry `out` in (runs that share the
    cache may build the same entry at once)."""
    return f"{out}.tmp-{os.getpid()}"


def publish(staged: str, out: str) -> str:
    """Move a finished entry into place whole. When another run has just published the
    same entry (the same key, so the same weights), keep theirs and drop ours."""
    try:
        os.replace(staged, out)
    except OSError:
        if not os.path.isfile(os.path.join(out, "config.json")):
            raise
        shutil.rmtree(staged)
    return out


WARM_START_RECORD = "warm_start.json"


def write_warm_start_record(model_dir: str, record: dict) -> None:
    """How a warm start went, kept beside it: training runs report it in their summary."""
    with open(os.path.join(model_dir, WARM_START_RECORD), "w") as f:
        json.dump(record, f, indent=1)


def read_warm_start_record(model_dir: str) -> dict | None:
    """The record, or None for a warm start made before records were kept."""
    try:
        with open(os.path.join(model_dir, WARM_START_RECORD)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
