"""Where the shared volumes are mounted, and staging the inputs of a multi-node training job.

The other jobs this module once did live in modules named for them: the config parameter in
`components.step_config`, DVC transfers in `components.dvc_io`, artifact copies in `components.artifacts`, publishing a
training in `components.publish`, reading finished outputs as numbers in `rglcd.results`.
No kfp import here: component bodies import this module at run time.
"""
from __future__ import annotations

from components.artifacts import copy_into

# Where the pipeline's pods (pipelines.k8s) and the distributed job's pods (components.k8s_launcher) mount
# the shared volumes; the one definition both use.
CHECKPOINT_MOUNT = "/checkpoints"   # checkpoint PVC (manifests/base/storage.yaml: rglcd-checkpoints)
MODEL_CACHE_MOUNT = "/cache"        # model-cache PVC: HF_HOME, TORCH_HOME, rglcd's model cache


# --- multi-node training (components.k8s_launcher) -----------------------------------------------------

def job_name(run_id: str) -> str:
    """The distributed job's name for a KFP run: stable across retries of the launcher pod."""
    return f"rglcd-{run_id}".lower()[:45].rstrip("-")


def stage_inputs(job_dir: str, dataset_dir: str, lrm_dir: str | None) -> tuple[str, str | None]:
    """Copy the step's input artifacts onto the shared PVC, where every training node reads them."""
    data = copy_into(dataset_dir, f"{job_dir}/inputs/data")
    lrm = copy_into(lrm_dir, f"{job_dir}/inputs/lrm") if lrm_dir else None
    return data, lrm


def train_args(data_dir: str, lrm_checkpoint: str | None) -> tuple[str, ...]:
    """`rglcd train` arguments after `--config` (which the launcher adds) for the job's pods."""
    args = ("--data", data_dir, "--resume", "auto")
    return args + (("--lrm-checkpoint", lrm_checkpoint) if lrm_checkpoint else ())
