"""Pod settings of the pipeline's tasks, from config `pipeline.*` (kfp-kubernetes platform config).

GPU steps: accelerator type and count (`nvidia.com/gpu` is the Kubernetes resource name on open-source
KFP), the GPU pool's node selector and toleration, a memory-backed /dev/shm for data-loader workers,
the model-cache PVC. Every step that touches the DVC remote gets the S3 credentials Secret as env.
All of this is ignored by `kfp.local`; it matters on a cluster.
"""
from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask

from components.runtime import CHECKPOINT_MOUNT, MODEL_CACHE_MOUNT
from components.step_config import MODEL_CACHE_ENV
from rglcd.config import Config

S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def s3_credentials(task: PipelineTask, cfg: Config) -> PipelineTask:
    """AWS_* env from the Secret `pipeline.s3_secret` (the keys of manifests/base/secret-s3.template.yaml)."""
    if cfg.pipeline.s3_secret:
        kubernetes.use_secret_as_env(task, secret_name=cfg.pipeline.s3_secret,
                                     secret_key_to_env={key: key for key in S3_KEYS})
    return task


def model_cache(task: PipelineTask, cfg: Config) -> PipelineTask:
    """Mount the shared model cache so teachers and reward weights are fetched once per cluster."""
    if cfg.pipeline.model_cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=cfg.pipeline.model_cache_pvc, mount_path=MODEL_CACHE_MOUNT)
        task.set_env_variable("HF_HOME", f"{MODEL_CACHE_MOUNT}/huggingface")
        task.set_env_variable("TORCH_HOME", f"{MODEL_CACHE_MOUNT}/torch")
        task.set_env_variable(MODEL_CACHE_ENV, f"{MODEL_CACHE_MOUNT}/rglcd")
    return task


def cpu_step(task: PipelineTask, cfg: Config) -> PipelineTask:
    """A step on the CPU image with S3 credentials."""
    task.set_container_image(cfg.pipeline.cpu_image)
    return s3_credentials(task, cfg)


def gpu_step(task: PipelineTask, cfg: Config, gpus: int) -> PipelineTask:
    """A step on the GPU image: `gpus` accelerators on the GPU pool (none when 0), /dev/shm, caches, S3."""
    task.set_container_image(cfg.pipeline.image)
    if gpus > 0:
        task.set_accelerator_type(cfg.pipeline.accelerator).set_accelerator_limit(gpus)
        kubernetes.add_toleration(task, key=cfg.pipeline.gpu_toleration_key, operator="Exists", effect="NoSchedule")
        for label, value in sorted(cfg.pipeline.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=label, label_value=value)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=cfg.pipeline.shm_size)
    model_cache(task, cfg)
    return s3_credentials(task, cfg)


def checkpoints(task: PipelineTask, cfg: Config) -> PipelineTask:
    """Mount the checkpoint PVC and retry the task; each retry resumes from the newest checkpoint."""
    kubernetes.mount_pvc(task, pvc_name=cfg.pipeline.checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)
    if cfg.pipeline.retries:
        task.set_retry(num_retries=cfg.pipeline.retries, backoff_duration="60s", backoff_factor=2.0,
                       backoff_max_duration="3600s")
    return task
