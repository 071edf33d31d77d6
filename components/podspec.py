"""What every pod of the project gets, in one place: mount paths, credential key lists, Pod Security settings,
GPU-pool placement, resources, queue labels. Pure functions of the config (plain dicts, no kubernetes or kfp
import), used by the KFP task settings (pipelines/k8s.py), the launcher's PyTorchJob/TrainJob
(components/launcher/objects.py) and the tests that hold the manifests to the same values.

Pod Security: the `restricted` profile of the Pod Security Standards (kubernetes.io/docs/concepts/security/
pod-security-standards): RuntimeDefault seccomp, non-root, no privilege escalation, all capabilities dropped.
The project's own pods also run with a read-only root filesystem and writable emptyDirs where code writes
(/tmp, /dev/shm) - stricter than the profile. Conventions: docs/cluster.md 5.
"""
from __future__ import annotations

from typing import Any

from rglcd.config import Config
from rglcd.config.kube import parse_taint

# Where the pipeline's pods and the launched job's pods mount the shared volumes.
CHECKPOINT_MOUNT = "/checkpoints"   # checkpoint PVC (pipeline.checkpoint_pvc)
MODEL_CACHE_MOUNT = "/cache"        # model-cache PVC: HF_HOME, TORCH_HOME, rglcd's model cache
CONFIG_MOUNT = "/etc/rglcd"         # the launched job's resolved config (a ConfigMap)
TMP_MOUNT = "/tmp"                  # writable scratch over the read-only root filesystem
# The launcher's ServiceAccount-token Secret (pipeline.launcher_token_secret) in the multi-node training step:
# token, ca.crt, namespace - the layout of a projected ServiceAccount volume.
LAUNCHER_TOKEN_DIR = "/var/run/secrets/rglcd/launcher"

# The one S3 key list: every pod that touches the DVC remote gets these env variables from pipeline.s3_secret,
# the same way (secretKeyRef per key). The first two are required, the rest optional (boto3/DVC read them).
S3_REQUIRED_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_KEYS = ("AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN")
S3_KEYS = S3_REQUIRED_KEYS + S3_OPTIONAL_KEYS
# MLflow's client reads these (mlflow.environment_variables); all optional: a token or a user and password.
MLFLOW_KEYS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")

# Non-root identity of the project's images (images/*.Dockerfile: USER 1000:1000).
RUN_AS_USER = 1000
RUN_AS_GROUP = 1000

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PART_OF = {"app.kubernetes.io/part-of": "rglcd"}


def pod_security_context() -> dict[str, Any]:
    """Pod-level securityContext meeting `restricted` (fsGroup so mounted volumes are writable)."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_GROUP, "fsGroup": RUN_AS_GROUP,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    """Container-level securityContext meeting `restricted`, with a read-only root filesystem."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def secret_env(secret: str | None, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[dict]:
    """Env entries reading each key of `secret` (secretKeyRef; optional keys may be absent)."""
    if not secret:
        return []
    return [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k, "optional": k in optional}}}
            for k in (*required, *optional)]


def s3_env(cfg: Config) -> list[dict]:
    """The S3 key list from pipeline.s3_secret, as every pod that reads or writes the DVC remote gets it."""
    return secret_env(cfg.pipeline.s3_secret, S3_REQUIRED_KEYS, S3_OPTIONAL_KEYS)


def gpu_tolerations(cfg: Config) -> list[dict[str, str]]:
    """One toleration per taint of the GPU pool (pipeline.gpu_taints): Equal when the taint has a value."""
    out = []
    for text in cfg.pipeline.gpu_taints:
        t = parse_taint(text)
        tol = {"key": t["key"], "operator": "Equal" if t["value"] else "Exists", "effect": t["effect"]}
        if t["value"]:
            tol["value"] = t["value"]
        out.append(tol)
    return out


def gpu_placement(cfg: Config) -> dict[str, Any]:
    """nodeSelector and tolerations of the GPU pool; CPU pods get neither and stay off the pool."""
    out: dict[str, Any] = {"tolerations": gpu_tolerations(cfg)}
    if cfg.pipeline.node_selector:
        out["nodeSelector"] = dict(cfg.pipeline.node_selector)
    return out


def train_resources(cfg: Config) -> dict[str, Any]:
    """Requests and limits of one training pod: CPU requested, memory requested = limited, GPUs limited."""
    p = cfg.pipeline
    limits = {"memory": str(p.train_memory)}
    if p.gpus > 0:
        limits[p.accelerator] = str(p.gpus)
    return {"requests": {"cpu": str(p.train_cpu), "memory": str(p.train_memory)}, "limits": limits}


def workload_labels(cfg: Config) -> dict[str, str]:
    """Labels of a GPU workload: part-of, and Kueue's queue-name when pipeline.queue_name is set."""
    out = dict(PART_OF)
    if cfg.pipeline.queue_name:
        out[KUEUE_QUEUE_LABEL] = cfg.pipeline.queue_name
    return out
