"""Filling a step's KFP output artifacts: copy files to `artifact.path`, make metadata JSON-safe.

No kfp import here (artifacts arrive as arguments), and nothing heavy: the multi-node launcher's
staging (components.launcher.staging) copies with this module too.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


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
