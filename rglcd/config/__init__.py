"""Load, override, validate and dump the rglcd config.

    cfg = load_config(preset="tiny", overrides=["train.max_steps=20"])
    dump_config(cfg)                      # YAML text; load_config(path=...) reads it back identically

Load order (each over the one before): the preset, the config file, `RGLCD_<SECTION>__<KEY>` environment
variables (`env`; e.g. RGLCD_STORAGE__REMOTE=s3://bucket/dvc, the value parsed as YAML like --set), then
the `--set` overrides (docs/operations.md 4.8). Everything is checked here, before any model loads: unknown
keys, wrong types, out-of-range values and cross-field rules (`check`).
"""
from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from rglcd.config.checks import check_values
from rglcd.config.fields import ConfigError, field_help, from_dict, renamed_keys, to_dict
from rglcd.config.schema import (Config, DataConfig, DistillConfig, EvalConfig, LRMConfig, ModelConfig,
                                 PipelineConfig, RegistryConfig, RewardConfig, ServeConfig, StorageConfig, TrainConfig)
from rglcd.safeio import read_data

__all__ = ["Config", "ConfigError", "ModelConfig", "DistillConfig", "RewardConfig", "LRMConfig", "DataConfig",
           "TrainConfig", "EvalConfig", "StorageConfig", "RegistryConfig", "ServeConfig", "PipelineConfig",
           "list_presets", "load_config", "config_from_dict", "env_settings", "LOAD_ORDER", "ENV_PREFIX", "ENV_SEP", "dump_config", "explain", "parse_override", "to_dict"]


def list_presets() -> list[str]:
    """Names of the presets shipped inside the package."""
    folder = resources.files("rglcd.config") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def _preset_dict(name: str) -> dict[str, Any]:
    if name not in list_presets():
        raise ConfigError(f"preset: {repr(name)[:80]} is not a known preset; allowed: {', '.join(list_presets())}")
    text = (resources.files("rglcd.config") / "presets" / f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def _read_file(path: str | Path) -> dict[str, Any]:
    return _sections(read_data(path, "config file", error=ConfigError), f"config file {str(path)!r}")


def _sections(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """'section.key=value' -> {'section': {'key': value}}; the value is parsed as YAML (1e-6, true, [1, 2])."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} names no key")
    for key in reversed(keys):
        value = {key: value}
    return value


ENV_PREFIX, ENV_SEP = "RGLCD_", "__"
LOAD_ORDER = ("preset", "--config file", f"{ENV_PREFIX}<SECTION>{ENV_SEP}<KEY> environment variables", "--set")


def env_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The config sections set by `RGLCD_<SECTION>__<KEY>` variables (e.g. RGLCD_REGISTRY__TRACKING_URI).

    Variables without the double underscore (RGLCD_WEIGHTS_CACHE, ...) are not config; a variable that names
    no config key is an error naming the variable."""
    keys, renamed = {key for key, _, _ in field_help(Config)}, renamed_keys(Config)
    data: dict[str, Any] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or ENV_SEP not in name:
            continue
        dotted = ".".join(part.lower() for part in name.removeprefix(ENV_PREFIX).split(ENV_SEP))
        if dotted in renamed:
            raise ConfigError(f"environment variable {name}: {dotted!r} was renamed to {renamed[dotted]!r}; allowed: "
                              f"{ENV_PREFIX}{renamed[dotted].upper().replace('.', ENV_SEP)}")
        if dotted not in keys:
            raise ConfigError(f"environment variable {name}: {dotted!r} is not a config key; allowed: "
                              f"{ENV_PREFIX}<SECTION>{ENV_SEP}<KEY> for a key of `rglcd config explain`, "
                              f"e.g. {ENV_PREFIX}STORAGE{ENV_SEP}REMOTE")
        data = _merge(data, parse_override(f"{dotted}={environ[name]}"))
    return data


def check(cfg: Config) -> Config:
    """Cross-field rules that a single field cannot express."""
    d, e = cfg.distill, cfg.eval
    if d.w_min > d.w_max:
        raise ConfigError(f"distill.w_min: {d.w_min} is greater than distill.w_max {d.w_max}; allowed: w_min <= w_max")
    if 1000 % d.num_ddim_timesteps:
        raise ConfigError(f"distill.num_ddim_timesteps: {d.num_ddim_timesteps} does not divide 1000 training timesteps; allowed: a divisor of 1000")
    bad_steps = [s for s in e.steps if s < 1 or s > d.num_ddim_timesteps]
    if bad_steps:
        raise ConfigError(f"eval.steps: {bad_steps} out of range; allowed: 1..{d.num_ddim_timesteps}")
    if cfg.reward.guidance == "lrm" and cfg.reward.name == "none" and cfg.lrm.finetune:
        raise ConfigError("lrm.finetune: True needs an expert; reward.name is 'none'; allowed: set reward.name or lrm.finetune=false")
    if cfg.lrm.unlocked_text_blocks > cfg.lrm.text_layers:
        raise ConfigError(f"lrm.unlocked_text_blocks: {cfg.lrm.unlocked_text_blocks} exceeds lrm.text_layers {cfg.lrm.text_layers}")
    if cfg.lrm.unlocked_visual_blocks > cfg.lrm.layers:
        raise ConfigError(f"lrm.unlocked_visual_blocks: {cfg.lrm.unlocked_visual_blocks} exceeds lrm.layers {cfg.lrm.layers}")
    check_values(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate plain data (e.g. the pipeline's JSON parameter) into a Config."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    return check(from_dict(Config, data))


def load_config(preset: str | None = None, path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = (), data: dict[str, Any] | None = None,
                default_preset: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """A preset, then a YAML/JSON file or already-parsed `data` (the same mapping of sections, e.g. the
    pipeline's JSON parameter) over it, then the `RGLCD_<SECTION>__<KEY>` variables of `env` (None: none),
    then `section.key=value` overrides, validated.

    The preset is `preset` when given, else the file's (or data's) `preset` key, else `default_preset`;
    None or "custom" means the schema defaults.
    """
    if path is not None and data is not None:
        raise ValueError("load_config: pass a config file (path) or its parsed content (data), not both")
    if path is not None:
        data = _read_file(path)
    else:
        data = copy.deepcopy(_sections(data, "config data")) if data is not None else {}
    with _naming(path):
        preset = preset or data.get("preset") or default_preset
        if preset is not None and preset != "custom":
            data = _merge(_preset_dict(preset), data)
            data["preset"] = preset
    data = _merge(data, env_settings(env or {}))
    with _naming(path):
        for text in overrides:
            data = _merge(data, parse_override(text))
        return config_from_dict(data)


@contextmanager
def _naming(path: str | Path | None) -> Iterator[None]:
    """Errors about values that came from a config file also name the file."""
    try:
        yield
    except ConfigError as err:
        if path is None:
            raise
        raise ConfigError(f"{err} (config file {str(path)!r})") from None


def dump_config(cfg: Config, fmt: str = "yaml") -> str:
    """YAML (default) or JSON text that `load_config(path=...)` reads back to an equal Config."""
    data = to_dict(cfg)
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    return yaml.safe_dump(data, sort_keys=False)


def explain() -> list[tuple[str, str, str]]:
    """(key, type, help) for every config field."""
    return field_help(Config)
