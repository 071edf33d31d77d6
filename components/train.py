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

    from components.publish import publish_training
    from components.step_config import load_step_config
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
    (`components.launcher`, `pipeline.distributed`) to its end, then publish its outputs like
    `train_student`. A retried launcher pod re-attaches to the job of the same run. The job is owned by this
    pod (POD_NAME/POD_UID from the downward API), and SIGTERM (a cancelled run) deletes it."""
    import os
    from collections import namedtuple

    from components.launcher import api as launcher
    from components.launcher.staging import job_name, stage_inputs, train_args
    from components.podspec import CHECKPOINT_MOUNT
    from components.publish import publish_training
    from components.step_config import load_step_config

    cfg = load_step_config(config_json)
    name = job_name(run_id)
    client = launcher.api_client()
    attach = launcher.job_exists(client, cfg, name)    # a retry must not rewrite inputs the running job reads
    args = ()
    if not attach:
        data_dir, lrm_dir = stage_inputs(f"{CHECKPOINT_MOUNT}/{name}", dataset.path,
                                         lrm.path if lrm is not None else None)
        args = train_args(data_dir, lrm_dir or cfg.lrm.checkpoint)
    owner = {"name": os.environ["POD_NAME"], "uid": os.environ["POD_UID"]} if os.environ.get("POD_UID") else None
    result = launcher.run(cfg, name, client, args, annotations={"pipelines.kubeflow.org/run_id": run_id},
                          owner=owner, attach=attach)
    pointer = publish_training(cfg, result.output_dir, model, metrics, report,
                               job=f"{result.kind} {result.namespace}/{name}", nodes=result.pod_nodes)
    return namedtuple("Outputs", ["model_pointer", "job_name"])(pointer, name)
