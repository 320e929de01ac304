"""Checks of the `agents` config group, run with the rest of the config validation,
before any model is built."""
from __future__ import annotations

import os
import string

from siirl_core.config import ConfigError
from siirl_core.config_rules import config_rule


def _literal_chars(template: str) -> str:
    return "".join(text for text, _, _, _ in string.Formatter().parse(template))


def policy_alphabet(cfg) -> str:
    """Characters a fresh (init=base) policy's tokenizer covers: the environment's, the
    templates' literal text and the action vocabularies."""
    from siirl_core.agents.envs import build_env
    from siirl_core.data import build_task

    task = build_task(cfg.task) if cfg.agents.env == "solver_verifier" else None
    chars = set(build_env(cfg.agents, task).alphabet)
    for a in cfg.agents.agents:
        chars |= set(_literal_chars(a.template)) | set(a.allowed)
    return "".join(sorted(chars))


def _check_agent(i: int, a, names: list[str], policies: dict) -> None:
    key = f"agents.agents[{i}]"
    if a.policy != "scripted" and a.policy not in policies:
        raise ConfigError(f"{key}.policy={a.policy!r} is not declared under agents.policies "
                          f"(declared: {sorted(policies)}) and is not 'scripted'")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(a.template) if name is not None}
    except ValueError as err:
        raise ConfigError(f"{key}.template={a.template!r}: {err}") from None
    unknown = fields - {"obs", "history"} - set(names)
    if unknown:
        raise ConfigError(f"{key}.template uses {sorted(unknown)}; expected fields among "
                          f"{sorted({'obs', 'history'} | set(names))}")
    if a.max_new_tokens < 1 or a.temperature <= 0:
        raise ConfigError(f"{key}: max_new_tokens must be >= 1 and temperature > 0 "
                          f"(got {a.max_new_tokens}, {a.temperature})")
    if a.signalling_bonus < 0:
        raise ConfigError(f"{key}.signalling_bonus={a.signalling_bonus}: expected >= 0")


@config_rule("agents")
def validate_agents(cfg) -> None:
    """The agents group of a multi-agent run (agents.env set)."""
    from siirl_core.agents.credit import CREDIT_ASSIGNMENTS, OUTCOME_ESTIMATORS
    from siirl_core.agents.envs import ENVIRONMENTS
    from siirl_core.models.factory import SIZES

    a = cfg.agents
    if not a.env:
        return
    if a.env not in ENVIRONMENTS:
        raise ConfigError(f"agents.env={a.env!r} is not allowed; expected one of {ENVIRONMENTS.names()}")
    names = [x.name for x in a.agents]
    if len(names) < 2 or "" in names or len(set(names)) != len(names):
        raise ConfigError(f"agents.agents: expected at least two agents with distinct, non-empty names; got {names}")
    for i, spec in enumerate(a.agents):
        _check_agent(i, spec, names, a.policies)
    used = {x.policy for x in a.agents}
    if unused := sorted(set(a.policies) - used):
        raise ConfigError(f"agents.policies {unused} are used by no agent")
    if not used - {"scripted"}:
        raise ConfigError("agents.agents: every agent is scripted; at least one needs a policy to train")
    for pid in a.policies:
        try:
            p = a.policy(pid)
        except TypeError as err:
            raise ConfigError(f"agents.policies.{pid}: {err}; expected keys init, size, lr, init_std") from None
        if p.size not in SIZES:
            raise ConfigError(f"agents.policies.{pid}.size={p.size!r} is not allowed; expected one of {sorted(SIZES)}")
        if not p.init_std > 0:
            raise ConfigError(f"agents.policies.{pid}.init_std={p.init_std}: expected > 0")
        if p.init not in ("base", "warm_start") and not os.path.isfile(os.path.join(p.init, "config.json")):
            raise ConfigError(f"agents.policies.{pid}.init={p.init!r}: expected base, warm_start or an HF model "
                              "directory (a folder with config.json)")
    for key, value, allowed in (("agents.graph", a.graph, ("chain", "rounds", "parallel")),
                                ("agents.credit", a.credit, CREDIT_ASSIGNMENTS.names()),
                                ("agents.schedule", a.schedule, ("simultaneous", "alternating")),
                                ("algorithm.adv_estimator", cfg.algorithm.adv_estimator, OUTCOME_ESTIMATORS)):
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed with agents; expected one of {sorted(allowed)}")
    if a.rounds < 1 or a.eval_episodes < 1:
        raise ConfigError(f"agents.rounds and agents.eval_episodes must be >= 1 (got {a.rounds}, {a.eval_episodes})")
    if cfg.trainer.ppo_epochs != 1 or cfg.trainer.mini_batches != 1 or cfg.algorithm.kl_coef or \
            cfg.algorithm.kl_in_reward or cfg.algorithm.dynamic_sampling:
        raise ConfigError("multi-agent training runs one on-policy update per step without a reference model: "
                          "it needs trainer.ppo_epochs=1, trainer.mini_batches=1, algorithm.kl_coef=0, "
                          "algorithm.kl_in_reward=false and algorithm.dynamic_sampling=false")
    try:
        policy_alphabet(cfg)  # builds the environment: its argument errors surface here
    except (ValueError, KeyError) as err:
        raise ConfigError(str(err).strip("'\"")) from None
    for i, spec in enumerate(a.agents):
        if spec.policy != "scripted" and a.policy(spec.policy).init == "warm_start":
            from siirl_core.data import build_task
            missing = set(_literal_chars(spec.template) + spec.allowed) - set(build_task(cfg.task).alphabet)
            if missing:
                raise ConfigError(f"agents.agents[{i}] ({spec.name}) uses {sorted(missing)}, which the warm-started "
                                  f"policy's tokenizer ({cfg.task.name}) does not have")
