"""Launch multi-node RG-LCD training as a Kubeflow PyTorchJob or TrainJob and watch it to the end.

This is the `kubernetes`-client code of the project; it lives in components/ because rglcd/ never imports
kubernetes (docs/architecture.md 1). The pipeline's training step calls `run(cfg, name)` when
`pipeline.distributed` is "pytorchjob" or "trainjob"; a person can do the same from a shell:

    python -m components.k8s_launcher --preset sd21-base-hpsv21 --set pipeline.distributed=pytorchjob \
        --set pipeline.num_nodes=4 --name rglcd-train-0001          # --dry-run prints the objects instead

Resource conventions (docs/architecture.md 8): PyTorchJob kubeflow.org/v1 (Training Operator v1.9): Master + Worker
replicas, container named `pytorch`, the operator injects MASTER_ADDR/MASTER_PORT and PET_NNODES/
PET_NPROC_PER_NODE/PET_NODE_RANK, which torchrun reads. TrainJob trainer.kubeflow.org/v1alpha1 (Kubeflow
Trainer v2): `runtimeRef` torch-distributed, `trainer.numNodes/resourcesPerNode/numProcPerNode`, pod-level
settings through `runtimePatches` on the runtime's replicated job and container, both named `node`.

Every pod runs `torchrun --module rglcd train --config /etc/rglcd/config.yaml`, the config being the caller's,
resolved, in a ConfigMap owned by the job (deleted with it). Outputs go to the checkpoint PVC under
/checkpoints/<name>, model caches to the model-cache PVC at /cache.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml
from kubernetes import client, config as kube_config, watch

from components.runtime import CHECKPOINT_MOUNT as CHECKPOINT_DIR, MODEL_CACHE_MOUNT as CACHE_DIR
from rglcd.config import Config, dump_config
from rglcd.config.args import add_config_args, config_from_args

CONFIG_DIR = "/etc/rglcd"
FIELD_MANAGER = "rglcd-launcher"
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME = 45      # pods are named <name>-worker-<i> (PyTorchJob) / <name>-node-0-<i>-xxxxx (JobSet): <= 63


@dataclass(frozen=True)
class JobKind:
    """A distributed-training custom resource: where it lives and how its pods and end states are named."""
    kind: str
    group: str
    version: str
    plural: str
    pod_label: str          # label the operator puts on the job's pods, value = job name
    succeeded: str          # condition type that means success
    failed: str = "Failed"


# Every API call this module makes, as RBAC (apiGroup, resource, verb); the Role in manifests/base/rbac.yaml
# grants each one (tests/test_manifests.py checks it, tests/test_cluster.py checks the server agrees).
PERMISSIONS = tuple((g, r, v) for g, r in (("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs"))
                    for v in ("create", "get", "list", "watch", "delete")) + (
    ("", "configmaps", "create"), ("", "pods", "list"), ("", "events", "list"))

PYTORCHJOB = JobKind("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", "training.kubeflow.org/job-name", "Succeeded")
TRAINJOB = JobKind("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "jobset.sigs.k8s.io/jobset-name",
                   "Complete")
KINDS = {"pytorchjob": PYTORCHJOB, "trainjob": TRAINJOB}


class LaunchError(RuntimeError):
    """The job could not be created or did not finish well; the message says what to change."""


class Forbidden(LaunchError):
    """RBAC refused a call (HTTP 403)."""


class Unschedulable(LaunchError):
    """Training pods stayed unschedulable (FailedScheduling) longer than allowed."""


class JobFailed(LaunchError):
    """The job reached its Failed condition."""


@dataclass
class JobResult:
    name: str
    namespace: str
    kind: str
    state: str                                   # the success condition type, e.g. "Succeeded"
    output_dir: str                              # train.output_dir inside the pods (on the checkpoint PVC)
    seconds: float
    pod_nodes: dict[str, str] = field(default_factory=dict)    # pod name -> node it ran on


# ---------------------------------------------------------------------------------------------------------
# Building the objects (pure: config in, plain dicts out)
# ---------------------------------------------------------------------------------------------------------

def check_name(name: str) -> str:
    """A job name every resource derived from it accepts (RFC 1035 label, short enough for pod names)."""
    if not _NAME_RE.match(name) or len(name) > _MAX_NAME:
        raise LaunchError(f"job name {name!r} is not allowed; allowed: lowercase letters, digits and '-', "
                          f"starting with a letter, at most {_MAX_NAME} characters")
    return name


def job_kind(cfg: Config) -> JobKind:
    if cfg.pipeline.distributed not in KINDS:
        raise LaunchError(f"pipeline.distributed: {cfg.pipeline.distributed!r} launches no job; "
                          f"allowed here: {', '.join(KINDS)}")
    return KINDS[cfg.pipeline.distributed]


def pod_config(cfg: Config, name: str) -> Config:
    """The config the pods run: the caller's, with outputs and caches on the mounted volumes."""
    out = copy.deepcopy(cfg)
    out.train.output_dir = f"{CHECKPOINT_DIR}/{name}"
    if cfg.pipeline.model_cache_pvc:
        out.model.cache_dir = f"{CACHE_DIR}/rglcd"
    return out


def build_config_map(cfg: Config, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{name}-config", "namespace": cfg.pipeline.namespace,
                         "labels": {"app.kubernetes.io/part-of": "rglcd", "rglcd/job": name}},
            "data": {"config.yaml": dump_config(pod_config(cfg, name))}}


def train_command(kind: JobKind, train_args: tuple[str, ...] = ()) -> list[str]:
    """torchrun reads --nnodes/--nproc_per_node/--node_rank from the PET_* env both operators inject; the v1
    operator sets MASTER_ADDR/MASTER_PORT but no PET_MASTER_*, so those are passed explicitly."""
    rendezvous = ["--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)"] if kind is PYTORCHJOB else []
    return ["torchrun", *rendezvous, "--module", "rglcd", "train", "--config", f"{CONFIG_DIR}/config.yaml",
            *train_args]


def _volumes(cfg: Config, name: str) -> tuple[list[dict], list[dict]]:
    """(volumes, mounts): memory-backed /dev/shm, checkpoint PVC, model-cache PVC, the config."""
    p = cfg.pipeline
    vols = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": p.shm_size}},
            {"name": "checkpoints", "persistentVolumeClaim": {"claimName": p.checkpoint_pvc}},
            {"name": "config", "configMap": {"name": f"{name}-config"}}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "checkpoints", "mountPath": CHECKPOINT_DIR},
              {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    if p.model_cache_pvc:
        vols.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": p.model_cache_pvc}})
        mounts.append({"name": "model-cache", "mountPath": CACHE_DIR})
    return vols, mounts


def _scheduling(cfg: Config) -> dict[str, Any]:
    """Node selector and GPU-taint toleration of the GPU pool (none for CPU-only training)."""
    p, out = cfg.pipeline, {}
    if p.node_selector:
        out["nodeSelector"] = dict(p.node_selector)
    if p.gpus > 0:
        out["tolerations"] = [{"key": p.gpu_toleration_key, "operator": "Exists", "effect": "NoSchedule"}]
    return out


def _resources(cfg: Config) -> dict[str, Any]:
    return {"limits": {cfg.pipeline.accelerator: str(cfg.pipeline.gpus)}} if cfg.pipeline.gpus > 0 else {}


_POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}
_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def build_pytorchjob(cfg: Config, name: str, train_args: tuple[str, ...] = (),
                     annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """PyTorchJob with 1 Master + (num_nodes - 1) Workers, `pipeline.gpus` GPUs and processes per node."""
    p = cfg.pipeline
    vols, mounts = _volumes(cfg, name)
    container = {"name": "pytorch", "image": p.image, "command": train_command(PYTORCHJOB, train_args),
                 "resources": _resources(cfg), "volumeMounts": mounts, "securityContext": _CONTAINER_SECURITY}
    if p.s3_secret:
        container["envFrom"] = [{"secretRef": {"name": p.s3_secret}}]
    template = {"metadata": {"annotations": dict(annotations or {})},
                "spec": {"serviceAccountName": p.service_account, **_scheduling(cfg),
                         "securityContext": _POD_SECURITY, "containers": [container], "volumes": vols}}
    replicas = {"Master": 1, "Worker": p.num_nodes - 1}
    specs = {role: {"replicas": n, "restartPolicy": "OnFailure", "template": copy.deepcopy(template)}
             for role, n in replicas.items() if n > 0}
    return {"apiVersion": f"{PYTORCHJOB.group}/{PYTORCHJOB.version}", "kind": PYTORCHJOB.kind,
            "metadata": {"name": name, "namespace": p.namespace, "labels": {"app.kubernetes.io/part-of": "rglcd"}},
            "spec": {"nprocPerNode": str(max(p.gpus, 1)),
                     "runPolicy": {"backoffLimit": p.retries, "cleanPodPolicy": "None"},
                     "pytorchReplicaSpecs": specs}}


def _s3_env(secret: str) -> list[dict[str, Any]]:
    """The S3 Secret as env (TrainJob's trainer has env but no envFrom)."""
    keys = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"]
    return [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k,
                                                         "optional": k not in keys[:2]}}} for k in keys]


def build_trainjob(cfg: Config, name: str, train_args: tuple[str, ...] = (),
                   annotations: dict[str, str] | None = None, runtime: str = "torch-distributed") -> dict[str, Any]:
    """TrainJob on the `torch-distributed` ClusterTrainingRuntime; pod settings via runtimePatches."""
    p = cfg.pipeline
    vols, mounts = _volumes(cfg, name)
    trainer = {"image": p.image, "command": train_command(TRAINJOB, train_args), "numNodes": p.num_nodes,
               "numProcPerNode": max(p.gpus, 1), "resourcesPerNode": _resources(cfg)}
    if p.s3_secret:
        trainer["env"] = _s3_env(p.s3_secret)
    pod = {"metadata": {"annotations": dict(annotations or {})},
           "spec": {"serviceAccountName": p.service_account, **_scheduling(cfg), "securityContext": _POD_SECURITY,
                    "volumes": vols, "containers": [{"name": "node", "volumeMounts": mounts,
                                                      "securityContext": _CONTAINER_SECURITY}]}}
    patch = {"manager": FIELD_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": "node", "template": {"spec": {"template": pod}}}]}}}}
    return {"apiVersion": f"{TRAINJOB.group}/{TRAINJOB.version}", "kind": TRAINJOB.kind,
            "metadata": {"name": name, "namespace": p.namespace, "labels": {"app.kubernetes.io/part-of": "rglcd"}},
            "spec": {"runtimeRef": {"name": runtime}, "trainer": trainer, "runtimePatches": [patch]}}


def build_job(cfg: Config, name: str, train_args: tuple[str, ...] = (),
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
    builder = build_pytorchjob if job_kind(cfg) is PYTORCHJOB else build_trainjob
    return builder(cfg, check_name(name), train_args, annotations)


# ---------------------------------------------------------------------------------------------------------
# Talking to the cluster
# ---------------------------------------------------------------------------------------------------------

def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster credentials (the pod's ServiceAccount) when there are any, else the kubeconfig."""
    if kubeconfig is None:
        try:
            kube_config.load_incluster_config()
            return client.ApiClient()
        except kube_config.ConfigException:
            pass
    return kube_config.new_client_from_config(config_file=kubeconfig)


def _api_message(err: client.ApiException) -> str:
    try:
        return json.loads(err.body).get("message", err.reason)
    except (TypeError, ValueError):
        return str(err.reason)


def _explain(err: client.ApiException, what: str, cfg_hint: str) -> LaunchError:
    """Turn an API error into a LaunchError that says what to do about it."""
    msg = _api_message(err)
    if err.status == 403:
        return Forbidden(f"{what}: forbidden by RBAC ({msg}). Run as ServiceAccount {cfg_hint} and apply its Role "
                         "(manifests/base/rbac.yaml: kubectl apply -k manifests/overlays/<env>)")
    if err.status == 404:
        return LaunchError(f"{what}: not found ({msg}); is the CRD installed (Kubeflow Training Operator for "
                           "PyTorchJob, Kubeflow Trainer for TrainJob) and does the namespace exist?")
    if err.status == 409:
        return LaunchError(f"{what}: already exists ({msg}); pick another job name or delete the old job")
    return LaunchError(f"{what}: HTTP {err.status}: {msg}")


def launch(api: client.ApiClient, cfg: Config, name: str, train_args: tuple[str, ...] = (),
           annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """Create the job, then its ConfigMap owned by it (garbage-collected with the job). Returns the job."""
    kind, body = job_kind(cfg), build_job(cfg, name, train_args, annotations)
    ns, sa = cfg.pipeline.namespace, f"{cfg.pipeline.namespace}/{cfg.pipeline.service_account}"
    objects = client.CustomObjectsApi(api)
    try:
        job = objects.create_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, body)
    except client.ApiException as err:
        raise _explain(err, f"create {kind.kind} {ns}/{name}", sa) from None
    cm = build_config_map(cfg, name)
    cm["metadata"]["ownerReferences"] = [{"apiVersion": body["apiVersion"], "kind": kind.kind, "name": name,
                                          "uid": job["metadata"]["uid"]}]
    try:
        client.CoreV1Api(api).create_namespaced_config_map(ns, cm)
    except client.ApiException as err:
        delete(api, kind, ns, name)
        raise _explain(err, f"create ConfigMap {ns}/{name}-config", sa) from None
    return job


def job_exists(api: client.ApiClient, cfg: Config, name: str) -> bool:
    """Whether the job `name` exists (e.g. created by an earlier attempt of a retried launcher pod)."""
    kind, ns = job_kind(cfg), cfg.pipeline.namespace
    try:
        client.CustomObjectsApi(api).get_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, name)
    except client.ApiException as err:
        if err.status == 404:
            return False
        raise _explain(err, f"get {kind.kind} {ns}/{name}", f"{ns}/{cfg.pipeline.service_account}") from None
    return True


def delete(api: client.ApiClient, kind: JobKind, namespace: str, name: str) -> None:
    """Delete the job and (through garbage collection) its pods and ConfigMap; a missing job is fine."""
    try:
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            kind.group, kind.version, namespace, kind.plural, name, propagation_policy="Background")
    except client.ApiException as err:
        if err.status != 404:
            raise _explain(err, f"delete {kind.kind} {namespace}/{name}", "with delete rights") from None


def job_state(kind: JobKind, job: dict[str, Any]) -> str | None:
    """The terminal condition type that is True (success or failure), else None."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in (kind.succeeded, kind.failed):
            return cond["type"]
    return None


def _failure_message(job: dict[str, Any], kind: JobKind) -> str:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind.failed:
            return f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
    return "no reason given"


_HINTS = (("Insufficient {acc}", "no node of the pool has {gpus} free {acc} (pipeline.gpus) - lower it, or add nodes"),
          ("didn't tolerate", "the pods tolerate taint key {tol!r} (pipeline.gpu_toleration_key); the pool's "
                              "taint differs"),
          ("node affinity", "no node matches pipeline.node_selector {sel}"),
          ("didn't match", "no node matches pipeline.node_selector {sel}"),
          ("unbound immediate PersistentVolumeClaims", "a PVC is unbound: check pipeline.checkpoint_pvc and "
                                                       "pipeline.model_cache_pvc exist in the namespace"))


def scheduling_problems(api: client.ApiClient, kind: JobKind, namespace: str, name: str) -> dict[str, str]:
    """Pod name -> scheduler message for every pending pod of the job the scheduler could not place.

    The message comes from the pod's FailedScheduling event (e.g. "0/3 nodes are available: 3 Insufficient
    nvidia.com/gpu.") or, when events were already pruned, its PodScheduled=False condition."""
    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(namespace, label_selector=f"{kind.pod_label}={name}").items
    out = {}
    for pod in pods:
        if pod.status.phase != "Pending" or pod.spec.node_name:
            continue
        cond = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
        events = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={pod.metadata.name},reason=FailedScheduling").items
        if events:
            latest = max(events, key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
            out[pod.metadata.name] = latest.message
        elif cond is not None and cond.status == "False" and cond.reason == "Unschedulable":
            out[pod.metadata.name] = cond.message
    return out


def _unschedulable_error(cfg: Config, problems: dict[str, str], waited: float) -> Unschedulable:
    p = cfg.pipeline
    text = "; ".join(f"{pod}: {msg}" for pod, msg in sorted(problems.items()))
    values = {"gpus": p.gpus, "acc": p.accelerator, "tol": p.gpu_toleration_key, "sel": p.node_selector}
    hints = {hint.format(**values) for key, hint in _HINTS if key.format(**values) in text}
    return Unschedulable(f"training pods unschedulable for {waited:.0f} s: {text}"
                         + (f" -> {'; '.join(sorted(hints))}" if hints else ""))


def _pod_nodes(api: client.ApiClient, kind: JobKind, namespace: str, name: str) -> dict[str, str]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"{kind.pod_label}={name}").items
    return {p.metadata.name: p.spec.node_name for p in pods if p.spec.node_name}


def wait(api: client.ApiClient, cfg: Config, name: str, timeout: float | None = None,
         unschedulable_timeout: float = 600.0, poll: int = 5,
         log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> JobResult:
    """Watch the job until its success condition (returns) or its Failed condition (raises JobFailed).

    Between watch windows of `poll` s the job's pods are checked for FailedScheduling; pods unschedulable for
    `unschedulable_timeout` s (time for a cluster autoscaler to add nodes) raise Unschedulable."""
    kind, ns, t0 = job_kind(cfg), cfg.pipeline.namespace, time.monotonic()
    objects, first_seen, last = client.CustomObjectsApi(api), {}, None
    what = f"watch {kind.kind} {ns}/{name}"
    while True:
        stream = watch.Watch().stream(objects.list_namespaced_custom_object, kind.group, kind.version, ns,
                                      kind.plural, field_selector=f"metadata.name={name}", timeout_seconds=poll)
        try:
            for event in stream:
                job, state = event["object"], job_state(kind, event["object"])
                if event["type"] == "DELETED":
                    raise LaunchError(f"{kind.kind} {ns}/{name} was deleted before it finished")
                if state == kind.succeeded:
                    return JobResult(name, ns, kind.kind, state, f"{CHECKPOINT_DIR}/{name}",
                                     time.monotonic() - t0, _pod_nodes(api, kind, ns, name))
                if state == kind.failed:
                    raise JobFailed(f"{kind.kind} {ns}/{name} failed: {_failure_message(job, kind)}")
            problems = scheduling_problems(api, kind, ns, name)
        except client.ApiException as err:
            raise _explain(err, what, f"{ns}/{cfg.pipeline.service_account}") from None
        now = time.monotonic()
        first_seen = {pod: first_seen.get(pod, now) for pod in problems}
        stuck = {pod: msg for pod, msg in problems.items() if now - first_seen[pod] >= unschedulable_timeout}
        if stuck:
            raise _unschedulable_error(cfg, stuck, max(now - first_seen[p] for p in stuck))
        if problems and problems != last:
            log(f"{kind.kind} {name}: waiting for nodes: {'; '.join(sorted(set(problems.values())))}")
        last = problems
        if timeout is not None and now - t0 > timeout:
            raise LaunchError(f"{kind.kind} {ns}/{name} did not finish within {timeout:.0f} s")


def run(cfg: Config, name: str, api: client.ApiClient | None = None, train_args: tuple[str, ...] = (),
        annotations: dict[str, str] | None = None, timeout: float | None = None,
        unschedulable_timeout: float = 600.0, delete_on_failure: bool = True) -> JobResult:
    """Launch, watch to the end, and (by default) delete a job that cannot finish (unschedulable/timeout)."""
    api = api or api_client()
    launch(api, cfg, name, train_args, annotations)
    try:
        return wait(api, cfg, name, timeout, unschedulable_timeout)
    except LaunchError as err:          # a failed job stays for its logs; a stuck one is cleaned up
        if delete_on_failure and not isinstance(err, (JobFailed, Forbidden)):
            delete(api, job_kind(cfg), cfg.pipeline.namespace, name)
        raise


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.k8s_launcher", description=__doc__.split("\n")[0])
    add_config_args(parser, default_preset="sd21-base-hpsv21")
    parser.add_argument("--name", required=True, help="job name (RFC 1035 label)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the job and its ConfigMap as YAML, create nothing")
    parser.add_argument("--no-wait", action="store_true", help="create the job and return")
    parser.add_argument("--timeout", type=float, help="give up after this many seconds")
    parser.add_argument("--unschedulable-timeout", type=float, default=600.0,
                        help="fail when pods stay unschedulable this long (default: %(default)s s)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    parser.add_argument("train_args", nargs="*", help="extra arguments for `rglcd train` (after --)")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.dry_run:
            docs = [build_job(cfg, args.name, tuple(args.train_args)), build_config_map(cfg, args.name)]
            print(yaml.safe_dump_all(docs, sort_keys=False), end="")
            return 0
        api = api_client(args.kubeconfig)
        if args.no_wait:
            launch(api, cfg, args.name, tuple(args.train_args))
            print(f"created {job_kind(cfg).kind} {cfg.pipeline.namespace}/{args.name}")
            return 0
        result = run(cfg, args.name, api, tuple(args.train_args), timeout=args.timeout,
                     unschedulable_timeout=args.unschedulable_timeout)
    except (LaunchError, ValueError) as err:
        print(f"k8s_launcher: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result.__dict__, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
