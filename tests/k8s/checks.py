"""Offline checks of Kubernetes objects: kustomize builds, schema validation, scheduling semantics.

Core kinds are validated strictly (unknown fields are errors) by kubernetes-validate's bundled OpenAPI schemas
of the target Kubernetes version; custom resources by jsonschema against the openAPIV3Schema of our CRDs in
tests/k8s/crds/, made strict the same way, and their embedded pod templates as core PodTemplateSpecs.
"""
from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
CRD_DIR = Path(__file__).resolve().parent / "crds"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
# Oldest Kubernetes we claim (batch/v1 CronJob with timeZone: 1.27+) and the newest bundled schema.
TARGET_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def kustomize(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize PATH` (kustomize built into kubectl) as a list of objects."""
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=False)
    if out.returncode:
        raise AssertionError(f"kubectl kustomize {path} failed: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pipeline_file(overlay: str) -> Path:
    """The overlay's pipeline.yaml: the config's `pipeline` section for that deployment mode."""
    (path,) = sorted((MANIFESTS / "overlays" / overlay).rglob("pipeline.yaml"))
    return path


def overlay_config(overlay: str, *overrides: str):
    """The config a person deploying `overlay` uses: defaults, its pipeline.yaml, then `overrides`."""
    from rglcd.config import load_config
    return load_config(path=pipeline_file(overlay), overrides=list(overrides))


def pool_taints(cfg) -> list[dict[str, str]]:
    """The GPU pool's taints as Node taints (from pipeline.gpu_taints)."""
    from rglcd.config.kube import parse_taint
    return [{k: v for k, v in parse_taint(t).items() if v or k != "value"} for t in cfg.pipeline.gpu_taints]


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every CRD in tests/k8s/crds/."""
    out = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields forbidden wherever it declares properties (kubernetes-validate's
    "-strict" semantics); `x-kubernetes-preserve-unknown-fields` objects stay open."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(schema)
    return schema


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every pod template an object carries, custom resources included."""
    spec = doc.get("spec") or {}
    kind = doc["kind"]
    if kind == "Pod":
        yield "pod", doc
    elif kind in ("Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        yield "spec.template", spec["template"]
    elif kind == "CronJob":
        yield "spec.jobTemplate.spec.template", spec["jobTemplate"]["spec"]["template"]
    elif kind == "PyTorchJob":
        for role, replica in (spec.get("pytorchReplicaSpecs") or {}).items():
            yield f"spec.pytorchReplicaSpecs.{role}.template", replica["template"]
    elif kind == "TrainJob":
        for patch in spec.get("runtimePatches") or []:
            for job in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
                yield f"spec.runtimePatches[{patch['manager']}].{job['name']}", job["template"]["spec"]["template"]


def _k8s_errors(doc: dict[str, Any], version: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path)
        return [f"{path}: {err.message}"]
    return []


def validate(doc: dict[str, Any], version: str) -> list[str]:
    """Every schema error of one object (empty when valid)."""
    name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
    schemas = crd_schemas()
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in schemas:
        return [f"{name}: {e}" for e in _k8s_errors(doc, version)]
    validator = jsonschema.Draft7Validator(strict(schemas[key]))
    errors = [f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    if doc["kind"] == "PyTorchJob":     # the runtime patches of a TrainJob are partial pod specs by design
        for where, template in pod_templates(doc):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            errors += [f"{name}: {where}: {e}" for e in _k8s_errors(wrapped, version)]
    return errors


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return template["spec"].get("containers", [])


def gpus_requested(template: dict[str, Any], resource: str = "nvidia.com/gpu") -> int:
    limits = [((c.get("resources") or {}).get("limits") or {}).get(resource, 0) for c in containers(template)]
    return sum(int(x) for x in limits)


def tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    """Kubernetes' Toleration.ToleratesTaint: same effect (or any), same key (or empty key with Exists),
    and Exists or an Equal value match."""
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("key") and toleration["key"] != taint["key"]:
        return False
    operator = toleration.get("operator", "Equal")
    if operator == "Exists":
        return True
    return operator == "Equal" and toleration.get("value", "") == taint.get("value", "")


_CRON_FIELDS = ((0, 59, {}), (0, 23, {}), (1, 31, {}),
                (1, 12, {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}),
                (0, 6, {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}))
_CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def cron_errors(expr: str) -> list[str]:
    """Errors of a Kubernetes CronJob schedule (robfig/cron standard parser: 5 fields or a macro)."""
    if expr.strip() in _CRON_MACROS:
        return []
    fields = expr.split()
    if len(fields) != 5:
        return [f"{expr!r}: {len(fields)} fields; a CronJob schedule has 5 (minute hour day month weekday)"]
    errors = []
    for text, (lo, hi, names) in zip(fields, _CRON_FIELDS):
        for part in text.split(","):
            m = re.fullmatch(r"(\*|\?|\w+)(?:-(\w+))?(?:/(\d+))?", part)
            if not m:
                errors.append(f"{part!r} is not a cron range")
                continue
            if m.group(1) in "*?" and m.group(2):
                errors.append(f"{part!r} is not a cron range")
                continue
            ends = [m.group(1), m.group(2)] if m.group(1) not in "*?" else [str(lo), str(hi)]
            values = [int(e) if e.isdigit() else names.get(e.upper(), -1) for e in ends if e is not None]
            if any(not lo <= v <= hi for v in values) or (m.group(3) is not None and int(m.group(3)) == 0):
                errors.append(f"{part!r} is outside {lo}-{hi}")
            elif len(values) == 2 and values[0] > values[1]:
                errors.append(f"{part!r} is an empty range")
    return errors
