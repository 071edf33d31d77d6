"""What a run writes next to its outputs: resolved config, library versions, git revision, data version
(docs/architecture.md 7)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch


def write_run_info(cfg, out_dir: Path, data: dict[str, Any], world_size: int, device: str) -> dict[str, Any]:
    """Write config.yaml and run.json into `out_dir`; returns the run.json content."""
    from rglcd.config import dump_config
    from rglcd.registry.provenance import code_revision, library_versions

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_config(cfg))
    info = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_revision": code_revision(),
            "versions": library_versions(), "data": data, "world_size": world_size, "device": device,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    (out_dir / "run.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info
