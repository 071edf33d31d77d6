"""A stand-in for the Kubeflow Training Operator (PyTorchJob) and Trainer (TrainJob) controllers: creates each
job's pods the way the real controllers name, label and configure them, and mirrors the pods' phases into the
job's status conditions. The real scheduler places the pods; the fake kubelet runs them.

PyTorchJob (training-operator v1.9, docs/architecture.md 8.2): pods <job>-master-0, <job>-worker-<i>, labels
training.kubeflow.org/{job-name,replica-type,replica-index}, env MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK and
PET_NNODES/PET_NPROC_PER_NODE/PET_NODE_RANK; conditions Created, Running, Succeeded | Failed.
TrainJob (Trainer v2, docs/architecture.md 8.3, torch-distributed runtime): pods <job>-node-0-<i>, label jobset.sigs.k8s.io/jobset-name,
container `node` from spec.trainer plus the runtimePatches, env PET_*; conditions Complete | Failed.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import time

from kubernetes import client, config

PORT = 23456


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _env(container: dict, values: dict[str, str]) -> None:
    container["env"] = [e for e in container.get("env", []) if e["name"] not in values] + \
        [{"name": k, "value": v} for k, v in values.items()]


def pytorchjob_pods(job: dict) -> list[dict]:
    name, spec = job["metadata"]["name"], job["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    nnodes = sum(r.get("replicas", 1) for r in replicas.values())
    nproc = spec.get("nprocPerNode", "1")
    pods = []
    for role in ("Master", "Worker"):
        for i in range(replicas.get(role, {}).get("replicas", 0)):
            template = copy.deepcopy(replicas[role]["template"])
            rank = i if role == "Master" else i + 1
            env = {"MASTER_ADDR": f"{name}-master-0", "MASTER_PORT": str(PORT), "WORLD_SIZE": str(nnodes),
                   "RANK": str(rank), "PET_NNODES": str(nnodes), "PET_NPROC_PER_NODE": nproc,
                   "PET_NODE_RANK": str(rank), "PYTHONUNBUFFERED": "1"}
            for c in template["spec"]["containers"]:
                _env(c, env)
            policy = replicas[role].get("restartPolicy", "OnFailure")
            template["spec"]["restartPolicy"] = "Never" if policy == "ExitCode" else policy
            labels = {"training.kubeflow.org/job-name": name, "training.kubeflow.org/replica-type": role.lower(),
                      "training.kubeflow.org/replica-index": str(i),
                      "training.kubeflow.org/operator-name": "pytorchjob-controller"}
            pods.append(_pod(job, f"{name}-{role.lower()}-{i}", labels, template))
    return pods


def trainjob_pods(job: dict) -> list[dict]:
    name, spec = job["metadata"]["name"], job["spec"]
    trainer = spec.get("trainer", {})
    nnodes = trainer.get("numNodes", 1)
    template = {"metadata": {}, "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "node"}]}}
    for patch in spec.get("runtimePatches", []):
        for rjob in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            if rjob["name"] == "node":
                pod = rjob["template"]["spec"]["template"]
                template["metadata"] = copy.deepcopy(pod.get("metadata", {}))
                patched = copy.deepcopy(pod.get("spec", {}))
                containers = {c["name"]: c for c in patched.pop("containers", [])}
                template["spec"].update(patched)
                template["spec"]["containers"][0].update(containers.get("node", {}))
    node = template["spec"]["containers"][0]
    node.update(image=trainer["image"], command=trainer.get("command"), env=trainer.get("env", []),
                resources=trainer.get("resourcesPerNode", {}))
    pods = []
    for i in range(nnodes):
        t = copy.deepcopy(template)
        _env(t["spec"]["containers"][0], {
            "PET_NNODES": str(nnodes), "PET_NPROC_PER_NODE": str(trainer.get("numProcPerNode", 1)),
            "PET_NODE_RANK": str(i), "PET_MASTER_ADDR": f"{name}-node-0-0.{name}", "PET_MASTER_PORT": "29400"})
        pods.append(_pod(job, f"{name}-node-0-{i}", {"jobset.sigs.k8s.io/jobset-name": name}, t))
    return pods


def _pod(job: dict, name: str, labels: dict, template: dict) -> dict:
    meta = template.get("metadata") or {}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {**(meta.get("labels") or {}), **labels},
                         "annotations": meta.get("annotations") or {},
                         "ownerReferences": [{"apiVersion": job["apiVersion"], "kind": job["kind"],
                                              "name": job["metadata"]["name"], "uid": job["metadata"]["uid"],
                                              "controller": True}]},
            "spec": template["spec"]}


KINDS = {  # plural: (group, version, pod builder, label, success condition)
    "pytorchjobs": ("kubeflow.org", "v1", pytorchjob_pods, "training.kubeflow.org/job-name", "Succeeded"),
    "trainjobs": ("trainer.kubeflow.org", "v1alpha1", trainjob_pods, "jobset.sigs.k8s.io/jobset-name", "Complete"),
}


def conditions_for(phases: dict[str, str], first: str, success: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) conditions from pod phases; `first` is the master / rank-0 pod."""
    out = [("Created", "JobCreated", "pods created")]
    failed = sorted(p for p, ph in phases.items() if ph == "Failed")
    if failed:
        return out + [("Failed", "PodFailed", f"pod(s) {', '.join(failed)} failed")]
    if phases.get(first) == "Succeeded":
        return out + [(success, "JobSucceeded", "rank 0 completed")]
    if phases and all(ph in ("Running", "Succeeded") for ph in phases.values()):
        return out + [("Running", "JobRunning", "all pods running")]
    return out


def _suspended(job: dict) -> bool:
    """PyTorchJob runPolicy.suspend / TrainJob spec.suspend: no pods until it is set false."""
    spec = job.get("spec", {})
    return bool(spec.get("runPolicy", {}).get("suspend") or spec.get("suspend"))


def reconcile(co: client.CustomObjectsApi, v1: client.CoreV1Api, plural: str) -> None:
    group, version, build, label, success = KINDS[plural]
    try:
        jobs = co.list_cluster_custom_object(group, version, plural)["items"]
    except client.ApiException as err:
        if err.status == 404:       # CRD not installed (yet)
            return
        raise
    for job in jobs:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        done = {c["type"] for c in (job.get("status") or {}).get("conditions", []) if c.get("status") == "True"}
        if done & {success, "Failed"} or _suspended(job):
            continue
        pods = {p.metadata.name: p.status.phase for p in
                v1.list_namespaced_pod(ns, label_selector=f"{label}={name}").items}
        if not pods:
            built = build(job)
            for pod in built:
                v1.create_namespaced_pod(ns, pod)
            pods = {p["metadata"]["name"]: "Pending" for p in built}
        first = sorted(pods)[0] if plural == "trainjobs" else f"{name}-master-0"
        conds = [{"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": now(),
                  "lastUpdateTime": now()} for t, r, m in conditions_for(pods, first, success)]
        if [c["type"] for c in conds] != [c["type"] for c in (job.get("status") or {}).get("conditions", [])]:
            co.patch_namespaced_custom_object_status(group, version, ns, plural, name,
                                                     {"status": {"conditions": conds}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kubeconfig", required=True)
    args = ap.parse_args()
    config.load_kube_config(args.kubeconfig)
    co, v1 = client.CustomObjectsApi(), client.CoreV1Api()
    print("fake training operator running", flush=True)
    while True:
        for plural in KINDS:
            try:
                reconcile(co, v1, plural)
            except client.ApiException as err:      # objects changing under us: next pass
                print("retry:", plural, err.status, err.reason, flush=True)
        time.sleep(0.3)


if __name__ == "__main__":
    main()
