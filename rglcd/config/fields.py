"""Typed, validated dataclass fields: the machinery under `rglcd.config`.

A field is declared with `F(default, "one-line help", ge=..., gt=..., choices=..., multiple_of=...)`.
`from_dict` builds a dataclass tree from plain data (YAML/JSON) and refuses unknown keys, wrong
types and out-of-range values with a `ConfigError` that names the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A config value or key that is not allowed. The message names key, value and what is allowed."""


def F(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field with a help line and validation rules (ge, gt, le, lt, multiple_of, choices).

    choices: the allowed values of a str field (or of each item of a list[str] field), or a function
    returning them, called at validation time (names that a registry grows, e.g. `rglcd.plugins`).
    """
    meta = {"help": help, **rules}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


_YAML_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def _yaml_word(value: Any, allowed: tuple) -> Any:
    """YAML 1.1 reads a bare `no`/`off`/`yes`/`on` as a bool: give back the word a Literal field allows."""
    if isinstance(value, bool):
        return next((w for w in _YAML_BOOL_WORDS[value] if w in allowed), value)
    return value


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against type `tp`; ints are accepted for floats. Returns the typed value."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section), got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is Literal:
        value = _yaml_word(value, get_args(tp))
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {_type_name(tp)}")
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} has the wrong type; expected {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: {value!r} has the wrong type; expected {_type_name(tp)}")
        (item,) = get_args(tp)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: {value!r} has the wrong type; expected {_type_name(tp)}")
        _, vt = get_args(tp)
        return {str(k): _coerce(f"{key}.{k}", v, vt) for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key}: {value!r} has the wrong type; expected {_type_name(tp)}")
    return value


def _choices(rules: dict[str, Any]) -> list | None:
    choices = rules.get("choices")
    return list(choices() if callable(choices) else choices) if choices is not None else None


def _check_choices(key: str, value: Any, allowed: list) -> None:
    for item in value if isinstance(value, list) else [value]:
        if item not in allowed:
            raise ConfigError(f"{key}: {item!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def _check_rules(key: str, value: Any, rules: dict[str, Any]) -> None:
    allowed = _choices(rules)
    if allowed is not None and value is not None:
        _check_choices(key, value, allowed)
    if value is None or isinstance(value, (str, list, dict)):
        return
    checks = {
        "ge": (lambda v, r: v >= r, ">="), "gt": (lambda v, r: v > r, ">"),
        "le": (lambda v, r: v <= r, "<="), "lt": (lambda v, r: v < r, "<"),
    }
    for name, (ok, sym) in checks.items():
        if name in rules and not ok(value, rules[name]):
            raise ConfigError(f"{key}: {value!r} is out of range; allowed: {sym} {rules[name]}")
    if "multiple_of" in rules and value % rules["multiple_of"]:
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed: a multiple of {rules['multiple_of']}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, recursively; missing keys take their defaults."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix or "config"
        raise ConfigError(
            f"{prefix + '.' if prefix else ''}{unknown[0]}: unknown key in {where}; "
            f"allowed: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        typed = _coerce(key, value, hints[name])
        _check_rules(key, typed, dict(fields[name].metadata))
        kwargs[name] = typed
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """The plain-data form of a config dataclass (what YAML/JSON hold)."""
    return dataclasses.asdict(obj)


def field_help(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, type, help) for every leaf field, for `rglcd config explain`."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            rows += field_help(hints[f.name], key)
        else:
            allowed = _choices(dict(f.metadata))
            typ = "one of " + ", ".join(map(repr, allowed)) if allowed is not None else _type_name(hints[f.name])
            rows.append((key, typ, f.metadata.get("help", "")))
    return rows


__all__ = ["ConfigError", "F", "from_dict", "to_dict", "field_help"]
