"""What makes registration idempotent, and how a config becomes MLflow params.

The provenance itself (code revision, library versions, KFP run id, config hash) comes from
`rglcd.provenance`, the module training, evaluation and export record theirs with.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from rglcd.provenance import config_hash


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
