"""The RG-LCD DAG (docs/architecture.md 4), built from one config:

    configure -> check data -> dsl.If(new data or forced):
              prep (or: plan -> ParallelFor of prep partitions -> merge)
              -> (pretrain-lrm, if reward.guidance == "lrm" and no lrm.checkpoint)
              -> train (in the pod, or a PyTorchJob/TrainJob when pipeline.distributed is set)
              -> evaluate -> dsl.If(gate passed) -> register -> (canary rollout, if serve.canary)

Pipeline parameters: `config_json` (the whole resolved config; the default is the config the
pipeline was compiled from), three overrides: `preset`, `data_uri` (-> data.train),
`max_steps` (-> train.max_steps), and `force` (train even when the data is unchanged). The DAG's shape
and pod settings (GPUs, node pool, PVCs, retries) come from the config at compile time.

The data check (docs/operations.md 4.6) is a CPU step: with data unchanged since the production model and no
`force`, the run ends there ("no new data" in its `reason` output) and no GPU task is created.

Caching: on for configure, prep (its inputs hold the source version, so new data behind the same URI is a
cache miss) and LRM pretraining, which reads the data by its DVC pointer so its cache key is the data
version; off for the data check, training, evaluation (it reads the registry's production model) and
registration.
"""

from typing import Any, Callable

from kfp import dsl

from components.check_data import check_data
from components.configure import configure
from components.evaluate import evaluate_student
from components.lrm import pretrain_lrm
from components.prep import merge_prep_data, plan_prep_partitions, prep_data, prep_partition_data
from components.register import register_model
from components.rollout import canary_rollout
from components.step_config import config_json_of
from components.train import launch_training, train_student
from pipelines.k8s import CHECKPOINT_MOUNT, checkpoints, cpu_step, gpu_step, launcher_step, mlflow_credentials, model_cache
from rglcd.config import Config

PIPELINE_NAME = "rglcd"


def uses_lrm_step(cfg: Config) -> bool:
    """Whether the DAG pretrains an LRM: the student is LRM-guided and no pretrained LRM is configured."""
    return cfg.reward.guidance == "lrm" and not cfg.lrm.checkpoint


def _train(cfg: Config, config: Any, dataset: Any, lrm: Any, checkpoint_root: str) -> dsl.PipelineTask:
    """In-pod training on `pipeline.gpus` GPUs, or a launcher pod that runs the multi-node job."""
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    if cfg.pipeline.distributed == "none":
        task = train_student(config_json=config, dataset=dataset, checkpoint_root=checkpoint_root, run_id=run_id,
                             **({"lrm": lrm} if lrm is not None else {}))
        gpu_step(task, cfg, cfg.pipeline.gpus, training=True)
    else:
        task = launch_training(config_json=config, dataset=dataset, run_id=run_id,
                               **({"lrm": lrm} if lrm is not None else {}))
        launcher_step(task, cfg)
    checkpoints(task, cfg)
    return task.set_display_name("RG-LCD training").set_caching_options(False)


def _check_data(cfg: Config, config: Any, force: Any) -> dsl.PipelineTask:
    """The data check: a CPU step that reads the source's listing and the registry, never cached."""
    task = check_data(config_json=config, force=force)
    # the training image: the check reads sources through rglcd.data and the registry (both import torch)
    mlflow_credentials(cpu_step(task, cfg, cfg.pipeline.step_retries, image=cfg.pipeline.image), cfg)
    return task.set_display_name("data check").set_caching_options(False)


def prep_step(cfg: Config, prep_config: Any, source_version: Any) -> dsl.PipelineTask:
    """Data prep: one task, or (data.prep_partitions > 1) a dsl.ParallelFor of partition pods and a merge
    task. Either way the returned task has the outputs dataset, data_version and data_pointer. Prep pods
    run on the GPU pool when latents are precomputed with pipeline.prep_gpus > 0; the merge copies latents.
    `source_version` (the data check's) is an input of every prep task, so the cache key follows the data.
    Each partition gets it through its loop item: kfp.local replaces upstream outputs passed into a
    ParallelFor by the item (components/prep.py `plan_prep_partitions`)."""
    parts, retries = cfg.data.prep_partitions, cfg.pipeline.step_retries
    gpus = cfg.pipeline.prep_gpus if cfg.data.precompute_latents else 0

    def placed(task: dsl.PipelineTask, gpus: int) -> dsl.PipelineTask:
        if gpus:
            gpu_step(task, cfg, gpus, retries=retries)
        else:
            model_cache(cpu_step(task, cfg, retries, image=cfg.pipeline.image), cfg)
        if cfg.data.prep_workers > 1:
            task.set_cpu_request(str(cfg.data.prep_workers))
        return task.set_caching_options(True)

    if parts == 1:
        return placed(prep_data(config_json=prep_config, source_version=source_version), gpus).set_display_name(
            "data prep")
    plan = cpu_step(plan_prep_partitions(config_json=prep_config, partitions=parts, source_version=source_version),
                    cfg)
    plan.set_display_name("data prep partitions").set_caching_options(True)
    with dsl.ParallelFor(items=plan.output, name="prep-partitions") as item:
        task = prep_partition_data(config_json=item.config_json, partition=item.partition, partitions=item.partitions,
                                   source_version=item.source_version)
        placed(task, gpus).set_display_name("data prep partition")
    merged = merge_prep_data(config_json=prep_config, partials=dsl.Collected(task.outputs["partial"]),
                             source_version=source_version)
    return placed(merged, 0).set_display_name("data prep merge")


def build_pipeline(cfg: Config, *, checkpoint_root: str = CHECKPOINT_MOUNT) -> Callable:
    """The `@dsl.pipeline` for `cfg`. `checkpoint_root` is where training checkpoints live (the PVC
    mount in a cluster, a local folder for `kfp.local`)."""
    default_config = config_json_of(cfg)

    @dsl.pipeline(name=PIPELINE_NAME, description="RG-LCD: distil Stable Diffusion into a few-step model, "
                  "evaluate it, register it when the gate passes")
    def rglcd_pipeline(config_json: str = default_config, preset: str = "", data_uri: str = "",
                       max_steps: int = 0, force: bool = False):
        conf = configure(config_json=config_json, preset=preset, data_uri=data_uri, max_steps=max_steps)
        cpu_step(conf, cfg).set_display_name("resolve config").set_caching_options(True)
        check = _check_data(cfg, conf.outputs["config"], force)
        with dsl.If(check.outputs["Output"] == True, name="new-data"):  # noqa: E712 (a CEL comparison)
            _train_and_register(cfg, conf, check.outputs["source_version"], checkpoint_root)

    return rglcd_pipeline


def _train_and_register(cfg: Config, conf: dsl.PipelineTask, source_version: Any, checkpoint_root: str) -> None:
    """Everything after the data check: prep (keyed by the source version), training, evaluation, registration."""
    one_gpu = min(cfg.pipeline.gpus, 1)
    prep = prep_step(cfg, conf.outputs["prep_config"], source_version)
    retries = cfg.pipeline.step_retries

    lrm = None
    if uses_lrm_step(cfg):
        pre = pretrain_lrm(config_json=conf.outputs["lrm_config"], data_pointer=prep.outputs["data_pointer"])
        gpu_step(pre, cfg, one_gpu).set_display_name("LRM pretraining").set_caching_options(True)
        lrm = pre.outputs["lrm"]

    train = _train(cfg, conf.outputs["config"], prep.outputs["dataset"], lrm, checkpoint_root)

    ev = evaluate_student(config_json=conf.outputs["config"], model=train.outputs["model"])
    mlflow_credentials(gpu_step(ev, cfg, one_gpu, retries=retries), cfg)
    ev.set_display_name("evaluation").set_caching_options(False)

    with dsl.If(ev.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a CEL comparison)
        reg = register_model(config_json=conf.outputs["config"], model=train.outputs["model"],
                             model_pointer=train.outputs["model_pointer"],
                             metrics_json=ev.outputs["metrics_json"],
                             data_version=prep.outputs["data_version"], source_version=source_version,
                             data_pointer=prep.outputs["data_pointer"], run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        # the training image: registration saves the MLflow pyfunc model (rglcd.registry.pyfunc imports torch)
        mlflow_credentials(cpu_step(reg, cfg, retries, image=cfg.pipeline.image), cfg)
        reg.set_display_name("registration").set_caching_options(False)
        if cfg.serve.canary:   # the new version takes serve.canary_percent of the InferenceService's traffic
            can = canary_rollout(config_json=conf.outputs["config"], version=reg.outputs["version"])
            cpu_step(can, cfg, retries).set_display_name("canary rollout").set_caching_options(False)
