"""Warm start (docs/operations.md 4.7): a retraining run's student starts from the registry's production
student instead of the teacher (`train.warm_start: production`).

The production version is found by its alias (rglcd.registry.get_version), its weights pulled by the DVC
pointer it records (rglcd.registry.weights.local_weights: hash-checked, cached under model.cache_dir/weights),
and its UNet's state dict loaded into the student that `build_student` makes from the teacher: the
architecture and the guidance projection must match exactly (strict load). With no production version yet the
run starts from the teacher, as a first run does, and says so. What was used goes into run.json and, through
the training step's model metadata, into the registered version's provenance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

PRODUCTION = "production"


class WarmStartError(RuntimeError):
    """The production student cannot initialise this run's student; the message says why and what to do."""


def production_student(cfg: Any) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """(UNet state dict of the production student, or None; what was used) for `cfg.train.warm_start`."""
    if cfg.train.warm_start == "none":
        return None, {"from": "teacher"}
    from diffusers import UNet2DConditionModel

    from rglcd.registry import get_version
    from rglcd.registry.weights import local_weights

    info = get_version(cfg, alias=PRODUCTION)
    if info is None or info.pointer is None:
        print(f"warm start: no {PRODUCTION} version of {cfg.registry.model_name} with a DVC pointer; "
              "the student starts from the teacher")
        return None, {"from": "teacher", "reason": f"no {PRODUCTION} version"}
    folder = local_weights(info.pointer, Path(cfg.model.cache_dir).expanduser() / "weights")
    if not (folder / "unet" / "config.json").is_file():
        raise WarmStartError(f"train.warm_start: {PRODUCTION} version {info.version} ({info.pointer.md5}) holds no "
                             "unet/ folder; allowed: a student exported by rglcd (a diffusers pipeline folder)")
    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"))
    used = {"from": PRODUCTION, "model_name": info.name, "version": info.version, "md5": info.pointer.md5,
            "data_version": info.data_version}
    print(f"warm start: the student starts from {info.name} version {info.version} ({info.pointer.md5})")
    return {k: v.float() for k, v in unet.state_dict().items()}, used


def load_into(student: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy the production weights into the freshly built student (same architecture, every key)."""
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WarmStartError(f"train.warm_start: the {PRODUCTION} student does not fit this run's student "
                             f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}); allowed: "
                             "warm_start=none after a change of model.teacher or model.time_cond_proj_dim")
