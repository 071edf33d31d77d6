"""The Pod Security Standards' `restricted` profile, checked in code (the test API server, v1.20, predates Pod
Security admission). Rules as kubernetes.io/docs/concepts/security/pod-security-standards lists them for the
baseline and restricted levels (v1.25+), on a pod spec dict:

baseline: no hostNetwork/hostPID/hostIPC, no privileged containers, capabilities added only from the baseline
set, no hostPath volumes, no hostPort, no AppArmor/SELinux/procMount/sysctl overrides (checked: the first five).
restricted: only the allowed volume types, allowPrivilegeEscalation false, runAsNonRoot true (pod or every
container), runAsUser not 0, seccompProfile RuntimeDefault or Localhost (pod or every container), capabilities
drop ALL and add at most NET_BIND_SERVICE.
"""
from __future__ import annotations

from typing import Any

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}
SECCOMP_OK = {"RuntimeDefault", "Localhost"}


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", []), *spec.get("ephemeralContainers", [])]


def _pod_or_all(spec: dict[str, Any], check) -> bool:
    """A setting met at pod level (unless a container overrides it) or by every container."""
    pod = spec.get("securityContext") or {}
    return all(check((c.get("securityContext") or {}), pod) for c in _containers(spec))


def violations(spec: dict[str, Any], where: str = "pod") -> list[str]:
    """Every rule of `restricted` the pod spec breaks, as 'where: rule' lines (empty: it passes)."""
    out = [f"{where}: {key}" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    for vol in spec.get("volumes", []):
        kind = next((k for k in vol if k != "name"), "?")
        if kind not in ALLOWED_VOLUMES:
            out.append(f"{where}: volume {vol.get('name')} of type {kind}")
    pod = spec.get("securityContext") or {}
    if pod.get("runAsUser") == 0:
        out.append(f"{where}: pod runAsUser 0")
    if not _pod_or_all(spec, lambda c, p: c.get("runAsNonRoot", p.get("runAsNonRoot")) is True):
        out.append(f"{where}: runAsNonRoot not true for every container")
    if not _pod_or_all(spec, lambda c, p: (c.get("seccompProfile") or p.get("seccompProfile") or {}).get("type")
                       in SECCOMP_OK):
        out.append(f"{where}: seccompProfile not RuntimeDefault/Localhost for every container")
    for c in _containers(spec):
        sc, name = c.get("securityContext") or {}, f"{where}: container {c.get('name')}"
        caps = sc.get("capabilities") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation not false")
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities {sorted(set(caps['add']) - {'NET_BIND_SERVICE'})}")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out


def read_only_root_gaps(spec: dict[str, Any], where: str = "pod") -> list[str]:
    """Containers without a read-only root filesystem (not a `restricted` rule; this project's own bar)."""
    return [f"{where}: container {c.get('name')}" for c in _containers(spec)
            if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True]
