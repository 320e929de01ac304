"""Tasks that prepare the policy: the base model and the supervised warm start."""
from __future__ import annotations

import os

from prefect import task
from prefect.cache_policies import NO_CACHE

from siirl_core.config import SiirlConfig
from siirl_core.data import build_task
from siirl_core.model_cache import agent_base_dir, base_model_dir, publish, staging_dir


@task(cache_policy=NO_CACHE)
def make_base_model(cfg: SiirlConfig) -> str:
    """The configured model directory, created by the factory when no path is given."""
    from siirl_core.models.factory import create_model

    out = base_model_dir(cfg)
    if not os.path.isfile(os.path.join(out, "config.json")):
        tmp = staging_dir(out)
        create_model(tmp, build_task(cfg.task), cfg.model.size, cfg.model.architecture, cfg.trainer.seed,
                     cfg.model.bpe_vocab_size)
        publish(tmp, out)
    return out


@task(cache_policy=NO_CACHE)
def supervised_warm_start(cfg: SiirlConfig, base_dir: str, out_dir: str) -> dict:
    """Train the warm start into out_dir; how it went (steps run, whether sft.target_accuracy
    stopped it, the last held-back accuracy) for its record (model_cache.write_warm_start_record)."""
    from prefect import get_run_logger

    from siirl_core.sft import train_sft

    logger = get_run_logger()
    record = {"steps": 0, "max_steps": cfg.sft.steps, "target_accuracy": cfg.sft.target_accuracy,
              "stopped_at_target": False, "held_back_accuracy": None}

    def report(step: int, loss: float) -> None:
        record["steps"] = step
        if step % 50 == 0 or step == cfg.sft.steps:
            logger.info("sft step %d/%d loss %.4f", step, cfg.sft.steps, loss)

    def check(step: int, accuracy: float) -> None:
        record["held_back_accuracy"] = accuracy
        if accuracy >= cfg.sft.target_accuracy:
            record["stopped_at_target"] = step < cfg.sft.steps
            logger.info("sft step %d: greedy accuracy %.3f on held-back demonstrations reaches "
                        "sft.target_accuracy=%s; stopping", step, accuracy, cfg.sft.target_accuracy)

    train_sft(base_dir, out_dir, build_task(cfg.task), cfg.sft.steps, cfg.sft.batch_size, cfg.sft.lr,
              cfg.sft.seed, on_step=report, target_accuracy=cfg.sft.target_accuracy,
              check_every=cfg.sft.check_every, max_new_tokens=cfg.rollout.max_new_tokens, on_check=check)
    return record


@task(cache_policy=NO_CACHE)
def greedy_eval(cfg: SiirlConfig, model_dir: str) -> float:
    from siirl_core.sft import greedy_accuracy

    return greedy_accuracy(model_dir, build_task(cfg.task), cfg.rollout.max_new_tokens)


@task(cache_policy=NO_CACHE)
def make_agent_base_model(cfg: SiirlConfig, pid: str, index: int) -> str:
    """A fresh model for one multi-agent policy over the environment's alphabet; separate
    policies get separate initialisations (seed + their index)."""
    from siirl_core.agents.config_checks import policy_alphabet
    from siirl_core.models import create_tiny_model

    alphabet = policy_alphabet(cfg)
    out, seed = agent_base_dir(cfg, alphabet, pid, index)
    if not os.path.isfile(os.path.join(out, "config.json")):
        spec = cfg.agents.policy(pid)
        tmp = staging_dir(out)
        create_tiny_model(tmp, alphabet, size=spec.size, architecture=cfg.model.architecture, seed=seed,
                          init_std=spec.init_std)
        publish(tmp, out)
    return out
