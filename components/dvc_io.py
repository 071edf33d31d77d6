"""DVC transfers of a step's artifacts: push an output directory, pull an input by its pointer.

The step-facing side of `rglcd.storage`: the same argument order (config first), pointers as the plain
`.dvc` mapping that travels in artifact metadata and pipeline parameters, and the transfer summary
printed into the step's log. No kfp import here: component bodies import this module at run time.
"""
from __future__ import annotations

import json
from typing import Any

from components.artifacts import plain
from rglcd.config import Config
from rglcd.storage import Pointer, pull, push


def push_artifact(cfg: Config, path: str) -> dict[str, Any]:
    """Version the directory `path` in the DVC remote (verified there); returns its pointer as `.dvc` content."""
    result = push(cfg, path)
    print(result.summary())
    return result.pointer.to_dvc()


def pull_artifact(cfg: Config, pointer: dict[str, Any] | str, dest: str) -> str:
    """Fetch the exact version a pointer (`.dvc` mapping or its JSON text) names into the new dir `dest`."""
    data = json.loads(pointer) if isinstance(pointer, str) else pointer
    result = pull(Pointer.from_dvc(data, source="DVC pointer parameter"), dest, cfg.storage.cache_dir)
    print(result.summary())
    return dest


def publish_dataset(cfg: Config, dataset: Any, manifest: dict[str, Any], source_version: str = ""
                    ) -> tuple[str, str]:
    """Push a prep output (the KFP Dataset `dataset`, written with `manifest`), record its pointer, counts
    and the data check's `source_version` in the artifact's metadata; returns (data version, pointer JSON),
    the prep steps' outputs."""
    pointer = push_artifact(cfg, dataset.path)
    dataset.metadata.update(plain({"dvc": pointer, "data_version": manifest["content_hash"],
                                   "num_records": manifest["num_records"], "dropped": manifest.get("dropped", {}),
                                   "source": manifest.get("source", cfg.data.train),
                                   "source_version": source_version}))
    return manifest["content_hash"], json.dumps(pointer)
