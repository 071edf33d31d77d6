"""What every pipeline step does around its `rglcd` call, inside the pod: read the config parameter,
pull inputs by DVC pointer, push outputs, copy files into KFP artifact paths.

No kfp import here: component bodies import this module at run time.

The config travels as one JSON parameter (`config_json`) plus three top-level overrides that a run
may set without editing JSON: `preset`, `data_uri` (-> data.train) and `max_steps` (-> train.max_steps).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from rglcd.config import Config, ConfigError, config_from_dict, load_config, to_dict

# Where the pipeline's pods (pipelines.k8s) and the distributed job's pods (components.k8s_launcher) mount
# the shared volumes; the one definition both use.
CHECKPOINT_MOUNT = "/checkpoints"   # checkpoint PVC (manifests/base/storage.yaml: rglcd-checkpoints)
MODEL_CACHE_MOUNT = "/cache"        # model-cache PVC: HF_HOME, TORCH_HOME, rglcd's model cache

# Config sections (or single "section.key"s) each cached step reads. Only these enter the step's
# inputs, so its KFP cache key changes with the data and what shapes it, not with, say, the
# training learning rate. The rest takes defaults when the step reads its slice back.
PREP_SECTIONS = ("preset", "model", "data", "storage")
LRM_SECTIONS = ("preset", "model", "data", "lrm", "storage", "train.seed")


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


MODEL_CACHE_ENV = "RGLCD_MODEL_CACHE_DIR"


def load_step_config(config_json: str) -> Config:
    """Read a config that `configure` already resolved and validated.

    In a pod that mounts the shared model-cache PVC, the pipeline sets $RGLCD_MODEL_CACHE_DIR and
    models are cached there (the rule `components.k8s_launcher.pod_config` applies to training pods).
    """
    cfg = config_from_dict(parse_config_json(config_json))
    if os.environ.get(MODEL_CACHE_ENV):
        cfg.model.cache_dir = os.environ[MODEL_CACHE_ENV]
    return cfg


def push(path: str, cfg: Config) -> dict[str, Any]:
    """Version a directory in the DVC remote (verified there); returns its pointer as `.dvc` content."""
    from rglcd.storage import push as storage_push

    result = storage_push(cfg, path)
    print(result.summary())
    return result.pointer.to_dvc()


def pull(pointer: dict[str, Any] | str, dest: str, cfg: Config) -> str:
    """Fetch the exact version a pointer (`.dvc` mapping or its JSON text) names into the new dir `dest`."""
    from rglcd.storage import Pointer
    from rglcd.storage import pull as storage_pull

    data = json.loads(pointer) if isinstance(pointer, str) else pointer
    result = storage_pull(Pointer.from_dvc(data, source="DVC pointer parameter"), dest, cfg.storage.cache_dir)
    print(result.summary())
    return dest


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


# --- training outputs ----------------------------------------------------------------------------------

def train_outputs(output_dir: str) -> dict[str, Any]:
    """Where `rglcd train` left the exported student, the HTML report and the metrics JSONL in its
    output dir, and the last value of every number the metrics logged."""
    from rglcd.train.metrics import read_metrics_jsonl

    out = Path(output_dir)
    found = {"model_dir": out / "model", "report": out / "report.html", "metrics_file": out / "metrics.jsonl"}
    missing = [str(path) for path in found.values() if not path.exists()]
    if missing:
        raise FileNotFoundError(f"training finished without {', '.join(missing)}; see the training log")
    last: dict[str, float] = {}
    for record in read_metrics_jsonl(found["metrics_file"]):
        last.update(finite_numbers(record))
    return {**{k: str(v) for k, v in found.items()}, "metrics": last}


def data_version_of(data_dir: str) -> str:
    """The data version of a prep output: its manifest's content hash (what `prep_data` records)."""
    from rglcd.data import read_manifest

    manifest = read_manifest(data_dir)
    if manifest is None:
        raise FileNotFoundError(f"{data_dir}: no manifest.json; the data must be an `rglcd prep` output")
    return manifest["content_hash"]


def publish_training(cfg: Config, output_dir: str, model: Any, metrics: Any, report: Any,
                     **metadata: Any) -> str:
    """Copy a finished training's student, report and metrics JSONL into the step's artifacts, push the
    student to the DVC remote (pointer in `model.metadata["dvc"]`), log the last metrics; -> pointer JSON."""
    found = train_outputs(output_dir)
    copy_into(found["model_dir"], model.path)
    copy_into(found["report"], report.path)
    copy_into(found["metrics_file"], metrics.path)
    pointer = push(model.path, cfg)
    model.metadata.update(plain({"dvc": pointer, "steps": found["metrics"].get("step"), "checkpoint_dir": output_dir,
                                 **metadata}))
    for key, value in found["metrics"].items():
        metrics.log_metric(key, value)
    return json.dumps(pointer)


# --- multi-node training (components.k8s_launcher) -----------------------------------------------------

def job_name(run_id: str) -> str:
    """The distributed job's name for a KFP run: stable across retries of the launcher pod."""
    return f"rglcd-{run_id}".lower()[:45].rstrip("-")


def stage_inputs(job_dir: str, dataset_dir: str, lrm_dir: str | None) -> tuple[str, str | None]:
    """Copy the step's input artifacts onto the shared PVC, where every training node reads them."""
    data = copy_into(dataset_dir, f"{job_dir}/inputs/data")
    lrm = copy_into(lrm_dir, f"{job_dir}/inputs/lrm") if lrm_dir else None
    return data, lrm


def train_args(data_dir: str, lrm_checkpoint: str | None) -> tuple[str, ...]:
    """`rglcd train` arguments after `--config` (which the launcher adds) for the job's pods."""
    args = ("--data", data_dir, "--resume", "auto")
    return args + (("--lrm-checkpoint", lrm_checkpoint) if lrm_checkpoint else ())


# --- evaluation outputs --------------------------------------------------------------------------------

def finite_numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite plain numbers of a mapping (what KFP Metrics, conditions and the registry accept)."""
    return {str(k): float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def eval_summary(result: Any) -> dict[str, Any]:
    """Plain numbers, page, metrics file and gate decision of an `rglcd.evaluate.evaluate` result."""
    gate = result.gate
    return {"numbers": finite_numbers(result.metrics.get("summary", {})), "html": str(result.html_path),
            "metrics_file": str(result.metrics_path),
            "gate": {"passed": bool(gate.passed), "failed_rules": list(gate.failed_rules),
                     "reasons": dict(gate.reasons)}}
