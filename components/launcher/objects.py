"""The launched job's objects, built from the config: PyTorchJob or TrainJob, and its ConfigMap (pure: config in,
plain dicts out; no API calls).

PyTorchJob kubeflow.org/v1 (Training Operator v1.9, kubeflow/training-operator pkg/apis/kubeflow.org/v1/
pytorch_types.go): Master + Worker replicas, container named `pytorch`; the operator injects MASTER_ADDR/
MASTER_PORT and PET_NNODES/PET_NPROC_PER_NODE/PET_NODE_RANK, which torchrun reads. runPolicy.schedulingPolicy
(minAvailable = all nodes, priorityClass) is what the operator hands to a gang scheduler (Volcano, scheduler-
plugins) when it runs with one.
TrainJob trainer.kubeflow.org/v1alpha1 (Kubeflow Trainer v2, kubeflow/trainer pkg/apis/trainer/v1alpha1/
trainjob_types.go): `runtimeRef` torch-distributed, `trainer.numNodes/resourcesPerNode/numProcPerNode`,
`activeDeadlineSeconds`; pod settings through `runtimePatches` (PodSpecPatch: serviceAccountName, volumes,
containers' env/volumeMounts/securityContext, securityContext, nodeSelector, tolerations - no
priorityClassName: give the runtime one, or use Kueue). Gang admission of either kind: Kueue (queue label).

Every pod runs `torchrun --module rglcd train --config /etc/rglcd/config.yaml`, the config being the caller's,
resolved, in a ConfigMap owned by the job. Pod settings come from components/podspec.py.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from components import podspec
from rglcd.config import Config, dump_config

FIELD_MANAGER = "rglcd-launcher"
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 45       # pods are named <name>-worker-<i> (PyTorchJob) / <name>-node-0-<i>-xxxxx (JobSet): <= 63


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


PYTORCHJOB = JobKind("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", "training.kubeflow.org/job-name", "Succeeded")
TRAINJOB = JobKind("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "jobset.sigs.k8s.io/jobset-name",
                   "Complete")
KINDS = {"pytorchjob": PYTORCHJOB, "trainjob": TRAINJOB}


class LaunchError(RuntimeError):
    """The job could not be created or did not finish well; the message says what to change."""


def check_name(name: str) -> str:
    """A job name every resource derived from it accepts (RFC 1035 label, short enough for pod names)."""
    if not _NAME_RE.match(name) or len(name) > MAX_NAME:
        raise LaunchError(f"job name {name!r} is not allowed; allowed: lowercase letters, digits and '-', "
                          f"starting with a letter, at most {MAX_NAME} characters")
    return name


def job_kind(cfg: Config) -> JobKind:
    if cfg.pipeline.distributed not in KINDS:
        raise LaunchError(f"pipeline.distributed: {cfg.pipeline.distributed!r} launches no job; "
                          f"allowed here: {', '.join(KINDS)}")
    return KINDS[cfg.pipeline.distributed]


def pod_config(cfg: Config, name: str) -> Config:
    """The config the pods run: the caller's, with outputs and caches on the mounted volumes."""
    out = copy.deepcopy(cfg)
    out.train.output_dir = f"{podspec.CHECKPOINT_MOUNT}/{name}"
    if cfg.pipeline.model_cache_pvc:
        out.model.cache_dir = f"{podspec.MODEL_CACHE_MOUNT}/rglcd"
    return out


def build_config_map(cfg: Config, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{name}-config", "namespace": cfg.pipeline.namespace,
                         "labels": {**podspec.PART_OF, "rglcd/job": name}},
            "data": {"config.yaml": dump_config(pod_config(cfg, name))}}


def train_command(kind: JobKind, train_args: tuple[str, ...] = ()) -> list[str]:
    """torchrun reads --nnodes/--nproc_per_node/--node_rank from the PET_* env both operators inject; the v1
    operator sets MASTER_ADDR/MASTER_PORT but no PET_MASTER_*, so those are passed explicitly."""
    rendezvous = ["--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)"] if kind is PYTORCHJOB else []
    return ["torchrun", *rendezvous, "--module", "rglcd", "train", "--config", f"{podspec.CONFIG_MOUNT}/config.yaml",
            *train_args]


def _volumes(cfg: Config, name: str) -> tuple[list[dict], list[dict]]:
    """(volumes, mounts): /dev/shm and /tmp emptyDirs (the root filesystem is read-only), the checkpoint PVC,
    the model-cache PVC, the config."""
    p = cfg.pipeline
    vols = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(p.shm_size)}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "checkpoints", "persistentVolumeClaim": {"claimName": p.checkpoint_pvc}},
            {"name": "config", "configMap": {"name": f"{name}-config"}}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": podspec.TMP_MOUNT},
              {"name": "checkpoints", "mountPath": podspec.CHECKPOINT_MOUNT},
              {"name": "config", "mountPath": podspec.CONFIG_MOUNT, "readOnly": True}]
    if p.model_cache_pvc:
        vols.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": p.model_cache_pvc}})
        mounts.append({"name": "model-cache", "mountPath": podspec.MODEL_CACHE_MOUNT})
    return vols, mounts


def _env(cfg: Config) -> list[dict]:
    """HOME on the writable /tmp, model caches on the cache PVC, the S3 key list."""
    env = [{"name": "HOME", "value": podspec.TMP_MOUNT}]
    if cfg.pipeline.model_cache_pvc:
        env += [{"name": "HF_HOME", "value": f"{podspec.MODEL_CACHE_MOUNT}/huggingface"},
                {"name": "TORCH_HOME", "value": f"{podspec.MODEL_CACHE_MOUNT}/torch"}]
    return env + podspec.s3_env(cfg)


def _pod_spec(cfg: Config, name: str, container: dict[str, Any]) -> dict[str, Any]:
    """Pod spec of a training node: no API token, restricted security, the GPU pool, the volumes."""
    vols, mounts = _volumes(cfg, name)
    container = {**container, "env": _env(cfg), "volumeMounts": mounts,
                 "securityContext": podspec.container_security_context()}
    spec = {"serviceAccountName": cfg.pipeline.training_service_account, **podspec.gpu_placement(cfg),
            "securityContext": podspec.pod_security_context(), "containers": [container], "volumes": vols}
    return spec


def _metadata(cfg: Config, name: str, owner: dict[str, str] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": cfg.pipeline.namespace, "labels": podspec.workload_labels(cfg)}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": owner["name"], "uid": owner["uid"]}]
    return meta


def build_pytorchjob(cfg: Config, name: str, train_args: tuple[str, ...] = (),
                     annotations: dict[str, str] | None = None, owner: dict[str, str] | None = None) -> dict:
    """PyTorchJob with 1 Master + (num_nodes - 1) Workers, `pipeline.gpus` GPUs and processes per node."""
    p = cfg.pipeline
    container = {"name": "pytorch", "image": p.image, "command": train_command(PYTORCHJOB, train_args),
                 "resources": podspec.train_resources(cfg)}
    spec = _pod_spec(cfg, name, container)
    spec["automountServiceAccountToken"] = False
    if p.priority_class:
        spec["priorityClassName"] = p.priority_class
    template = {"metadata": {"labels": podspec.workload_labels(cfg), "annotations": dict(annotations or {})},
                "spec": spec}
    replicas = {"Master": 1, "Worker": p.num_nodes - 1}
    specs = {role: {"replicas": n, "restartPolicy": "OnFailure", "template": copy.deepcopy(template)}
             for role, n in replicas.items() if n > 0}
    # cleanPodPolicy Running: when the job ends (a failed rank, the deadline), pods still running are deleted and
    # free their GPUs; finished pods stay for their logs
    run_policy: dict[str, Any] = {"backoffLimit": p.retries, "cleanPodPolicy": "Running",
                                  "activeDeadlineSeconds": p.train_timeout}
    if p.num_nodes > 1 or p.priority_class:
        run_policy["schedulingPolicy"] = {"minAvailable": p.num_nodes, **(
            {"priorityClass": p.priority_class} if p.priority_class else {})}
    return {"apiVersion": f"{PYTORCHJOB.group}/{PYTORCHJOB.version}", "kind": PYTORCHJOB.kind,
            "metadata": _metadata(cfg, name, owner),
            "spec": {"nprocPerNode": str(max(p.gpus, 1)), "runPolicy": run_policy, "pytorchReplicaSpecs": specs}}


def build_trainjob(cfg: Config, name: str, train_args: tuple[str, ...] = (),
                   annotations: dict[str, str] | None = None, owner: dict[str, str] | None = None,
                   runtime: str = "torch-distributed") -> dict:
    """TrainJob on the `torch-distributed` ClusterTrainingRuntime; pod settings via runtimePatches (the training
    ServiceAccount itself sets automountServiceAccountToken: false, which a PodSpecPatch cannot)."""
    p = cfg.pipeline
    resources = podspec.train_resources(cfg)
    trainer = {"image": p.image, "command": train_command(TRAINJOB, train_args), "numNodes": p.num_nodes,
               "numProcPerNode": max(p.gpus, 1), "resourcesPerNode": resources, "env": _env(cfg)}
    spec = _pod_spec(cfg, name, {"name": "node"})
    node = spec["containers"][0]
    spec["containers"] = [{k: node[k] for k in ("name", "volumeMounts", "securityContext")}]
    pod = {"metadata": {"labels": podspec.workload_labels(cfg), "annotations": dict(annotations or {})}, "spec": spec}
    patch = {"manager": FIELD_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": "node", "template": {"spec": {"template": pod}}}]}}}}
    return {"apiVersion": f"{TRAINJOB.group}/{TRAINJOB.version}", "kind": TRAINJOB.kind,
            "metadata": _metadata(cfg, name, owner),
            "spec": {"runtimeRef": {"name": runtime}, "activeDeadlineSeconds": p.train_timeout, "trainer": trainer,
                     "runtimePatches": [patch]}}


def build_job(cfg: Config, name: str, train_args: tuple[str, ...] = (),
              annotations: dict[str, str] | None = None, owner: dict[str, str] | None = None) -> dict[str, Any]:
    """The job `pipeline.distributed` names; `owner` ({name, uid} of the launcher's pod) makes the garbage
    collector delete the job with that pod (when KFP deletes the run's pods)."""
    builder = build_pytorchjob if job_kind(cfg) is PYTORCHJOB else build_trainjob
    return builder(cfg, check_name(name), train_args, annotations, owner)
