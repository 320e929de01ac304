"""`siirl <command> --help`: the config groups and their options, the keys users change
most with their defaults, and how to print the resolved configuration."""
from __future__ import annotations

import os

from siirl_core.compose import CONF_DIR
from siirl_core.config import SiirlConfig

ABOUT = {
    "train": "RL training: warm start if needed, then RL iterations over a Dask cluster of ranks.",
    "sft": "The supervised warm start alone (cached by config).",
    "retrain": "One night of retraining: train from the champion, promote the candidate if it is better.",
    "evaluate": "Sampled metrics (mean@n, maj@n, pass@k) of a checkpoint or HF model on held-out prompts.",
}
# The keys users change most, in the order a first run meets them.
COMMON_KEYS = ("trainer.steps", "trainer.prompts_per_step", "trainer.lr", "trainer.seed", "trainer.eval_every",
               "trainer.save_every", "trainer.resume", "rollout.n", "rollout.max_new_tokens", "rollout.temperature",
               "algorithm.kl_coef", "cluster.n_workers", "storage.uri", "model.path", "task.train_files",
               "reward.function")


def group_options() -> dict[str, list[str]]:
    """Each config group (a folder of conf/) and its options (the yaml files in it)."""
    groups = {}
    for name in sorted(os.listdir(CONF_DIR)):
        folder = os.path.join(CONF_DIR, name)
        if os.path.isdir(folder):
            groups[name] = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))
    return groups


def value_of(cfg: SiirlConfig, key: str):
    """A dotted key's value in a configuration, e.g. trainer.steps -> 100."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def help_text(command: str) -> str:
    """The help, with the defaults a run without overrides gets (conf/ composed)."""
    from siirl_core.compose import compose_config

    cfg, defaults = compose_config([]), _defaults_list()
    lines = [f"usage: siirl {command} [group=option ...] [key=value ...] [--cfg job] [--verbose]", "",
             ABOUT[command], "",
             "Config groups (group=option; default marked *):"]
    for group, options in group_options().items():
        shown = [f"{o}*" if defaults.get(group) == o else o for o in options]
        lines.append(f"  {group:<10} {', '.join(shown)}")
    lines += ["", "Common keys (key=value; default in brackets):"]
    for key in COMMON_KEYS:
        lines.append(f"  {key:<28} [{value_of(cfg, key)!r}]")
    lines += ["", "Every key, its default and what it means: siirl_core/config.py and docs/configuration.md.",
              f"Print the resolved configuration without running: siirl {command} [overrides] --cfg job",
              "Show every library's output too (Dask, DeepSpeed, vLLM, transformers): --verbose"]
    return "\n".join(lines)


def _defaults_list() -> dict[str, str]:
    """group -> the option conf/config.yaml's defaults list picks."""
    import yaml

    with open(os.path.join(CONF_DIR, "config.yaml")) as f:
        entries = yaml.safe_load(f)["defaults"]
    return {k: v for e in entries if isinstance(e, dict) for k, v in e.items()}


