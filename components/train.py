"""Step 3: RG-LCD training in the pod (`rglcd.train.train`) -> the student as a stock diffusers pipeline.

Checkpoints go to `<checkpoint_root>/<run_id>` (the checkpoint PVC in a cluster), so a retried pod
(preemption, OOM) resumes from the newest complete checkpoint of the same run (`resume="auto"`).
"""
from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from rglcd.config import PipelineConfig

_DEFAULTS = PipelineConfig()


@dsl.component(base_image=_DEFAULTS.image, install_kfp_package=False)
def train_student(config_json: str, dataset: Input[Dataset], checkpoint_root: str, run_id: str,
                  model: Output[Model], metrics: Output[Metrics], report: Output[HTML],
                  lrm: Optional[Input[Model]] = None) -> NamedTuple("Outputs", model_pointer=str):
    """Train, copy the exported student and the HTML report into the artifacts, push the student."""
    import os
    from collections import namedtuple

    from components.runtime import load_step_config, publish_training
    from rglcd.train import train

    cfg = load_step_config(config_json)
    if checkpoint_root:
        cfg.train.output_dir = os.path.join(checkpoint_root, run_id)
    os.environ.setdefault("KFP_RUN_ID", run_id)   # tags the MLflow training run; registration finds it by this
    lrm_checkpoint = lrm.path if lrm is not None else cfg.lrm.checkpoint
    result = train(cfg, dataset.path, lrm_checkpoint=lrm_checkpoint, resume="auto")
    if result.interrupted:   # SIGTERM (preemption): checkpointed; failing lets KFP retry, and the retry resumes
        raise RuntimeError(f"training interrupted at step {result.steps}; checkpoint {result.checkpoint}")
    pointer = publish_training(cfg, cfg.train.output_dir, model, metrics, report)
    return namedtuple("Outputs", ["model_pointer"])(pointer)


@dsl.component(base_image=_DEFAULTS.cpu_image, install_kfp_package=False)
def launch_training(config_json: str, dataset: Input[Dataset], run_id: str, model: Output[Model],
                    metrics: Output[Metrics], report: Output[HTML], lrm: Optional[Input[Model]] = None
                    ) -> NamedTuple("Outputs", model_pointer=str, job_name=str):
    """Multi-node training: stage the inputs on the shared checkpoint PVC, run a PyTorchJob/TrainJob
    (`components.k8s_launcher`, `pipeline.distributed`) to its end, then publish its outputs like
    `train_student`. A retried launcher pod re-attaches to the job of the same run."""
    from collections import namedtuple

    from components import k8s_launcher
    from components.runtime import job_name, load_step_config, publish_training, stage_inputs, train_args

    cfg = load_step_config(config_json)
    name = job_name(run_id)
    api = k8s_launcher.api_client()
    if not k8s_launcher.job_exists(api, cfg, name):   # a retry must not rewrite inputs the running job reads
        data_dir, lrm_dir = stage_inputs(f"{k8s_launcher.CHECKPOINT_DIR}/{name}", dataset.path,
                                         lrm.path if lrm is not None else None)
        k8s_launcher.launch(api, cfg, name, train_args(data_dir, lrm_dir or cfg.lrm.checkpoint),
                            annotations={"pipelines.kubeflow.org/run_id": run_id})
    result = k8s_launcher.wait(api, cfg, name)
    pointer = publish_training(cfg, result.output_dir, model, metrics, report,
                               job=f"{result.kind} {result.namespace}/{name}", nodes=result.pod_nodes)
    return namedtuple("Outputs", ["model_pointer", "job_name"])(pointer, name)
