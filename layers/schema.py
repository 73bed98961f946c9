"""Frozen dataclasses built from plain data (YAML, JSON, dicts) with errors that name the key.

A dataclass opts in by calling ``coerce_fields(self)`` in ``__post_init__``: mappings given for
nested dataclass fields are built recursively, lists become tuples, integers (and numeric strings,
which YAML 1.1 produces for ``1e-3``) become floats where a float is expected, whole numbers written
as floats or such strings (``4e5``) become integers where an integer is expected, and every field
is then type-checked. Errors carry the dotted key path of the offending value.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from .registry import unknown_name_message


class ConfigError(ValueError):
    """An invalid value. ``path`` is the dotted key that is wrong, ``reason`` what is wrong with it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


def join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or key


def build(cls: type, data: Any, path: str = "") -> Any:
    """``cls(**data)`` after refusing unknown keys and missing required ones; errors inside get ``path`` prefixed."""
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"expected a mapping of keys to values, got {_describe(data)}")
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    for key in data:
        if key not in names:
            raise ConfigError(join(path, str(key)), unknown_name_message("key", key, names))
    for f in fields:
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(join(path, f.name), "is missing")
    try:
        return cls(**data)
    except ConfigError as err:
        raise ConfigError(join(path, err.path), err.reason) from None


def coerce_fields(obj: Any) -> None:
    """Normalise and type-check every field of a (frozen) dataclass instance in place."""
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        object.__setattr__(obj, f.name, coerce_value(getattr(obj, f.name), hints[f.name], f.name))


def coerce_value(value: Any, hint: Any, path: str) -> Any:
    """``value`` normalised to the type ``hint`` (as a dataclass field would be), or a ConfigError."""
    value = _coerce(value, hint, path)
    if not matches_type(value, hint):
        raise ConfigError(path, f"expected {type_name(hint)}, got {_describe(value)}")
    return value


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in args if a is not type(None)]
        return _coerce(value, options[0], path) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return build(hint, value, path)
    if origin is tuple and isinstance(value, (list, tuple)):
        element_hints = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(element_hints) == len(value):
            return tuple(_coerce(v, h, f"{path}[{i}]") for i, (v, h) in enumerate(zip(value, element_hints)))
        return tuple(value)
    if hint is int and isinstance(value, (float, str)):
        try:  # `4e5` (a string in YAML 1.1) and 4.0e5 spell a whole number
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else value
    if hint is float and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
    return value


def matches_type(value: Any, hint: Any) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(matches_type(value, h) for h in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(matches_type(v, h) for v, h in zip(value, args))
    if origin is dict or hint is dict:
        return isinstance(value, Mapping)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, float) and math.isfinite(value)
    return isinstance(value, hint)


def type_name(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {type_name(args[0]).removeprefix('an ').removeprefix('a ')}s"
        return f"a list of {len(args)} {type_name(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is dict or hint is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def save_yaml(obj: Any, path: Path) -> None:
    """Write a config dataclass as YAML, field by field in declaration order."""
    path.write_text(yaml.safe_dump(dataclasses.asdict(obj), sort_keys=False))


def load_yaml(cls: type, path: Path, section: str) -> Any:
    """A config dataclass read back from a ``save_yaml`` file, checked as ``build`` checks it."""
    return build(cls, yaml.safe_load(path.read_text()) or {}, section)
