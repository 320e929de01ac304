"""Name -> function registries, so configs can pick algorithms by string.

The registries hold plain functions; nothing here knows about configs.
"""

from __future__ import annotations

from typing import Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable)


class Registry:
    """A named table of functions of one kind (e.g. "policy loss")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator adding a function under `name`; returns it unchanged."""
        if name in self._entries:
            # Fail at import time: a silent overwrite would change which
            # algorithm a config selects depending on import order.
            raise ValueError(f"{self.kind} {name!r} is already registered")

        def decorator(fn: F) -> F:
            # Checked again here in case two decorators were created before either ran.
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> Callable:
        try:
            return self._entries[name]
        except KeyError:
            # List the known names so a config typo is fixable from the message alone.
            raise KeyError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
POLICY_LOSSES = Registry("policy loss")
KL_ESTIMATORS = Registry("KL estimator")
LOSS_AGG_MODES = Registry("loss aggregation mode")
