"""How a result was made: the one provenance block that training, evaluation and export record.

    record = provenance(cfg, device)   # {"created", "git_revision", "versions", "device", "device_name", "config"}

- training writes it into `run.json` (beside `config.yaml`), with the data info and world size;
- evaluation writes it under `run` in `metrics.json`, with the model and teacher it compared;
- export writes it into the exported directory's `rglcd.json`, with the teacher it was distilled from.

The registry (`rglcd.registry`) records `code_revision()`, `library_versions()`, `kfp_run_id()` and
`config_hash()` of the same module as MLflow tags and `provenance.json`.

Versions: one rule, the full version string of the code that runs. That is the installed distribution's
version, except where the imported module reports the same version with a local build label (torch's
`2.9.0+cu130`, which says which CUDA build ran): then the module's string is kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from rglcd.config.fields import to_dict

# Set at image build time where the source tree has no .git (containers).
REVISION_ENV = "RGLCD_GIT_REVISION"
# The KFP launcher exposes no run id by itself; the component sets this env var from
# `dsl.PIPELINE_JOB_ID_PLACEHOLDER` (or the downward API label `pipeline/runid`).
KFP_RUN_ID_ENV = "KFP_RUN_ID"
# Libraries that shape a model or how it was versioned (distribution names).
LIBRARIES = ("rglcd", "torch", "diffusers", "transformers", "accelerate", "open_clip_torch", "peft",
             "dvc", "dvc-data", "dvc-s3", "mlflow", "kfp")
_MODULES = {"open_clip_torch": "open_clip", "clean-fid": "cleanfid"}   # distribution -> module, where they differ


def utc_now() -> str:
    """The current UTC time as ISO 8601 with a Z (e.g. 2026-12-01T00:00:00Z)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def code_revision() -> str:
    """$RGLCD_GIT_REVISION, else the git commit of the rglcd source tree (+'-dirty'), else 'unknown'."""
    if os.environ.get(REVISION_ENV):
        return os.environ[REVISION_ENV]
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def full_version(distribution: str) -> str:
    """The installed version of `distribution`, with the loaded module's local build label if it has one."""
    version = metadata.version(distribution)
    module = sys.modules.get(_MODULES.get(distribution, distribution.replace("-", "_")))
    reported = getattr(module, "__version__", None)
    if isinstance(reported, str) and reported.startswith(version + "+"):
        return reported
    return version


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Full versions (see the module docstring) of LIBRARIES and `extra` (absent ones left out), plus python."""
    versions = {"python": platform.python_version()}
    for name in (*LIBRARIES, *extra):
        try:
            versions[name] = full_version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def device_name(device: str | torch.device) -> str:
    """The accelerator's name ('NVIDIA H200') on CUDA, else the device type ('cpu')."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def kfp_run_id(explicit: str | None = None) -> str | None:
    """The KFP run id: the argument, else $KFP_RUN_ID, else None (a run outside KFP)."""
    return explicit or os.environ.get(KFP_RUN_ID_ENV) or None


def config_hash(config_dict: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the resolved config (key order does not matter)."""
    return hashlib.sha256(json.dumps(config_dict, sort_keys=True, default=str).encode()).hexdigest()


def provenance(cfg: Any, device: str | torch.device, extra_libraries: tuple[str, ...] = ()) -> dict[str, Any]:
    """The provenance block: creation time, code revision, library versions, device, resolved config
    (`cfg` a `rglcd.config.Config`, or None when there is none)."""
    return {"created": utc_now(), "git_revision": code_revision(), "versions": library_versions(extra_libraries),
            "device": str(device), "device_name": device_name(device),
            "config": None if cfg is None else to_dict(cfg)}
