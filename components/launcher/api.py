"""The launcher's calls to the Kubernetes API: create the job and its ConfigMap, watch the job to its end,
explain why pods do not schedule, delete the job (on cancel, SIGTERM, timeout or an unschedulable job).

Every call is one `kubernetes` client call; PERMISSIONS lists them as RBAC rules, and the launcher's Role in
manifests/base/rbac.yaml grants exactly these (tests/test_cluster.py checks each by SubjectAccessReview).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from kubernetes import client, config as kube_config, watch

from components import podspec
from components.launcher.objects import (JobKind, LaunchError, build_config_map, build_job, job_kind)
from rglcd.config import Config

LAUNCHER_TOKEN_DIR = podspec.LAUNCHER_TOKEN_DIR

PERMISSIONS = tuple((g, r, v) for g, r in (("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs"))
                    for v in ("create", "get", "list", "watch", "delete")) + (
    ("", "configmaps", "create"), ("", "pods", "list"), ("", "events", "list"))


class Forbidden(LaunchError):
    """RBAC refused a call (HTTP 403)."""


class Unschedulable(LaunchError):
    """Training pods stayed unschedulable (FailedScheduling) longer than allowed."""


class JobFailed(LaunchError):
    """The job reached its Failed condition."""


class Cancelled(LaunchError):
    """The launcher was told to stop (SIGTERM: the KFP run was cancelled); the job was deleted."""


@dataclass
class JobResult:
    name: str
    namespace: str
    kind: str
    state: str                                   # the success condition type, e.g. "Succeeded"
    output_dir: str                              # train.output_dir inside the pods (on the checkpoint PVC)
    seconds: float
    pod_nodes: dict[str, str] = field(default_factory=dict)    # pod name -> node it ran on


def api_client(kubeconfig: str | None = None, token_dir: str = LAUNCHER_TOKEN_DIR) -> client.ApiClient:
    """The launcher identity's token when its Secret is mounted at `token_dir`, else in-cluster credentials
    (the pod's ServiceAccount), else the kubeconfig."""
    if kubeconfig is None and (Path(token_dir) / "token").is_file():
        conf = client.Configuration()
        conf.host = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
        conf.ssl_ca_cert = str(Path(token_dir) / "ca.crt")
        conf.api_key = {"authorization": (Path(token_dir) / "token").read_text().strip()}
        conf.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(conf)
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


def _explain(err: client.ApiException, what: str) -> LaunchError:
    """Turn an API error into a LaunchError that says what to do about it."""
    msg = _api_message(err)
    if err.status == 403:
        return Forbidden(f"{what}: forbidden by RBAC ({msg}). The launcher needs the Role rglcd-launcher "
                         "(manifests/base/rbac.yaml; kubectl apply -k manifests/overlays/<mode>) and its token "
                         "Secret pipeline.launcher_token_secret")
    if err.status == 404:
        return LaunchError(f"{what}: not found ({msg}); is the CRD installed (Kubeflow Training Operator for "
                           "PyTorchJob, Kubeflow Trainer for TrainJob) and does the namespace exist?")
    if err.status == 409:
        return LaunchError(f"{what}: already exists ({msg}); pick another job name or delete the old job")
    return LaunchError(f"{what}: HTTP {err.status}: {msg}")


def launch(api: client.ApiClient, cfg: Config, name: str, train_args: tuple[str, ...] = (),
           annotations: dict[str, str] | None = None, owner: dict[str, str] | None = None) -> dict[str, Any]:
    """Create the job, then its ConfigMap owned by it (garbage-collected with the job). Returns the job."""
    kind, body, ns = job_kind(cfg), build_job(cfg, name, train_args, annotations, owner), cfg.pipeline.namespace
    objects = client.CustomObjectsApi(api)
    try:
        job = objects.create_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, body)
    except client.ApiException as err:
        raise _explain(err, f"create {kind.kind} {ns}/{name}") from None
    cm = build_config_map(cfg, name)
    cm["metadata"]["ownerReferences"] = [{"apiVersion": body["apiVersion"], "kind": kind.kind, "name": name,
                                          "uid": job["metadata"]["uid"]}]
    try:
        client.CoreV1Api(api).create_namespaced_config_map(ns, cm)
    except client.ApiException as err:
        delete(api, kind, ns, name)
        raise _explain(err, f"create ConfigMap {ns}/{name}-config") from None
    return job


def job_exists(api: client.ApiClient, cfg: Config, name: str) -> bool:
    """Whether the job `name` exists (e.g. created by an earlier attempt of a retried launcher pod)."""
    kind, ns = job_kind(cfg), cfg.pipeline.namespace
    try:
        client.CustomObjectsApi(api).get_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, name)
    except client.ApiException as err:
        if err.status == 404:
            return False
        raise _explain(err, f"get {kind.kind} {ns}/{name}") from None
    return True


def delete(api: client.ApiClient, kind: JobKind, namespace: str, name: str) -> None:
    """Delete the job and (through garbage collection) its pods and ConfigMap; a missing job is fine."""
    try:
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            kind.group, kind.version, namespace, kind.plural, name, propagation_policy="Background")
    except client.ApiException as err:
        if err.status != 404:
            raise _explain(err, f"delete {kind.kind} {namespace}/{name}") from None


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
          ("didn't tolerate", "the pods tolerate the taints {taints} (pipeline.gpu_taints); the pool's taints differ"),
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
    values = {"gpus": p.gpus, "acc": p.accelerator, "taints": p.gpu_taints, "sel": p.node_selector}
    hints = {hint.format(**values) for key, hint in _HINTS if key.format(**values) in text}
    return Unschedulable(f"training pods unschedulable for {waited:.0f} s: {text}"
                         + (f" -> {'; '.join(sorted(hints))}" if hints else ""))


def _pod_nodes(api: client.ApiClient, kind: JobKind, namespace: str, name: str) -> dict[str, str]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"{kind.pod_label}={name}").items
    return {p.metadata.name: p.spec.node_name for p in pods if p.spec.node_name}


def _watch_window(api: client.ApiClient, cfg: Config, name: str, poll: int, t0: float) -> JobResult | None:
    """One watch window of `poll` s: the result on success, JobFailed on failure, None when still running."""
    kind, ns = job_kind(cfg), cfg.pipeline.namespace
    stream = watch.Watch().stream(client.CustomObjectsApi(api).list_namespaced_custom_object, kind.group,
                                  kind.version, ns, kind.plural, field_selector=f"metadata.name={name}",
                                  timeout_seconds=poll)
    for event in stream:
        job, state = event["object"], job_state(kind, event["object"])
        if event["type"] == "DELETED":
            raise LaunchError(f"{kind.kind} {ns}/{name} was deleted before it finished")
        if state == kind.succeeded:
            return JobResult(name, ns, kind.kind, state, f"{podspec.CHECKPOINT_MOUNT}/{name}",
                             time.monotonic() - t0, _pod_nodes(api, kind, ns, name))
        if state == kind.failed:
            raise JobFailed(f"{kind.kind} {ns}/{name} failed: {_failure_message(job, kind)}")
    return None


def wait(api: client.ApiClient, cfg: Config, name: str, timeout: float | None = None,
         unschedulable_timeout: float = 600.0, poll: int = 5,
         log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> JobResult:
    """Watch the job until its success condition (returns) or its Failed condition (raises JobFailed).

    Between watch windows of `poll` s the job's pods are checked for FailedScheduling; pods unschedulable for
    `unschedulable_timeout` s (time for a cluster autoscaler to add nodes) raise Unschedulable."""
    kind, ns, t0 = job_kind(cfg), cfg.pipeline.namespace, time.monotonic()
    first_seen: dict[str, float] = {}
    last = None
    while True:
        try:
            result = _watch_window(api, cfg, name, poll, t0)
            if result is not None:
                return result
            problems = scheduling_problems(api, kind, ns, name)
        except client.ApiException as err:
            raise _explain(err, f"watch {kind.kind} {ns}/{name}") from None
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


@contextmanager
def delete_on_sigterm(api: client.ApiClient, cfg: Config, name: str) -> Iterator[None]:
    """While inside, SIGTERM (or Ctrl-C) deletes the job and raises Cancelled: when a KFP run is cancelled, Argo
    stops the launcher's pod with SIGTERM, and the multi-node job must not outlive it."""
    def stop(signum: int, frame: Any) -> None:
        delete(api, job_kind(cfg), cfg.pipeline.namespace, name)
        raise Cancelled(f"{job_kind(cfg).kind} {cfg.pipeline.namespace}/{name} deleted: the launcher was stopped "
                        f"(signal {signum})")
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(cfg: Config, name: str, api: client.ApiClient | None = None, train_args: tuple[str, ...] = (),
        annotations: dict[str, str] | None = None, timeout: float | None = None,
        unschedulable_timeout: float = 600.0, owner: dict[str, str] | None = None,
        attach: bool = False) -> JobResult:
    """Launch (or, with `attach`, re-attach to an existing job), watch to the end, and delete the job when it
    cannot finish (unschedulable, timeout, SIGTERM). A failed job stays for its logs (its owner pod's deletion
    removes it). `timeout` defaults to pipeline.train_timeout plus ten minutes of scheduling."""
    api = api or api_client()
    timeout = cfg.pipeline.train_timeout + 600 if timeout is None else timeout
    with delete_on_sigterm(api, cfg, name):
        if not attach:
            launch(api, cfg, name, train_args, annotations, owner)
        try:
            return wait(api, cfg, name, timeout, unschedulable_timeout)
        except (Unschedulable, LaunchError) as err:
            if not isinstance(err, (JobFailed, Forbidden, Cancelled)):
                delete(api, job_kind(cfg), cfg.pipeline.namespace, name)
            raise
