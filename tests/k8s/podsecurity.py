"""The Kubernetes Pod Security Standards "restricted" profile (v1.30) as a check of a pod spec.

What the PodSecurity admission controller enforces with `pod-security.kubernetes.io/enforce: restricted`
(kubernetes.io/docs/concepts/security/pod-security-standards): the baseline rules (no host namespaces,
ports or paths, no privileged containers, only default capabilities, no Unconfined seccomp) plus
restricted's: allowed volume types only, allowPrivilegeEscalation false, runAsNonRoot (and no uid 0),
seccomp RuntimeDefault or Localhost, every capability dropped (NET_BIND_SERVICE may be added back).
The test API server (v1.20) predates the admission controller, so the rules are checked here.
"""
from __future__ import annotations

from typing import Any

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", []), *spec.get("ephemeralContainers", [])]


def _pod_level(spec: dict[str, Any]) -> list[str]:
    errors = [f"spec.{k} is true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            errors.append(f"volume {volume['name']!r} is of type {sorted(kinds)}; "
                          f"allowed: {sorted(RESTRICTED_VOLUMES)}")
    return errors


def _container(c: dict[str, Any], pod_sc: dict[str, Any]) -> list[str]:
    sc, name = c.get("securityContext") or {}, c["name"]
    errors = []
    if sc.get("privileged"):
        errors.append(f"{name}: privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        errors.append(f"{name}: allowPrivilegeEscalation must be false")
    if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
        errors.append(f"{name}: runAsNonRoot must be true (pod or container)")
    if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
        errors.append(f"{name}: runAsUser 0")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        errors.append(f"{name}: seccompProfile.type is {seccomp!r}; allowed: RuntimeDefault, Localhost")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        errors.append(f"{name}: capabilities.drop must contain ALL")
    if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
        errors.append(f"{name}: capabilities.add {caps['add']}; allowed: NET_BIND_SERVICE")
    if any(p.get("hostPort") for p in c.get("ports", [])):
        errors.append(f"{name}: hostPort")
    return errors


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """Every way a pod spec breaks the restricted profile (empty when it passes)."""
    pod_sc = spec.get("securityContext") or {}
    errors = _pod_level(spec)
    if (pod_sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        errors.append("spec.securityContext.seccompProfile.type is Unconfined")
    for c in _all_containers(spec):
        errors += _container(c, pod_sc)
    return errors
