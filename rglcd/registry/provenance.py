"""What a registered version records about how it was made: code revision, library versions, KFP run,
a stable hash of the resolved config, and the run key that makes registration idempotent.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# The KFP launcher exposes no run id by itself; the component sets this env var from
# `dsl.PIPELINE_JOB_ID_PLACEHOLDER` (or the downward API label `pipeline/runid`).
KFP_RUN_ID_ENV = "KFP_RUN_ID"
# Set at image build time where the source tree has no .git (containers).
REVISION_ENV = "RGLCD_GIT_REVISION"
LIBRARIES = ("rglcd", "torch", "diffusers", "transformers", "accelerate", "open_clip_torch", "peft",
             "dvc", "dvc-data", "dvc-s3", "mlflow", "kfp")


def code_revision() -> str:
    """$RGLCD_GIT_REVISION, else the git commit of the rglcd source tree (+'-dirty'), else 'unknown'."""
    if os.environ.get(REVISION_ENV):
        return os.environ[REVISION_ENV]
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of the libraries that shape a model and of `extra` ones (absent ones are left out),
    plus python."""
    versions = {"python": platform.python_version()}
    for name in (*LIBRARIES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def kfp_run_id(explicit: str | None = None) -> str | None:
    """The KFP run id: the argument, else $KFP_RUN_ID, else None (a run outside KFP)."""
    return explicit or os.environ.get(KFP_RUN_ID_ENV) or None


def config_hash(config_dict: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the resolved config (key order does not matter)."""
    return hashlib.sha256(json.dumps(config_dict, sort_keys=True, default=str).encode()).hexdigest()


def run_key(model_md5: str, config_dict: dict[str, Any], run_id: str | None) -> str:
    """Same weights + same config + same run id (or none) -> same key -> the same registered version."""
    text = json.dumps({"model": model_md5, "config": config_hash(config_dict), "run": run_id}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-6}} -> {'train.lr': 1e-6}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
