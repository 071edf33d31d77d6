"""The config parameter every pipeline step receives: resolve it once (`configure`), slice it for the
cached steps, read it back in each step's pod.

No kfp import here: component bodies import this module at run time.

The config travels as one JSON parameter (`config_json`) plus three top-level overrides that a run
may set without editing JSON: `preset`, `data_uri` (-> data.train) and `max_steps` (-> train.max_steps).
"""
from __future__ import annotations

import json
import os
from typing import Any

from rglcd.config import Config, ConfigError, config_from_dict, load_config, to_dict

# Config sections (or single "section.key"s) each cached step reads. Only these enter the step's
# inputs, so its KFP cache key changes with the data and what shapes it, not with, say, the
# training learning rate. The rest takes defaults when the step reads its slice back.
PREP_SECTIONS = ("preset", "model", "data", "storage")
LRM_SECTIONS = ("preset", "model", "data", "lrm", "storage", "train.seed")

# Set by the pipeline (pipelines.k8s.model_cache) on pods that mount the shared model-cache PVC.
MODEL_CACHE_ENV = "RGLCD_MODEL_CACHE_DIR"


def parse_config_json(text: str, name: str = "config_json") -> dict[str, Any]:
    """JSON text -> mapping, with an error that names the parameter, the position and what is allowed."""
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as err:
        raise ConfigError(f"pipeline parameter {name}: not valid JSON ({err.msg} at line {err.lineno} "
                          f"column {err.colno}); allowed: a JSON object of config sections") from None
    if not isinstance(data, dict):
        raise ConfigError(f"pipeline parameter {name}: expected a JSON object of config sections, "
                          f"got {type(data).__name__}")
    return data


def resolve_config(config_json: str, preset: str = "", data_uri: str = "", max_steps: int = 0) -> Config:
    """The run's config: `preset` (if set) under `config_json`, then data_uri and max_steps if set.

    With a full config in `config_json` (what `rglcd pipeline compile|submit` embed) leave `preset`
    empty; to start a run from another preset, pass that preset and only the keys to change.
    """
    data = parse_config_json(config_json)
    named = data.get("preset")
    if preset and named not in (None, "custom", preset):
        raise ConfigError(f"pipeline parameter preset: {preset!r} conflicts with config_json, which was resolved "
                          f"from preset {named!r}; allowed: leave preset empty, or pass only the keys to "
                          f"change in config_json (e.g. '{{}}')")
    if data_uri:
        data.setdefault("data", {})["train"] = data_uri
    if max_steps < 0:
        raise ConfigError(f"pipeline parameter max_steps: {max_steps}; allowed: 0 (keep train.max_steps) or > 0")
    if max_steps:
        data.setdefault("train", {})["max_steps"] = max_steps
    return load_config(preset=preset or None, data=data)


def config_json_of(cfg: Config, sections: tuple[str, ...] | None = None) -> str:
    """The config as JSON text: all of it, or only `sections` ("section" or "section.key" entries)."""
    data = to_dict(cfg)
    if sections is not None:
        sliced: dict[str, Any] = {}
        for name in sections:
            section, _, key = name.partition(".")
            if key:
                sliced.setdefault(section, {})[key] = data[section][key]
            else:
                sliced[section] = data[section]
        data = sliced
    return json.dumps(data, sort_keys=True)


def load_step_config(config_json: str) -> Config:
    """Read a config that `configure` already resolved and validated.

    In a pod that mounts the shared model-cache PVC, the pipeline sets $RGLCD_MODEL_CACHE_DIR and
    models are cached there (the rule `components.launcher.objects.pod_config` applies to training pods).
    """
    cfg = config_from_dict(parse_config_json(config_json))
    if os.environ.get(MODEL_CACHE_ENV):
        cfg.model.cache_dir = os.environ[MODEL_CACHE_ENV]
    return cfg
