"""Push, verify, then register: the order that loses nothing (a failed push registers nothing)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rglcd.registry.mlflow_registry import ModelVersionInfo, register
from rglcd.storage import PushResult, push


@dataclass(frozen=True)
class Published:
    push: PushResult
    version: ModelVersionInfo


def publish(cfg: Any, model_dir: str | Path, metrics: dict[str, Any], config_dict: dict[str, Any],
            data_version: Any, run_id: str | None = None, jobs: int | None = None,
            callback: Any = None, training_run: str | None = None, data_pointer: Any = None) -> Published:
    """Push `model_dir` to `cfg.storage`'s remote (verified there), then register its pointer.

    A StorageError from the push leaves the registry untouched; calling again after the outage
    uploads only what is missing and registers once (the run key makes it idempotent).
    """
    pushed = push(cfg, model_dir, jobs=jobs, callback=callback)      # verifies every object in the remote
    info = register(cfg, pushed.pointer, metrics, config_dict, data_version, run_id, verify_remote=False,
                    training_run=training_run, data_pointer=data_pointer)
    return Published(pushed, info)
