"""Cross-field configuration rules that belong to a part of the engine, registered by the
module that owns the settings they check (as the algorithm registry is filled), and run
by `config_checks.validate` after the schema's own checks."""
from __future__ import annotations

import importlib
from typing import Any, Callable

from siirl_core.config import ConfigError, SiirlConfig

# The modules that register rules, imported by `check_registered` in this order; each
# module's rules run in the order it registers them.
OWNERS = (
    "siirl_core.training.fused",
    "siirl_core.data",
    "siirl_core.rewards.user",
    "siirl_core.pipeline",
    "siirl_core.agents.config_checks",
    "siirl_core.tracking",
    "siirl_core.wandb_tracking",
)
_RULES: dict[str, Callable[[SiirlConfig], None]] = {}


def config_rule(name: str) -> Callable:
    """Decorator: register `fn(cfg)`, which raises ConfigError naming the key when the
    configuration breaks a rule of its module."""
    def register(fn: Callable[[SiirlConfig], None]) -> Callable[[SiirlConfig], None]:
        if name in _RULES:
            raise ValueError(f"config rule {name!r} is already registered")
        _RULES[name] = fn
        return fn
    return register


def check_registered(cfg: SiirlConfig) -> None:
    for module in OWNERS:
        importlib.import_module(module)
    for rule in list(_RULES.values()):
        rule(cfg)


def registered_rules() -> list[str]:
    return list(_RULES)


def one_of(key: str, value: Any, allowed) -> None:
    allowed = sorted(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; expected one of {allowed}")


def positive(key: str, value, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"{key}={value!r} is not allowed; expected a number {bound}")
