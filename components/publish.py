"""Publishing a finished training as the training step's artifacts: the student (also pushed to the DVC
remote), the HTML report and the metrics, for `train_student` and `launch_training` alike.

No kfp import here: component bodies import this module at run time (artifacts arrive as arguments).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.artifacts import copy_into, plain
from components.dvc_io import push_artifact
from rglcd.config import Config
from rglcd.results import training_outputs
from rglcd.safeio import read_mapping


def publish_training(cfg: Config, output_dir: str, model: Any, metrics: Any, report: Any,
                     **metadata: Any) -> str:
    """Copy a finished training's student, report and metrics JSONL into the step's artifacts, push the
    student to the DVC remote (pointer in `model.metadata["dvc"]`), log the last metrics; -> pointer JSON.
    A warm-started student's parent version (run.json "warm_start") goes into `model.metadata["warm_start"]`,
    from where registration records it."""
    found = training_outputs(output_dir)
    warm = warm_start_of(output_dir)
    if warm:
        metadata["warm_start"] = warm
    copy_into(found["model_dir"], model.path)
    copy_into(found["report"], report.path)
    copy_into(found["metrics_file"], metrics.path)
    pointer = push_artifact(cfg, model.path)
    model.metadata.update(plain({"dvc": pointer, "steps": found["metrics"].get("step"), "checkpoint_dir": output_dir,
                                 **metadata}))
    for key, value in found["metrics"].items():
        metrics.log_metric(key, value)
    return json.dumps(pointer)


def warm_start_of(output_dir: str) -> dict[str, Any] | None:
    """The registry version a training started from (its run.json "warm_start"), or None (from the teacher)."""
    path = Path(output_dir) / "run.json"
    if not path.is_file():
        return None
    warm = read_mapping(path, "run.json").get("warm_start") or {}
    return warm if isinstance(warm, dict) and warm.get("from") not in (None, "teacher") else None
