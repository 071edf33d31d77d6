"""Typed, validated dataclass fields: the machinery under `rglcd.config`.

A field is declared with `F(default, "one-line help", ge=..., gt=..., choices=..., multiple_of=...)`.
`from_dict` builds a dataclass tree from plain data (YAML/JSON) and refuses unknown keys, wrong
types and out-of-range values with a `ConfigError` that names the key, the value and what is allowed.
A section class lists keys it once had in a `RENAMED: ClassVar[dict[str, str]]` (old -> new field name):
a config that still uses an old key is told the new one.
"""
from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from rglcd.safeio import short


class ConfigError(ValueError):
    """A config value or key that is not allowed. The message names key, value and what is allowed."""


def _show(value: Any) -> str:
    """repr(value) cut short: an error never echoes a whole (possibly huge) value."""
    return short(repr(value))


def F(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field with a help line and validation rules (ge, gt, le, lt, multiple_of, choices, check).

    choices: the allowed values of a str field (or of each item of a list[str] field), or a function
    returning them, called at validation time (names that a registry grows, e.g. `rglcd.plugins`).
    check: a function of the value returning None or the text of what is allowed (e.g. rglcd.config.kube.quantity).
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
            raise ConfigError(f"{key}: expected a mapping (section), got {_show(value)}")
        return from_dict(tp, value, prefix=key)
    if origin is Literal:
        value = _yaml_word(value, get_args(tp))
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {_show(value)} is not allowed; allowed: {_type_name(tp)}")
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {_show(value)} has the wrong type; expected {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: {_show(value)} has the wrong type; expected {_type_name(tp)}")
        (item,) = get_args(tp)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: {_show(value)} has the wrong type; expected {_type_name(tp)}")
        _, vt = get_args(tp)
        return {str(k): _coerce(f"{key}.{k}", v, vt) for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {_show(value)}")
        return None
    if tp is float:
        return _finite(key, value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key}: {_show(value)} has the wrong type; expected {_type_name(tp)}")
    return value


def _finite(key: str, value: Any) -> float:
    """A float field's value: ints and numeric strings (YAML 1.1 reads 1e-6 as a string) are accepted,
    inf and nan are not (a non-finite lr or guidance range poisons a run long after it started)."""
    number = value
    if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
        try:
            number = float(value)
        except ValueError:
            pass
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ConfigError(f"{key}: {_show(value)} has the wrong type; expected float")
    if not math.isfinite(number):
        raise ConfigError(f"{key}: {_show(value)} is not allowed; allowed: a finite number")
    return float(number)


def _choices(rules: dict[str, Any]) -> list | None:
    choices = rules.get("choices")
    return list(choices() if callable(choices) else choices) if choices is not None else None


def _check_choices(key: str, value: Any, allowed: list) -> None:
    for item in value if isinstance(value, list) else [value]:
        if item not in allowed:
            raise ConfigError(f"{key}: {_show(item)} is not allowed; allowed: {', '.join(map(str, allowed))}")


def _check_rules(key: str, value: Any, rules: dict[str, Any]) -> None:
    allowed = _choices(rules)
    if allowed is not None and value is not None:
        _check_choices(key, value, allowed)
    problem = rules["check"](value) if "check" in rules else None
    if problem:
        raise ConfigError(f"{key}: {_show(value)} is not allowed; allowed: {problem}")
    if value is None or isinstance(value, (str, list, dict)):
        return
    checks = {
        "ge": (lambda v, r: v >= r, ">="), "gt": (lambda v, r: v > r, ">"),
        "le": (lambda v, r: v <= r, "<="), "lt": (lambda v, r: v < r, "<"),
    }
    for name, (ok, sym) in checks.items():
        if name in rules and not ok(value, rules[name]):
            raise ConfigError(f"{key}: {_show(value)} is out of range; allowed: {sym} {rules[name]}")
    if "multiple_of" in rules and value % rules["multiple_of"]:
        raise ConfigError(f"{key}: {_show(value)} is not allowed; allowed: a multiple of {rules['multiple_of']}")


def renamed_keys(cls: type, prefix: str = "") -> dict[str, str]:
    """{old dotted key: new dotted key} from the `RENAMED` class attributes of a config dataclass tree."""
    dot = f"{prefix}." if prefix else ""
    out = {dot + old: dot + new for old, new in getattr(cls, "RENAMED", {}).items()}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(renamed_keys(hints[f.name], dot + f.name))
    return out


def _refuse_renamed(cls: type, data: dict[str, Any], prefix: str) -> None:
    """A key a section once had (its class's `RENAMED`) fails with the name it has now."""
    dot = f"{prefix}." if prefix else ""
    for key, value in data.items():
        new = getattr(cls, "RENAMED", {}).get(key)
        if new is not None:
            raise ConfigError(f"{dot}{key}: {_show(value)} uses a key that was renamed to {dot}{new}; allowed: "
                              f"{dot}{new} (`rglcd config explain` says what it means)")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, recursively; missing keys take their defaults."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - set(fields))
    _refuse_renamed(cls, data, prefix)
    if unknown:
        where = prefix or "config"
        raise ConfigError(
            f"{prefix + '.' if prefix else ''}{str(unknown[0])[:80]}: unknown key in {where}; "
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


__all__ = ["ConfigError", "F", "field_help", "from_dict", "renamed_keys", "to_dict"]
