"""Name -> factory registries: every strategy axis of the search space is one of these.

A registry maps the string a config or YAML file holds to the code that builds it, so adding a
strategy is one decorated function and never another branch in an if-chain.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """A named family of factories.

    Names are either plain (``"bilateral"``) or parametric: a registered prefix followed by an
    integer, such as ``"avg2"`` or ``"attn16"``, for strategies that carry one size.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._plain: dict[str, F] = {}
        self._parametric: dict[str, F] = {}

    def register(self, name: str, *, parametric: bool = False) -> Callable[[F], F]:
        table = self._parametric if parametric else self._plain
        if name in table:
            raise KeyError(f"{self.kind} {name!r} is registered twice")

        def add(fn: F) -> F:
            table[name] = fn
            return fn

        return add

    def names(self) -> list[str]:
        """Every accepted spelling, parametric ones shown with a size placeholder."""
        return sorted(self._plain) + sorted(f"{p}<int>" for p in self._parametric)

    def parse(self, name: str) -> tuple[F, int | None]:
        """Return the factory for ``name`` and its integer size (None for plain names)."""
        if not isinstance(name, str):
            raise ValueError(f"{self.kind} must be a string, got {name!r}")
        if name in self._plain:
            return self._plain[name], None
        match = re.fullmatch(r"([a-z_]+)(\d+)", name)
        if match and match.group(1) in self._parametric:
            size = int(match.group(2))
            if match.group(2) != str(size):  # "avg02" would build avg2 and compare unequal to it
                raise ValueError(f"{self.kind} {name!r}: write {match.group(1)}{size}")
            if size < 1:
                raise ValueError(f"{self.kind} {name!r}: the size must be at least 1")
            return self._parametric[match.group(1)], size
        raise ValueError(unknown_name_message(self.kind, name, self.names()))

    def validate(self, name: str) -> None:
        self.parse(name)


def unknown_name_message(kind: str, name: object, allowed: list[str]) -> str:
    """One message naming what was given, what is allowed and, if any, the closest spelling."""
    message = f"unknown {kind} {name!r}; allowed: {', '.join(allowed)}"
    close = difflib.get_close_matches(str(name), allowed, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return message
