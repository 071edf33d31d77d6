"""A kwok-like fake kubelet: registers GPU nodes shaped like an overlay's GPU pool (labels, taints,
`nvidia.com/gpu` capacity) plus plain CPU nodes, then drives the phase of the pods bound to them.

Pending -> Running at once; Running -> Succeeded after --run-seconds, or Failed when the pod annotation
`fake-kubelet/exit-code` is non-zero; pods being deleted are removed (grace 0) as a kubelet would once the
containers stopped. The real scheduler decides which pods reach which node. (docs/architecture.md 9.3)

Distributed-training pods (env PET_NNODES=n, one owner) behave like torchrun's static rendezvous: their clock
starts only once all n pods of the owner run, so no rank finishes before every rank was scheduled.
"""
from __future__ import annotations

import argparse
import datetime
import time
from collections import Counter

import yaml
from kubernetes import client, config

EXIT_CODE = "fake-kubelet/exit-code"
RUN_SECONDS = "fake-kubelet/run-seconds"     # per-pod override of --run-seconds (a long job to cancel)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def register(v1: client.CoreV1Api, name: str, labels: dict, taints: list, gpus: int) -> None:
    capacity = {"cpu": "96", "memory": "1000Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    body = {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                  "kubernetes.io/arch": "amd64", **labels}},
            "spec": {"taints": taints}}
    try:
        v1.create_node(body)
    except client.ApiException as err:
        if err.status != 409:
            raise
    v1.patch_node_status(name, {"status": {
        "capacity": capacity, "allocatable": capacity,
        "conditions": [{"type": "Ready", "status": "True", "reason": "FakeKubeletReady",
                        "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "nodeInfo": {"kubeletVersion": "fake", "architecture": "amd64", "operatingSystem": "linux",
                     "containerRuntimeVersion": "fake", "kernelVersion": "", "kubeProxyVersion": "fake",
                     "machineID": "", "osImage": "", "systemUUID": "", "bootID": ""}}})
    # TaintNodesByCondition adds node.kubernetes.io/not-ready on create and the node-lifecycle controller
    # (not run: no heartbeats) would lift it once Ready; do it here.
    v1.patch_node(name, {"spec": {"taints": taints or None}})


def container_states(pod, state: dict) -> list[dict]:
    return [{"name": c.name, "image": c.image, "imageID": "", "ready": "running" in state, "restartCount": 0,
             "state": state} for c in pod.spec.containers]


def ranks(pod) -> int:
    env = {e.name: e.value for c in pod.spec.containers for e in c.env or []}
    return int(env.get("PET_NNODES") or 1)


def rendezvous(pods: list) -> dict[str, bool]:
    """Pod uid -> whether all ranks of its distributed job (same owner, PET_NNODES of them) run or are done;
    pods that are not ranks of a multi-node job are absent."""
    up = Counter(p.metadata.owner_references[0].uid for p in pods
                 if p.metadata.owner_references and p.status.phase in ("Running", "Succeeded"))
    return {p.metadata.uid: up[p.metadata.owner_references[0].uid] >= ranks(p)
            for p in pods if p.metadata.owner_references and ranks(p) > 1}


def step(v1: client.CoreV1Api, nodes: set[str], started: dict[str, float], run_seconds: float) -> None:
    """One pass over the pods bound to our nodes."""
    pods = v1.list_pod_for_all_namespaces().items
    joined = rendezvous(pods)
    for pod in pods:
        if pod.spec.node_name not in nodes:
            continue
        ns, name, uid = pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
        if pod.metadata.deletion_timestamp:
            try:
                v1.delete_namespaced_pod(name, ns, grace_period_seconds=0)
            except client.ApiException:
                pass
        elif pod.status.phase == "Pending":
            v1.patch_namespaced_pod_status(name, ns, {"status": {
                "phase": "Running", "startTime": now(), "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                "conditions": [{"type": t, "status": "True", "lastTransitionTime": now()}
                               for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
                "containerStatuses": container_states(pod, {"running": {"startedAt": now()}})}})
        elif pod.status.phase == "Running" and not joined.get(uid, True):
            started.pop(uid, None)              # waiting at the rendezvous: the clock has not started
        elif pod.status.phase == "Running" and pod.spec.restart_policy != "Always" \
                and time.monotonic() - started.setdefault(uid, time.monotonic()) > float((pod.metadata.annotations or {}).get(RUN_SECONDS, run_seconds)):
            code = int((pod.metadata.annotations or {}).get(EXIT_CODE, "0"))
            v1.patch_namespaced_pod_status(name, ns, {"status": {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now()}],
                "containerStatuses": container_states(pod, {"terminated": {
                    "exitCode": code, "reason": "Completed" if code == 0 else "Error",
                    "startedAt": now(), "finishedAt": now()}})}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--pool", required=True, help="an overlay's pipeline.yaml (pipeline.node_selector, gpu_taints)")
    ap.add_argument("--gpu-nodes", type=int, default=2)
    ap.add_argument("--gpus", type=int, default=8, help="nvidia.com/gpu per GPU node")
    ap.add_argument("--cpu-nodes", type=int, default=1)
    ap.add_argument("--run-seconds", type=float, default=2.0)
    args = ap.parse_args()
    config.load_kube_config(args.kubeconfig)
    v1 = client.CoreV1Api()
    pool = yaml.safe_load(open(args.pool))["pipeline"]
    taints = []
    for text in pool.get("gpu_taints", []):          # key[=value]:Effect, as rglcd.config.kube.parse_taint reads it
        spec, _, effect = text.rpartition(":")
        key, _, value = spec.partition("=")
        taints.append({"key": key, "effect": effect, **({"value": value} if value else {})})
    nodes = set()
    for i in range(args.gpu_nodes):
        register(v1, f"gpu-node-{i}", pool.get("node_selector", {}), taints, args.gpus)
        nodes.add(f"gpu-node-{i}")
    for i in range(args.cpu_nodes):
        register(v1, f"cpu-node-{i}", {}, [], 0)
        nodes.add(f"cpu-node-{i}")
    print("nodes ready:", sorted(nodes), flush=True)
    started: dict[str, float] = {}
    while True:
        try:
            step(v1, nodes, started, args.run_seconds)
        except client.ApiException as err:      # a pod deleted between list and patch: next pass
            print("retry:", err.status, err.reason, flush=True)
        time.sleep(0.3)


if __name__ == "__main__":
    main()
