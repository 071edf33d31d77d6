"""The one typed config of rglcd, grouped by concern (docs/architecture.md 6).

Defaults are those of docs/method.md 8; every value is recorded with the run. Batch sizes are per process
(per GPU) unless a field says "global".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar, Literal

from rglcd.config import kube
from rglcd.config.fields import F
from rglcd.plugins import expert_reward_choices, reward_names

Precision = Literal["no", "fp16", "bf16"]


@dataclass
class ModelConfig:
    # Teacher: a hub id, a local diffusers directory, an s3:// URI, or "tiny:epsilon" / "tiny:v_prediction".
    teacher: str = F("stabilityai/stable-diffusion-2-1-base", "teacher: hub id, diffusers dir, s3:// URI or tiny:<prediction_type>")
    # Hub revision (branch, tag or commit) when `teacher` is a hub id.
    revision: str | None = F(None, "hub revision of the teacher (None: main)")
    # Image resolution in pixels (square); latents are resolution / vae_scale.
    resolution: int = F(512, "training and sampling resolution in px (multiple of 8)", gt=0, multiple_of=8)
    # Dimension of the guidance embedding fed to the student as `timestep_cond` (docs/method.md 2.4).
    time_cond_proj_dim: int = F(256, "size of the w-embedding projection added to the student", gt=0, multiple_of=2)
    # Where models built or fetched at run time (tiny teachers, S3 downloads) are cached.
    cache_dir: str = F("~/.cache/rglcd", "cache for tiny teachers and downloaded checkpoints")


@dataclass
class DistillConfig:
    # Points of the DDIM solver grid over the teacher's timesteps: skip k = T / N (docs/method.md 2.2).
    num_ddim_timesteps: int = F(50, "DDIM solver grid size N (skip k = 1000/N)", gt=0)
    # Guidance w ~ U[w_min, w_max] per example, LCM form x_c + w (x_c - x_u) (docs/method.md 2.4).
    w_min: float = F(5.0, "lowest guidance w drawn (LCM form; usual CFG scale is w+1)", ge=0)
    w_max: float = F(15.0, "highest guidance w drawn (LCM form)", ge=0)
    # Boundary-condition constants (docs/method.md 2.5).
    sigma_data: float = F(0.5, "sigma_data of the boundary scalings", gt=0)
    timestep_scaling: float = F(10.0, "timestep scaling s of the boundary scalings (u = s*t)", gt=0)
    # Distillation loss and its pseudo-Huber constant (docs/method.md 2.9).
    loss: Literal["huber", "l2"] = F("huber", "LCD loss: pseudo-Huber or l2")
    huber_c: float = F(0.001, "pseudo-Huber constant c", gt=0)
    # EMA decay of the target network, applied after every optimizer step (docs/method.md 2.10).
    ema_decay: float = F(0.95, "EMA decay of the target UNet", ge=0, le=1)


@dataclass
class RewardConfig:
    # Expert reward model on RGB images; "none" trains plain LCD.
    name: str = F("hpsv2.1", "expert reward model: a registered image reward (rglcd.plugins) or none (plain LCD)",
                  choices=expert_reward_choices)
    # How the student is guided: directly through the expert (VAE decode) or through the LRM.
    guidance: Literal["direct", "lrm"] = F("direct", "student reward path: direct expert or latent reward model")
    # Reward scale beta: reward_loss = -beta * mean(R) (docs/method.md 3).
    beta: float = F(1.0, "reward scale beta", ge=0)
    # Expert weights: local path, s3:// URI, hub id, or "tiny" (random tiny model, tests only). None: the RM's default hub source.
    weights: str | None = F(None, "expert RM weights: path, s3:// URI, hub id, 'tiny' or None for the default source")
    # Whether differentiable resizes antialias (reference stack: no; changes reward hacking).
    antialias: bool = F(False, "antialias the tensor resize in RM preprocessing")
    # Per-process sub-batch decoded and scored by the expert (memory knob of the direct path).
    batch_size: int | None = F(None, "examples per process scored by the expert (None: whole batch)", gt=0)


@dataclass
class LRMConfig:
    # Pretrained LRM checkpoint directory (config + safetensors) from `rglcd pretrain-lrm`.
    checkpoint: str | None = F(None, "pretrained LRM checkpoint dir or s3:// URI")
    # Fine-tune the LRM online against the expert every step (docs/method.md 4.3).
    finetune: bool = F(True, "fine-tune the LRM online against the expert")
    # Fine-tune every k optimizer steps: the expert decodes and scores 3 x batch_size latents each time.
    finetune_every: int = F(1, "optimizer steps between LRM fine-tuning updates (1: every step)", gt=0)
    lr: float = F(3.3e-6, "LRM fine-tuning learning rate", gt=0)
    batch_size: int = F(16, "examples per process in the LRM fine-tuning sub-batch", gt=0)
    # Latent ViT image tower (docs/method.md 4.1).
    patch_size: int = F(4, "latent ViT patch size", gt=0)
    width: int = F(512, "latent ViT width", gt=0)
    layers: int = F(12, "latent ViT depth", gt=0)
    heads: int = F(8, "latent ViT attention heads", gt=0)
    embed_dim: int = F(1024, "joint embedding dimension", gt=0)
    # Text tower (ViT-H-14's by default).
    text_width: int = F(1024, "text transformer width", gt=0)
    text_layers: int = F(24, "text transformer depth", gt=0)
    text_heads: int = F(16, "text transformer heads", gt=0)
    # Trainable parts during online fine-tuning.
    unlocked_visual_blocks: int = F(1, "last visual blocks trained online (plus ln_post and proj)", ge=0)
    unlocked_text_blocks: int = F(5, "last text blocks trained online (plus ln_final and projection)", ge=0)
    # Contrastive pretraining (`rglcd pretrain-lrm`).
    pretrain_steps: int = F(10000, "contrastive pretraining steps", gt=0)
    pretrain_lr: float = F(5e-4, "contrastive pretraining learning rate", gt=0)
    pretrain_batch_size: int = F(128, "contrastive pretraining batch per process", gt=1)


@dataclass
class DataConfig:
    # Training data: shards dir/URL (webdataset tars), a table (jsonl/csv/parquet), or "builtin:photos".
    train: str = F("builtin:photos", "training data: shards, table, image folder or builtin:photos")
    # Prompts for validation images and evaluation; "builtin:vbench" uses the prompts shipped by vbench.
    prompts: str = F("builtin:vbench", "prompt list: a .txt/.json file or builtin:vbench")
    # Smallest accepted image side in px during prep.
    min_image_size: int = F(64, "images with a shorter side below this are dropped", gt=0)
    # Decompression-bomb guard: larger images are dropped (prep) or refused (training) before decoding.
    max_image_pixels: int | None = F(None, "images with more pixels are dropped as too_large (None: 64 x "
                                     "model.resolution^2, at least 4096^2)", gt=0)
    # Tables (csv/parquet/jsonl) name images by path or URL; by default only inside the table's own folder/prefix.
    remote_images: list[str] = F([], "URL prefixes (http(s)://host/path, s3://bucket/prefix) table rows may "
                                     "fetch images from; empty: only the table's own folder or bucket prefix")
    # Longest caption in tokens (the text encoder's context).
    max_caption_tokens: int = F(77, "captions longer than this (in tokens) are dropped", gt=2)
    # Records per tar shard written by prep.
    shard_size: int = F(1000, "records per shard", gt=0)
    # Precompute VAE latents during prep (training then skips the VAE encoder).
    precompute_latents: bool = F(False, "store VAE latent moments in the shards")
    num_workers: int = F(4, "data loader worker processes per training process", ge=0)
    # Each loader worker reads only its own records (by byte range where shards have offsets), in chunks.
    read_ahead: int = F(16, "records a loader worker reads together (ranged requests sent at once) and decodes "
                            "on a thread while the chunk before is used (0: one at a time, no thread)", ge=0)
    # Training stream order: shards are permuted per epoch, records shuffled within aligned windows.
    shuffle_buffer: int = F(1000, "records shuffled together in the training stream (1: shard order only)", gt=0)
    # The pipeline's data check (rglcd.registry.datacheck; docs/operations.md 4.6): a run whose data.train has the
    # version the production model was trained on ends before prep ("no new data"), unless forced.
    skip_unchanged: bool = F(True, "pipeline runs end before prep when data.train is unchanged since the "
                             "production model (--force trains anyway)")
    # Parallel prep (docs/architecture.md "Prep in parallel"): the output is the same whatever the split.
    prep_workers: int = F(1, "processes `rglcd prep` (and each prep pod) validates and encodes with: partitions "
                          "of the source, merged in order", ge=1)
    prep_partitions: int = F(1, "prep pods the DAG fans out over partitions of data.train (dsl.ParallelFor) "
                             "before one merge step; 1: a single prep step", ge=1)


@dataclass
class TrainConfig:
    max_steps: int = F(10000, "optimizer steps", gt=0)
    batch_size: int = F(16, "examples per process per micro-batch", gt=0)
    grad_accum: int = F(1, "micro-batches per optimizer step", gt=0)
    lr: float = F(1e-6, "AdamW learning rate (docs/method.md 3.4)", gt=0)
    weight_decay: float = F(0.0, "AdamW weight decay", ge=0)
    adam_beta1: float = F(0.9, "AdamW beta1", ge=0, lt=1)
    adam_beta2: float = F(0.999, "AdamW beta2", ge=0, lt=1)
    adam_eps: float = F(1e-8, "AdamW epsilon", gt=0)
    use_8bit_adam: bool = F(False, "bitsandbytes 8-bit AdamW when installed")
    lr_scheduler: Literal["constant", "constant_with_warmup"] = F("constant", "LR schedule")
    warmup_steps: int = F(0, "warmup steps of constant_with_warmup", ge=0)
    max_grad_norm: float = F(1.0, "gradient-norm clip", gt=0)
    mixed_precision: Precision = F("no", "autocast precision; the teacher follows it")
    # "auto": on CUDA, on only when the measured free memory cannot hold the batch's activations (rglcd.train.fast).
    gradient_checkpointing: bool | Literal["auto"] = F(False, "gradient checkpointing in the student UNet (auto: only when memory requires it)")
    # torch.compile of the student, EMA-target and teacher UNets (same weights and checkpoints; rglcd.train.fast).
    compile: bool = F(False, "torch.compile the student, target and teacher UNets")
    lora_rank: int = F(0, "LoRA rank (0: full fine-tuning)", ge=0)
    # With LoRA, <output_dir>/model always holds the merged UNet; this also writes the adapter to <output_dir>/lora.
    lora_save_adapter: bool = F(True, "with LoRA, also save the adapter (diffusers LoRA format + guidance projection)")
    seed: int = F(453645634, "global seed; per-example draws derive from it and the example index", ge=0)
    checkpoint_every: int = F(2000, "steps between checkpoints", gt=0)
    keep_checkpoints: int = F(5, "checkpoints kept (older ones are deleted)", gt=0)
    validation_every: int = F(200, "steps between validation image grids", gt=0)
    validation_prompts: int = F(4, "prompts in each validation grid", gt=0)
    max_bad_steps: int = F(5, "consecutive non-finite losses before the run stops", gt=0)
    output_dir: str = F("runs/latest", "run directory (checkpoints, metrics, report)")
    # Warm start (docs/operations.md 4.7): the student starts from the registry's production student (pulled by
    # its DVC pointer) instead of the teacher; the registered version records which one.
    warm_start: Literal["none", "production"] = F("none", "initial student: none (from the teacher) or production "
                                                  "(the production version of registry.model_name)")


@dataclass
class EvalConfig:
    # Keys that once existed: a config still using one fails with the new name (rglcd.config.fields.from_dict).
    RENAMED: ClassVar[dict[str, str]] = {"gate_min_hps_margin": "gate_min_reward_margin"}
    steps: list[int] = F([1, 2, 4, 8], "student LCM steps to evaluate")
    guidance: float = F(7.5, "student guidance scale g (embedded as w = g - 1)", ge=1)
    teacher_steps: int = F(50, "teacher DDIM steps", gt=0)
    teacher_guidance: float = F(7.5, "teacher CFG scale", ge=1)
    num_prompts: int = F(3200, "prompts scored (HPS benchmark: 4 styles x 800)", gt=0)
    fid_reference: str | None = F(None, "reference image folder for FID (None: skip FID)")
    fid_mode: Literal["clean", "legacy_pytorch", "legacy_tensorflow"] = F("clean", "clean-fid mode")
    fid_num_images: int = F(5000, "generated images for FID", gt=1)
    fid_models: Literal["gate", "all"] = F("gate", "models with an FID: the student at eval.gate_steps (gate) or "
                                           "the teacher and the student at every eval.steps (all)")
    inception_weights: str | None = F(None, "local Inception TorchScript for air-gapped FID")
    hf_cutoff: float = F(0.25, "high-frequency cutoff as a fraction of the sampling rate", gt=0, lt=0.5)
    batch_size: int = F(8, "images per generation batch", gt=0)
    seed: int = F(0, "sampling seed", ge=0)
    # Registration gate (rglcd.evaluate.gate): the reward it compares (one of eval.rewards; docs/method.md 6.6).
    gate_reward: str = F("hpsv2.1", "registered image reward the gate compares, student vs teacher "
                         "(one of eval.rewards)", choices=partial(reward_names, "image"))
    gate_min_reward_margin: float = F(0.0, "student's eval.gate_reward at eval.gate_steps minus the teacher's "
                                      "must be >= this")
    gate_max_fid_regression: float = F(5.0, "FID may exceed production's by at most this", ge=0)
    gate_max_hf_ratio: float = F(1.5, "student/teacher high-frequency energy ratio must be <= this", gt=0)
    # Student step count whose gate reward, FID and high-frequency ratio are the plain numbers the gate reads.
    gate_steps: int = F(4, "student steps the gate and the plain numbers use (one of eval.steps)", gt=0)
    # Prompt sets: evaluation prompts (rewards, CLIP score, HF monitor, sample grid; e.g. PartiPrompts),
    # the HPSv2 benchmark (4 style files) and the FID captions (e.g. COCO val).
    prompts: str | None = F(None, "evaluation prompts: .txt/.json file or builtin:vbench (None: data.prompts)")
    hps_benchmark: str | None = F("hub", "HPSv2 benchmark prompts: dir of anime/concept-art/paintings/photo .json, 'hub' (zhwang/HPDv2) or None to skip")
    fid_prompts: str | None = F(None, "captions for the FID images: .txt/.json (None: the evaluation prompts, cycled)")
    # Scorers: registered rewards averaged over the evaluation prompts, and open_clip CLIP score.
    rewards: list[str] = F(["hpsv2.1"], "registered rewards scored as a mean over the evaluation prompts",
                           choices=reward_names)
    reward_weights: dict[str, str] = F({}, "weights per reward name: path, s3:// URI, hub id or 'tiny' (absent: default source)")
    clip_model: str | None = F("ViT-L-14", "open_clip model of the CLIP score ('tiny': random test model; None: skip)")
    clip_pretrained: str | None = F("openai", "open_clip pretrained tag or checkpoint file of eval.clip_model")
    # Latency: same batch, resolution, device and dtype for student and teacher; one warm-up call.
    latency_batch_size: int = F(1, "images per timed generation call", gt=0)
    latency_repeats: int = F(3, "timed calls after the warm-up (median reported)", gt=0)
    grid_prompts: int = F(4, "prompts (rows) in the HTML sample grid", gt=0)
    device: str = F("auto", "evaluation device: auto (cuda if a GPU is visible, else cpu), cpu, cuda, cuda:N (rglcd.devices)")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = F("auto", "model dtype (auto: fp16 on CUDA, fp32 on CPU)")
    # Compiled sampling for `rglcd sample`, evaluation (latency too) and serving: rglcd.sample.prepare_sampling.
    compile: Literal["auto", "none", "default", "reduce-overhead", "max-autotune-no-cudagraphs"] = F(
        "auto", "torch.compile mode of the sampling UNet, VAE decoder and text encoder (auto: reduce-overhead on CUDA, none on CPU)")


@dataclass
class StorageConfig:
    # DVC remote: a local directory or s3://bucket/prefix.
    remote: str = F("./.rglcd/remote", "DVC remote: local dir or s3://bucket/prefix")
    endpoint_url: str | None = F(None, "S3 endpoint URL (MinIO, Ceph); None: AWS")
    region: str | None = F(None, "S3 region")
    cache_dir: str = F("./.rglcd/dvc-cache", "local DVC cache (also where dvc:// data sources are downloaded)")
    # A Git repository as data and model registry (rglcd.storage.gitreg; docs/operations.md "A Git registry").
    git_registry: str | None = F(None, "Git repository (a bare repository path or a Git URL) where every registered "
                                 "model version and its dataset get a .dvc file, committed and tagged, so dvc get/"
                                 "import/ls reach them; None: no Git registry")
    git_branch: str = F("main", "branch of storage.git_registry the .dvc files are committed to",
                        check=lambda v: None if v and re.match(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", v)
                        and ".." not in v else "a Git branch name (letters, digits, . _ - /)")


@dataclass
class RegistryConfig:
    tracking_uri: str = F("sqlite:///.rglcd/mlflow.db", "MLflow tracking URI (SQLite file or server URL)")
    model_name: str = F("rglcd-student", "registered model name")
    alias: str = F("candidate", "alias given to a newly registered version")
    # Where a registered MLflow Model's weights live (docs/serving.md "One copy of the weights").
    model_weights: Literal["dvc", "artifacts"] = F("dvc", "pyfunc weights: pulled from the DVC remote by pointer on load (dvc) or copied into the MLflow artifacts (artifacts)")
    # Training runs log per-step metrics, params and the dataset to MLflow at registry.tracking_uri.
    track_training: bool = F(True, "log training (params, per-step metrics, dataset) as an MLflow run")
    track_queue_size: int = F(10000, "metric records buffered for the MLflow logging thread (older ones are dropped when full)", gt=0)


@dataclass
class ServeConfig:
    # `rglcd serve` (KServe model server) and the pyfunc model: request limits and dynamic batching.
    port: int = F(8080, "HTTP port of the model server", gt=0, lt=65536)
    model_name: str = F("rglcd-student", "name the model is served under (/v1/models/NAME, /v2/models/NAME)")
    max_batch_size: int = F(8, "images generated together in one batch (requests are batched up to this)", gt=0)
    max_wait_ms: float = F(10.0, "longest a request waits for others to fill its batch, in ms", ge=0)
    max_images: int = F(8, "most images one request may ask for", gt=0)
    max_steps: int = F(8, "most LCM steps one request may ask for (1..max_steps)", gt=0)
    max_size: int = F(1024, "largest height/width in px a request may ask for", gt=0, multiple_of=8)
    default_steps: int = F(4, "LCM steps when a request gives none", gt=0)
    warmup: bool = F(True, "run one generation at start before reporting ready")
    device: str = F("auto", "serving device: auto (cuda if available), cpu, cuda, cuda:N")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = F("auto", "model dtype (auto: fp16 on CUDA, fp32 on CPU)")
    compile: Literal["auto", "none", "default", "reduce-overhead", "max-autotune-no-cudagraphs"] = F(
        "auto", "torch.compile mode of the served model, as eval.compile (rglcd.sample.prepare_sampling; auto: "
        "reduce-overhead on CUDA, none on CPU); each new batch size compiles once, on its first batch")
    grace_period_s: int = F(30, "seconds in-flight requests get to finish after SIGTERM", gt=0)
    # Canary rollout after registration (pipelines/dag.py; docs/serving.md "Canary and promotion").
    canary: bool = F(False, "after registration, roll the new version out to the InferenceService as a canary")
    canary_percent: int = F(10, "traffic percent the canary gets", gt=0, le=100)
    inference_service: str = F("rglcd-student", "name of the KServe InferenceService the canary step patches")


@dataclass
class PipelineConfig:
    # Cluster settings (docs/cluster.md 4). Names must match the applied overlay: manifests/overlays/<mode>/
    # pipeline.yaml holds this section for each deployment mode and is what `--config` reads on a cluster.
    image: str = F("ghcr.io/rglcd/rglcd-train:0.1.0", "container image of the GPU steps")
    cpu_image: str = F("ghcr.io/rglcd/rglcd-cpu:0.1.0", "container image of the CPU steps")
    namespace: str = F("rglcd", "Kubernetes namespace the run pods run in (standalone KFP: KFP's own, e.g. kubeflow; "
                       "multi-user: the Profile's)", check=kube.dns_label)
    service_account: str = F("rglcd-pipeline", "ServiceAccount of the KFP run pods (the pipeline runner)",
                             check=kube.dns_label)
    launcher_token_secret: str | None = F(
        "rglcd-launcher-token", "ServiceAccount-token Secret of the job launcher, mounted only into the multi-node "
        "training step (None: the launcher uses the run pods' own ServiceAccount)", check=kube.dns_subdomain)
    training_service_account: str = F("rglcd-training", "ServiceAccount of launched training pods (no API token "
                                      "mounted, no permissions)", check=kube.dns_label)
    experiment: str = F("rglcd", "KFP experiment name")
    accelerator: str = F("nvidia.com/gpu", "accelerator resource type", check=kube.label_key)
    gpus: int = F(8, "GPUs per training pod", ge=0)
    node_selector: dict[str, str] = F({}, "node labels of the GPU pool", check=kube.labels)
    gpu_taints: list[str] = F(["nvidia.com/gpu:NoSchedule"], "taints of the GPU pool (key[=value]:Effect); GPU "
                              "pods tolerate exactly these", check=kube.taints)
    s3_secret: str | None = F("rglcd-s3", "Secret with the S3 keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; "
                              "optional AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, AWS_SESSION_TOKEN) (None: none)",
                              check=kube.dns_subdomain)
    mlflow_secret: str | None = F("rglcd-mlflow", "Secret with MLflow credentials (MLFLOW_TRACKING_TOKEN or "
                                  "MLFLOW_TRACKING_USERNAME/PASSWORD) for the evaluation and registration steps "
                                  "(None: none)", check=kube.dns_subdomain)
    checkpoint_pvc: str = F("rglcd-checkpoints", "PVC mounted for checkpoints", check=kube.dns_subdomain)
    model_cache_pvc: str | None = F("rglcd-model-cache", "PVC mounted at /cache for HF/torch/rglcd model caches "
                                    "(None: none)", check=kube.dns_subdomain)
    shm_size: str | int = F("16Gi", "size of the memory-backed /dev/shm", check=kube.quantity)
    # Requests (= memory limits) per kind of pod; CPU is requested, not limited (no CFS throttling of loaders).
    train_cpu: str | int = F("32", "CPU request of a training pod (in-pod training and each node of a launched job)",
                       check=kube.quantity)
    train_memory: str | int = F("256Gi", "memory request and limit of a training pod", check=kube.quantity)
    gpu_step_cpu: str | int = F("8", "CPU request of the LRM-pretraining and evaluation pods", check=kube.quantity)
    gpu_step_memory: str | int = F("64Gi", "memory request and limit of the LRM-pretraining and evaluation pods",
                             check=kube.quantity)
    cpu_step_cpu: str | int = F("1", "CPU request of the CPU steps (configure, prep, registration, launcher)",
                          check=kube.quantity)
    cpu_step_memory: str | int = F("4Gi", "memory request and limit of the CPU steps", check=kube.quantity)
    train_timeout: int = F(172800, "seconds a training pod or launched job may run before it is stopped "
                           "(activeDeadlineSeconds; frees GPUs held by a hung job)", ge=60)
    step_timeout: int = F(21600, "seconds any other step may run before it is stopped", ge=60)
    retries: int = F(3, "retries of the training step (resume from checkpoint)", ge=0)
    step_retries: int = F(2, "retries of the prep, evaluation and registration steps (S3/MLflow I/O)", ge=0)
    queue_name: str | None = F(None, "Kueue LocalQueue of the GPU workloads (label kueue.x-k8s.io/queue-name; "
                               "None: no Kueue)", check=kube.dns_subdomain)
    priority_class: str | None = F(None, "PriorityClass of launched multi-node training pods (None: the "
                                   "cluster default)", check=kube.dns_subdomain)
    distributed: Literal["none", "pytorchjob", "trainjob"] = F("none", "launch multi-node training as this resource")
    num_nodes: int = F(1, "training nodes when distributed", gt=0)
    prep_gpus: int = F(0, "GPUs of each prep pod, placed on the GPU pool, when data.precompute_latents (VAE "
                       "encoding); 0: prep runs on CPU pods", ge=0)


@dataclass
class Config:
    preset: str = F("custom", "name of the preset this config started from")
    model: ModelConfig = field(default_factory=ModelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    lrm: LRMConfig = field(default_factory=LRMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
