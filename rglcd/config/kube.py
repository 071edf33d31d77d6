"""Checks of Kubernetes-shaped config values (names, quantities, labels, taints), made at config load.

Plain string rules from the Kubernetes API conventions (apimachinery `validation`: DNS-1123 labels and
subdomains, qualified label keys, label values; `resource.Quantity` syntax; the `kubectl taint` form
`key[=value]:Effect`). No kubernetes import: rglcd/ stays free of cluster libraries. Each function returns
None when the value is allowed, else the text after "allowed:" in the ConfigError `F(..., check=...)` raises.
"""
from __future__ import annotations

import re

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# resource.Quantity: signed decimal number, then a binary (Ki..Ei) or decimal (m, k, M..E) suffix or exponent
_QUANTITY = re.compile(r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][-+]?[0-9]+)?$")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def dns_label(value: str | None) -> str | None:
    """A namespace, ServiceAccount or other DNS-1123 label name (None passes: 'not used')."""
    if value is None or (len(value) <= 63 and _DNS_LABEL.match(value)):
        return None
    return "a DNS-1123 label: lowercase letters, digits and '-', starting and ending alphanumeric, at most 63 characters"


def dns_subdomain(value: str | None) -> str | None:
    """A Secret, PVC, ConfigMap or PriorityClass name (DNS-1123 subdomain; None passes)."""
    if value is None or (len(value) <= 253 and _DNS_SUBDOMAIN.match(value)):
        return None
    return "a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253 characters"


def quantity(value: str | int) -> str | None:
    """A Kubernetes resource quantity such as '500m', '8' (or 8), '64Gi', '1.5G'."""
    if isinstance(value, (str, int)) and not isinstance(value, bool) and _QUANTITY.match(str(value)):
        return None
    return "a Kubernetes quantity such as 500m, 8, 64Gi or 1.5G"


def label_key(key: str) -> str | None:
    """A qualified label key: optional DNS-subdomain prefix and '/', then a name of at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    if (not prefix or (len(prefix) <= 253 and _DNS_SUBDOMAIN.match(prefix))) and len(name) <= 63 \
            and _LABEL_NAME.match(name):
        return None
    return "label keys [prefix/]name: name of at most 63 letters, digits, '-', '_', '.'; prefix a DNS subdomain"


def labels(value: dict[str, str]) -> str | None:
    """A node selector or label map: qualified keys, values of at most 63 label characters."""
    for key, val in value.items():
        if label_key(key) or len(val) > 63 or not _LABEL_VALUE.match(val):
            return (f"label pairs (bad: {key}={val}); keys [prefix/]name, values of at most 63 letters, "
                    "digits, '-', '_', '.'")
    return None


def parse_taint(text: str) -> dict[str, str]:
    """'key[=value]:Effect' (the `kubectl taint` form) -> {'key', 'value' (may be ''), 'effect'}."""
    spec, _, effect = text.rpartition(":")
    key, _, value = spec.partition("=")
    return {"key": key, "value": value, "effect": effect}


def taints(value: list[str]) -> str | None:
    """Taints of the GPU pool in the `kubectl taint` form, e.g. 'nvidia.com/gpu=present:NoSchedule'."""
    for text in value:
        t = parse_taint(text)
        if not t["key"] or label_key(t["key"]) or t["effect"] not in _EFFECTS or not _LABEL_VALUE.match(t["value"]):
            return f"taints as key[=value]:Effect with Effect one of {', '.join(_EFFECTS)} (bad: {text!r})"
    return None
