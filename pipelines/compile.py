"""Compile the pipeline: KFP IR YAML (PipelineSpec + kubernetes PlatformSpec), or the Kubernetes-manifest
form (Pipeline + PipelineVersion custom resources of KFP's Kubernetes-native API) for GitOps.

Before compiling, `check_cluster_config` refuses a config the cluster cannot run and lists what would
run but probably not as meant (local DVC remote, SQLite registry inside a pod).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from kfp import compiler

from components.step_config import config_json_of
from pipelines.dag import PIPELINE_NAME, build_pipeline
from rglcd.config import Config, ConfigError


def check_cluster_config(cfg: Config) -> list[str]:
    """Raise ConfigError for what cannot work on a cluster; return warnings for what probably won't."""
    p, s = cfg.pipeline, cfg.storage
    if s.remote.startswith("s3://") and not p.s3_secret:
        raise ConfigError(f"pipeline.s3_secret: {p.s3_secret!r} but storage.remote is {s.remote!r}: the pods need "
                          "S3 credentials; allowed: the name of a Secret with AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY (manifests/base/secret-s3.template.yaml, default 'rglcd-s3')")
    if p.distributed != "none" and not p.checkpoint_pvc:
        raise ConfigError(f"pipeline.checkpoint_pvc: empty but pipeline.distributed is {p.distributed!r}: the "
                          "training nodes share inputs and outputs through it; allowed: a ReadWriteMany PVC name")
    warnings = []
    if p.priority_class and p.distributed == "none":
        warnings.append(f"pipeline.priority_class {p.priority_class!r} reaches launched jobs only: KFP tasks cannot "
                        "carry a priorityClassName (kfp-kubernetes has no setter); use pipeline.queue_name with a "
                        "Kueue WorkloadPriorityClass, or the namespace's default PriorityClass")
    if p.distributed != "none" and not p.launcher_token_secret:
        warnings.append("pipeline.launcher_token_secret is empty: the launcher uses the run pods' ServiceAccount "
                        f"{p.service_account!r}, which then needs the rglcd-launcher Role (docs/cluster.md 4)")
    if not s.remote.startswith("s3://"):
        warnings.append(f"storage.remote {s.remote!r} is a directory inside each pod: artifacts pushed there are "
                        "lost with the pod; use --set storage.remote=s3://bucket/prefix on a cluster")
    if cfg.registry.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in cfg.registry.tracking_uri:
        warnings.append(f"registry.tracking_uri {cfg.registry.tracking_uri!r} is a file inside the registration "
                        "pod; use --set registry.tracking_uri=http://<mlflow server> on a cluster")
    return warnings


def version_name(cfg: Config) -> str:
    """A PipelineVersion name that changes when the config does: rglcd-<preset>-<sha256[:10]>."""
    digest = hashlib.sha256(config_json_of(cfg).encode()).hexdigest()[:10]
    return f"{PIPELINE_NAME}-{cfg.preset}-{digest}".lower().replace("_", "-").replace(".", "-")


def compile_pipeline(cfg: Config, out: str | Path, *, kubernetes_manifest: bool = False,
                     namespace: str | None = None) -> Path:
    """Write the compiled pipeline for `cfg` to `out` (IR YAML, or Pipeline + PipelineVersion CRs)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    options = None
    if kubernetes_manifest:
        options = compiler.KubernetesManifestOptions(
            pipeline_name=PIPELINE_NAME, pipeline_version_name=version_name(cfg), namespace=namespace,
            include_pipeline_manifest=True)
    compiler.Compiler().compile(build_pipeline(cfg), str(out),
                                kubernetes_manifest_options=options, kubernetes_manifest_format=kubernetes_manifest)
    return out
