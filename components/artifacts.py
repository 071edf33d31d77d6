"""Filling a step's KFP output artifacts: copy files to `artifact.path`, make metadata JSON-safe, and publish
a finished training (student, report, metrics) as the training steps' artifacts.

No kfp import here: component bodies import this module at run time (artifacts arrive as arguments).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from components.dvc_io import push_artifact
from rglcd.config import Config
from rglcd.results import training_outputs


def copy_into(src: str | os.PathLike, dst: str) -> str:
    """Copy a file or directory to an artifact path (KFP uploads what is at `artifact.path`)."""
    src = Path(src)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copyfile(src, dst)
    return dst


def plain(value: Any) -> Any:
    """JSON-safe copy (numbers stay numbers; paths and other objects become strings)."""
    return json.loads(json.dumps(value, default=str))


def publish_training(cfg: Config, output_dir: str, model: Any, metrics: Any, report: Any,
                     **metadata: Any) -> str:
    """Copy a finished training's student, report and metrics JSONL into the step's artifacts, push the
    student to the DVC remote (pointer in `model.metadata["dvc"]`), log the last metrics; -> pointer JSON."""
    found = training_outputs(output_dir)
    copy_into(found["model_dir"], model.path)
    copy_into(found["report"], report.path)
    copy_into(found["metrics_file"], metrics.path)
    pointer = push_artifact(cfg, model.path)
    model.metadata.update(plain({"dvc": pointer, "steps": found["metrics"].get("step"), "checkpoint_dir": output_dir,
                                 **metadata}))
    for key, value in found["metrics"].items():
        metrics.log_metric(key, value)
    return json.dumps(pointer)
