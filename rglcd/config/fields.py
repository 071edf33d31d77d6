"""Typed, validated dataclass fields: the machinery under `rglcd.config`.

A field is declared with `F(default, "one-line help", ge=..., gt=..., choices=..., multiple_of=...)`.
`from_dict` builds a dataclass tree from plain data (YAML/JSON) and refuses unknown keys, wrong
types and out-of-range values with a `ConfigError` that names the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
from dataclasses import dataclass
from typing import Any, Callable, Literal, Union, get_args, get_origin, get_type_hints

from rglcd.safeio import short


class ConfigError(ValueError):
    """A config value or key that is not allowed. The message names key, value and what is allowed."""


def _show(value: Any) -> str:
    """repr(value) cut short: an error never echoes a whole (possibly huge) value."""
    return short(repr(value))


@dataclass(frozen=True)
class Valid:
    """A named check of a string value: `F(..., valid=K8S_LABEL)`; `allowed` is what the error says."""

    allowed: str
    ok: Callable[[str], bool]


def _pattern(regex: str, max_len: int) -> Callable[[str], bool]:
    compiled = re.compile(regex)
    return lambda v: len(v) <= max_len and compiled.fullmatch(v) is not None


# Kubernetes object names (k8s.io/apimachinery validation: IsDNS1123Label / IsDNS1123Subdomain) and
# resource quantities (resource.Quantity: a number with an SI or binary suffix or a decimal exponent).
K8S_LABEL = Valid("an RFC 1123 label: at most 63 lowercase letters, digits and '-', starting and ending "
                  "with a letter or digit", _pattern(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", 63))
K8S_SUBDOMAIN = Valid("an RFC 1123 subdomain: at most 253 lowercase letters, digits, '-' and '.', each "
                      "dot-separated part starting and ending with a letter or digit",
                      _pattern(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", 253))
K8S_QUANTITY = Valid("a Kubernetes quantity such as 16Gi, 512Mi or 500M",
                     _pattern(r"\+?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?", 64))


def F(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field with a help line and validation rules (ge, gt, le, lt, multiple_of, valid)."""
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


def _check_rules(key: str, value: Any, rules: dict[str, Any]) -> None:
    if isinstance(value, str) and "valid" in rules and not rules["valid"].ok(value):
        raise ConfigError(f"{key}: {_show(value)} is not allowed; allowed: {rules['valid'].allowed}")
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


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, recursively; missing keys take their defaults."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - set(fields))
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
            rows.append((key, _type_name(hints[f.name]), f.metadata.get("help", "")))
    return rows


__all__ = ["ConfigError", "F", "K8S_LABEL", "K8S_QUANTITY", "K8S_SUBDOMAIN", "Valid", "field_help", "from_dict",
           "to_dict"]
