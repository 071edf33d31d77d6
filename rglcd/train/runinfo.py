"""What a run writes next to its outputs: the resolved config (config.yaml) and run.json, the
provenance block of `rglcd.provenance` with the data the run read and its world size."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rglcd.config import dump_config
from rglcd.provenance import provenance


def write_run_info(cfg, out_dir: Path, data: dict[str, Any], world_size: int, device: str,
                   resumes: list[dict[str, Any]] | None = None,
                   execution: dict[str, Any] | None = None,
                   warm_start: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write config.yaml and run.json into `out_dir`; returns the run.json content. `resumes`: the run's
    resume history (rglcd.train.resume: which checkpoint, which settings changed); `execution`: gradient
    checkpointing and compilation as resolved (rglcd.train.fast); `warm_start`: where the student's weights
    started (rglcd.train.warm: the teacher, or a registry version)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_config(cfg))
    info = {**provenance(cfg, device), "data": data, "world_size": world_size, "resumes": resumes or [],
            "execution": execution or {}, "warm_start": warm_start or {"from": "teacher"}}
    (out_dir / "run.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info
