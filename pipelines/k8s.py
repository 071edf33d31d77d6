"""Pod settings of the pipeline's KFP tasks, from config `pipeline.*` (kfp dsl + kfp-kubernetes 2.17 platform
config; the values come from components/podspec.py, the one source shared with the launched jobs).

Every task: CPU and memory requests (memory limit = request), a timeout (activeDeadlineSeconds), the Pod
Security identity kfp-kubernetes can set (`set_security_context`: runAsUser/runAsGroup 1000, runAsNonRoot).
What it cannot set - seccomp RuntimeDefault, allowPrivilegeEscalation false, capabilities drop ALL - the KFP
backend's Argo compiler sets on every task pod since KFP 2.16 (kubeflow/pipelines backend/src/v2/compiler/
argocompiler/security_context.go); older backends need the platform's Argo workflow defaults
(docs/cluster.md 5). GPU steps: accelerator type and count, the GPU pool's node selector and one
toleration per pool taint, a memory-backed /dev/shm, the model-cache PVC, Kueue's queue label when
`pipeline.queue_name` is set. Credentials: the S3 key list on every task that touches the DVC remote, the
MLflow Secret on the steps that talk to MLflow; never a parameter. All of this is ignored by `kfp.local`.
"""
from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask

from components import podspec
from components.step_config import MODEL_CACHE_ENV
from rglcd.config import Config

CHECKPOINT_MOUNT = podspec.CHECKPOINT_MOUNT


def secured(task: PipelineTask, cfg: Config, cpu: str | int, memory: str | int, timeout: int) -> PipelineTask:
    """Requests, memory limit, timeout and the non-root identity every task gets."""
    task.set_cpu_request(str(cpu)).set_memory_request(str(memory)).set_memory_limit(str(memory))
    kubernetes.set_timeout(task, seconds=timeout)
    return kubernetes.set_security_context(task, run_as_user=podspec.RUN_AS_USER, run_as_group=podspec.RUN_AS_GROUP,
                                           run_as_non_root=True)


def s3_credentials(task: PipelineTask, cfg: Config) -> PipelineTask:
    """The S3 key list from `pipeline.s3_secret`: required keys, then the optional ones (may be absent)."""
    if cfg.pipeline.s3_secret:
        kubernetes.use_secret_as_env(task, secret_name=cfg.pipeline.s3_secret,
                                     secret_key_to_env={k: k for k in podspec.S3_REQUIRED_KEYS})
        kubernetes.use_secret_as_env(task, secret_name=cfg.pipeline.s3_secret, optional=True,
                                     secret_key_to_env={k: k for k in podspec.S3_OPTIONAL_KEYS})
    return task


def mlflow_credentials(task: PipelineTask, cfg: Config) -> PipelineTask:
    """MLflow's token or user/password from `pipeline.mlflow_secret` (every key optional)."""
    if cfg.pipeline.mlflow_secret:
        kubernetes.use_secret_as_env(task, secret_name=cfg.pipeline.mlflow_secret, optional=True,
                                     secret_key_to_env={k: k for k in podspec.MLFLOW_KEYS})
    return task


def model_cache(task: PipelineTask, cfg: Config) -> PipelineTask:
    """Mount the shared model cache so teachers and reward weights are fetched once per cluster."""
    if cfg.pipeline.model_cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=cfg.pipeline.model_cache_pvc, mount_path=podspec.MODEL_CACHE_MOUNT)
        task.set_env_variable("HF_HOME", f"{podspec.MODEL_CACHE_MOUNT}/huggingface")
        task.set_env_variable("TORCH_HOME", f"{podspec.MODEL_CACHE_MOUNT}/torch")
        task.set_env_variable(MODEL_CACHE_ENV, f"{podspec.MODEL_CACHE_MOUNT}/rglcd")
    return task


def retried(task: PipelineTask, retries: int, backoff: str = "30s") -> PipelineTask:
    """Retry a task with exponential backoff (each step is idempotent: content-addressed pushes, registration
    keyed by run)."""
    if retries:
        task.set_retry(num_retries=retries, backoff_duration=backoff, backoff_factor=2.0,
                       backoff_max_duration="3600s")
    return task


def cpu_step(task: PipelineTask, cfg: Config, retries: int = 0, image: str | None = None) -> PipelineTask:
    """A CPU step: CPU-step resources and timeout, S3 credentials, `retries` retries; on the CPU (clients-only)
    image unless `image` says otherwise (data prep needs torch: the training image, without GPUs)."""
    p = cfg.pipeline
    task.set_container_image(image or p.cpu_image)
    secured(task, cfg, p.cpu_step_cpu, p.cpu_step_memory, p.step_timeout)
    return retried(s3_credentials(task, cfg), retries)


def gpu_placement(task: PipelineTask, cfg: Config, gpus: int) -> PipelineTask:
    """`gpus` accelerators on the GPU pool: selector, a toleration per pool taint, Kueue's queue label."""
    if gpus <= 0:
        return task
    task.set_accelerator_type(cfg.pipeline.accelerator).set_accelerator_limit(gpus)
    for tol in podspec.gpu_tolerations(cfg):
        kubernetes.add_toleration(task, key=tol["key"], operator=tol["operator"], value=tol.get("value"),
                                  effect=tol["effect"])
    for label, value in sorted(cfg.pipeline.node_selector.items()):
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for key, value in sorted(podspec.workload_labels(cfg).items()):
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    return task


def gpu_step(task: PipelineTask, cfg: Config, gpus: int, training: bool = False, retries: int = 0) -> PipelineTask:
    """A step on the GPU image: the pool, /dev/shm, caches, S3; training or GPU-step resources and timeout."""
    p = cfg.pipeline
    task.set_container_image(p.image)
    cpu, memory, timeout = (p.train_cpu, p.train_memory, p.train_timeout) if training else \
        (p.gpu_step_cpu, p.gpu_step_memory, p.step_timeout)
    secured(task, cfg, cpu, memory, timeout)
    gpu_placement(task, cfg, gpus)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=str(p.shm_size))
    model_cache(task, cfg)
    return retried(s3_credentials(task, cfg), retries)


def launcher_step(task: PipelineTask, cfg: Config) -> PipelineTask:
    """The multi-node training step: a CPU pod that runs the job for as long as training may take, with the
    launcher's token (only this task gets it), its own name and uid for the job's owner reference. It runs
    on the training image: when the job is done it publishes the model (components.publish reads the run's
    metrics through rglcd.train, which imports torch)."""
    cpu_step(task, cfg, image=cfg.pipeline.image)
    kubernetes.set_timeout(task, seconds=cfg.pipeline.train_timeout + 1200)
    if cfg.pipeline.launcher_token_secret:
        kubernetes.use_secret_as_volume(task, secret_name=cfg.pipeline.launcher_token_secret,
                                        mount_path=podspec.LAUNCHER_TOKEN_DIR)
    kubernetes.use_field_path_as_env(task, env_name="POD_NAME", field_path="metadata.name")
    kubernetes.use_field_path_as_env(task, env_name="POD_UID", field_path="metadata.uid")
    return task


def checkpoints(task: PipelineTask, cfg: Config) -> PipelineTask:
    """Mount the checkpoint PVC and retry the task; each retry resumes from the newest checkpoint."""
    kubernetes.mount_pvc(task, pvc_name=cfg.pipeline.checkpoint_pvc, mount_path=podspec.CHECKPOINT_MOUNT)
    return retried(task, cfg.pipeline.retries, backoff="60s")
