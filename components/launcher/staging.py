"""What the multi-node training step does around the launched job, inside its pod: name the job after the
KFP run, copy the step's inputs onto the shared checkpoint PVC, and build the `rglcd train` arguments."""
from __future__ import annotations

from components.artifacts import copy_into
from components.launcher.objects import MAX_NAME


def job_name(run_id: str) -> str:
    """The distributed job's name for a KFP run: stable across retries of the launcher pod."""
    return f"rglcd-{run_id}".lower()[:MAX_NAME].rstrip("-")


def stage_inputs(job_dir: str, dataset_dir: str, lrm_dir: str | None) -> tuple[str, str | None]:
    """Copy the step's input artifacts onto the shared PVC, where every training node reads them."""
    data = copy_into(dataset_dir, f"{job_dir}/inputs/data")
    lrm = copy_into(lrm_dir, f"{job_dir}/inputs/lrm") if lrm_dir else None
    return data, lrm


def train_args(data_dir: str, lrm_checkpoint: str | None) -> tuple[str, ...]:
    """`rglcd train` arguments after `--config` (which the launcher adds) for the job's pods."""
    args = ("--data", data_dir, "--resume", "auto")
    return args + (("--lrm-checkpoint", lrm_checkpoint) if lrm_checkpoint else ())
