"""Build frozen dataclasses from plain YAML data, with errors that name file, key and value.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``X | None``, ``tuple[X, ...]``,
``Literal[...]``, ``Enum`` subclasses, ``Mapping[str, X]``, nested dataclasses and classes with a
``from_plain(data, where)`` classmethod (the inverse of their ``to_plain()``). Numeric bounds
come from field metadata (``ge``, ``gt``, ``le``, ``lt``); a field without a default is required.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from fairray.errors import ConfigError


class Where:
    """Where a value came from: a file (or ``--set``) and a dotted key path."""

    def __init__(self, source: str, path: str = "") -> None:
        self.source, self.path = source, path

    def child(self, key: str | int) -> Where:
        key = f"[{key}]" if isinstance(key, int) else str(key)
        sep = "" if not self.path or key.startswith("[") else "."
        return Where(self.source, f"{self.path}{sep}{key}")

    def error(self, message: str) -> ConfigError:
        path = self.path or "<top level>"
        return ConfigError(f"{self.source}: {path}: {message}")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def build(cls: type, data: Any, where: Where) -> Any:
    """Convert ``data`` (YAML scalars, lists, dicts) into an instance of dataclass ``cls``."""
    if not isinstance(data, Mapping):
        raise where.error(f"expected a mapping for {cls.__name__}, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise where.child(unknown[0]).error(
            f"unknown key (value {data[unknown[0]]!r}); valid keys here: {', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        w = where.child(name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise w.error("required key is missing")
            continue
        value = convert(hints[name], data[name], w)
        _check_bounds(f, value, w)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise where.error(str(exc)) from None


def _check_bounds(f: dataclasses.Field, value: Any, where: Where) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    m = f.metadata
    checks = (("ge", value >= m.get("ge", value), ">="), ("gt", "gt" not in m or value > m["gt"], ">"),
              ("le", value <= m.get("le", value), "<="), ("lt", "lt" not in m or value < m["lt"], "<"))
    for key, ok, op in checks:
        if key in m and not ok:
            raise where.error(f"must be {op} {m[key]}, got {value!r}")


def convert(tp: Any, value: Any, where: Where) -> Any:
    """Convert one value to type ``tp`` or raise a ConfigError naming the key and value."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        real = [o for o in options if o is not type(None)]
        if len(real) == 1:  # `X | None`: X's own message says more than "expected X or null"
            return convert(real[0], value, where)
        for option in real:
            try:
                return convert(option, value, where)
            except ConfigError:
                continue
        raise where.error(f"expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise where.error(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is tuple:
        item_tp = get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise where.error(f"expected a list, got {value!r}")
        return tuple(convert(item_tp, v, where.child(i)) for i, v in enumerate(value))
    if origin in (Mapping, dict, typing.Mapping) or tp is dict:
        key_tp, val_tp = get_args(tp) or (str, Any)
        if not isinstance(value, Mapping):
            raise where.error(f"expected a mapping, got {value!r}")
        return types.MappingProxyType({str(k): convert(val_tp, v, where.child(str(k))) for k, v in value.items()})
    if isinstance(tp, type) and hasattr(tp, "from_plain"):  # a section that builds itself (e.g. a named plugin)
        return value if isinstance(value, tp) else tp.from_plain(value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp.parse(value) if hasattr(tp, "parse") else tp(value)
        except ValueError:
            raise where.error(f"expected one of {', '.join(repr(m.value) for m in tp)}, got {value!r}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise where.error(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise where.error(f"expected a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise where.error(f"expected a finite number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str) or not value:
            raise where.error(f"expected a non-empty string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where.path}")  # a bug in fairray, not user input


def to_plain(obj: Any) -> Any:
    """Inverse of :func:`build`: dataclasses, enums and mappings back to YAML-able data.

    An object with a ``to_plain()`` method (a plugin section) gives its own layout.
    """
    if hasattr(obj, "to_plain") and not isinstance(obj, type):
        return obj.to_plain()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
