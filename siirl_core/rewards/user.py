"""Resolving `reward.function`: a registered name, or a user's function given as
`package.module:function` or `path/to/file.py:function`. Every problem is reported
with the config key and what was expected, before any model is loaded."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
from typing import Callable

from siirl_core.config import ConfigError
from siirl_core.config_rules import config_rule, one_of, positive
from siirl_core.rewards.builtin import REWARDS

SIGNATURE = "(data_source, solution_str, ground_truth, extra_info, **kwargs)"


class RewardFunctionError(ValueError):
    """reward.function cannot be used; the message says why."""


_IMPORTED: dict[tuple[str, int], object] = {}  # user files run once per process while unchanged


def _module_from_file(path: str, label: str):
    if not os.path.isfile(path):
        raise RewardFunctionError(f"{label}: file {path!r} does not exist")
    version = (os.path.abspath(path), os.stat(path).st_mtime_ns)
    if version in _IMPORTED:
        return _IMPORTED[version]
    name = "siirl_user_reward_" + hashlib.sha1(version[0].encode()).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's file failed to import: say so, with the cause
        raise RewardFunctionError(f"{label}: importing {path} failed: "
                                  f"{type(err).__name__}: {err}") from err
    _IMPORTED[version] = module
    return module


def _module_by_name(name: str, label: str):
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise RewardFunctionError(f"{label}: cannot import module {name!r} ({err})") from err


def load_callable(spec_text: str, key: str) -> Callable:
    """A function given as `package.module:function` or `path/to/file.py:function`;
    errors name the config key."""
    where, attr = spec_text.rsplit(":", 1)
    label = f"{key}={spec_text!r}"
    module = _module_from_file(where, label) if where.endswith(".py") else _module_by_name(where, label)
    fn = getattr(module, attr, None)
    if fn is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise RewardFunctionError(f"{label}: {where} has no {attr!r}; it defines {sorted(names)}")
    if not callable(fn):
        raise RewardFunctionError(f"{label}: {attr!r} is not a function")
    return fn


def load_reward_function(spec_text: str, batched: bool = False, kwargs: dict | None = None) -> Callable:
    """The callable named by reward.function, checked to accept the reward signature."""
    if spec_text in REWARDS:
        fn = REWARDS.get(spec_text)
    elif ":" in spec_text:
        fn = load_callable(spec_text, "reward.function")
    else:
        raise RewardFunctionError(f"reward.function={spec_text!r} is not a registered reward "
                                  f"({', '.join(REWARDS.names())}) nor 'module:function' / 'file.py:function'")
    try:
        inspect.signature(fn).bind([] if batched else "", [] if batched else "", None, [] if batched else {},
                                   **(kwargs or {}))
    except TypeError as err:
        form = "batched (lists of each)" if batched else "per-sample"
        raise RewardFunctionError(f"reward.function={spec_text!r} must accept the {form} signature {SIGNATURE} "
                                  f"with reward.kwargs={kwargs or {}}: {err}") from None
    except ValueError:
        pass  # builtins without an inspectable signature: trust them
    return fn


@config_rule("reward")
def _reward_rule(cfg) -> None:
    r = cfg.reward
    one_of("reward.on_error", r.on_error, {"score", "stop"})
    positive("reward.timeout_s", r.timeout_s)
    positive("reward.threads", r.threads)
    positive("reward.max_error_batches", r.max_error_batches)
    if not 0 <= r.max_error_rate <= 1:
        raise ConfigError(f"reward.max_error_rate={r.max_error_rate}: expected a share of samples in [0, 1]")
    if r.function != "auto":
        try:
            load_reward_function(r.function, r.batched, r.kwargs)
        except RewardFunctionError as err:
            raise ConfigError(str(err)) from None
