"""Model versions in the MLflow Model Registry, each pointing at its weights in the DVC remote.

Layout (no second copy of the weights):
- one MLflow run per registration in the experiment named like the model: params = the resolved config
  (flattened `section.key`), metrics, tags (run key, DVC md5/remote, data version, code revision,
  library versions, KFP run id) and small artifacts: `dvc-pointer/<name>.dvc`, `config.yaml`,
  `provenance.json`;
- an MLflow Model at `model/` (rglcd.registry.pyfunc: a pyfunc whose weights are the pointer, pulled on load)
  and a model version with source `runs:/<run>/model` and the pointer itself in its tags, so
  `mlflow.pyfunc.load_model("models:/NAME@ALIAS")` and `rglcd.storage.pull` both reach the exact weights.
When the weights come from a tracked training run (rglcd.train.tracking; found by its KFP run id, or named by
`training_run`), that run is the version's run: the registration adds its metrics, tags and artifacts to it.
Idempotent: the run key (weights md5 + config hash + KFP run id) is a tag; registering the same key again
returns the existing version, also when several registrations of one key run at once (`_settle`).
Tracking URI: a SQLite file (embedded default) or an MLflow server URL.
"""
from __future__ import annotations

import json
import math
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from rglcd import provenance
from rglcd.registry.dataid import data_fields
from rglcd.registry.provenance import flatten, run_key
from rglcd.storage import Pointer, read_pointer, redact, verify
from rglcd.storage.gitreg import record_dataset, record_model
from rglcd.urls import redact_urls

POINTER_DIR = "dvc-pointer"
MODEL_DIR = "model"
TRAIN_METRIC_PREFIX = "train/"      # per-step training metrics (rglcd.train.tracking), not the version's numbers
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/ ]{0,254}$")


class RegistryError(RuntimeError):
    """A registry operation that failed; names the registry (password stripped) and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: int
    run_id: str                      # the MLflow run holding config, metrics and provenance
    run_key: str
    source: str
    pointer: Pointer | None          # None only for versions registered by something other than rglcd
    metrics: dict[str, float]
    aliases: list[str]
    data_version: str | None
    code_revision: str
    kfp_run_id: str | None
    created: bool = field(default=False)   # True when this call created the version
    git_commit: str | None = None          # the Git registry commit of its .dvc file (storage.git_registry)
    git_tag: str | None = None

    def summary(self) -> str:
        state = "registered" if self.created else "already registered"
        alias = f" [{', '.join(self.aliases)}]" if self.aliases else ""
        where = f"{self.pointer.md5} in {self.pointer.remote}" if self.pointer else self.source
        return f"{state}: {self.name} version {self.version}{alias} -> {where}"


def safe_uri(uri: str) -> str:
    """The tracking URI without credentials (postgresql://user:pw@host -> postgresql://***@host)."""
    return redact_urls(uri)


@contextmanager
def _errors(cfg: Any, action: str) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        uri = cfg.registry.tracking_uri
        message = err.message.replace(uri, safe_uri(uri))           # MLflow's message may quote the URL whole
        raise RegistryError(f"{action} in registry {safe_uri(uri)} failed: {message}") from None


def _client(cfg: Any):
    from mlflow import MlflowClient

    uri = cfg.registry.tracking_uri
    name = cfg.registry.model_name
    if not _NAME.match(name) or "'" in name:
        raise RegistryError(f"registry.model_name: {name!r} is not allowed; allowed: letters, digits, _ . - / space")
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client: Any, cfg: Any) -> str:
    name = cfg.registry.model_name
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    uri = cfg.registry.tracking_uri
    if uri.startswith("sqlite:///"):   # artifacts beside the DB file, not in ./mlruns of the CWD
        location = (Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent / "mlflow-artifacts").as_uri()
    with _unless_exists():             # another registration created it meanwhile
        return client.create_experiment(name, artifact_location=location)
    return client.get_experiment_by_name(name).experiment_id


@contextmanager
def _unless_exists() -> Iterator[None]:
    """Swallow MLflow's RESOURCE_ALREADY_EXISTS (a concurrent caller created the same thing first)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _ensure_model(client: Any, name: str) -> None:
    if not client.search_registered_models(f"name='{name}'"):
        with _unless_exists():
            client.create_registered_model(name, description="RG-LCD students; weights live in the DVC remote")


def tracking_client(cfg: Any) -> tuple[Any, str]:
    """(MlflowClient, experiment id) of `cfg.registry`: where training runs and registrations are logged."""
    client = _client(cfg)
    with _errors(cfg, "opening the experiment"):
        return client, _experiment_id(client, cfg)


def _check_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    if not isinstance(metrics, dict):
        raise RegistryError(f"metrics: expected a mapping name -> number, got {type(metrics).__name__}")
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RegistryError(f"metrics: {key!r} = {value!r} is not allowed; allowed: finite numbers")
        out[str(key)] = float(value)
    return out


def redact_tree(value: Any) -> Any:
    """`value` (config data) with passwords and tokens in every string masked."""
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_tree(v) for v in value]
    return redact(value) if isinstance(value, str) else value


def _find_version(client: Any, name: str, key: str):
    found = client.search_model_versions(f"name='{name}' and tags.`rglcd.run_key`='{key}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def _find_finished_run(client: Any, exp_id: str, key: str) -> str | None:
    runs = client.search_runs([exp_id], f"tags.`rglcd.run_key` = '{key}' and attributes.status = 'FINISHED'",
                              max_results=1)
    return runs[0].info.run_id if runs else None


@dataclass(frozen=True)
class _Record:
    """Everything one registration writes, secrets already scrubbed."""

    pointer: Pointer
    metrics: dict[str, float]
    config: dict[str, Any]
    provenance: dict[str, Any]
    tags: dict[str, str]
    key: str
    data_pointer: Pointer | None = None      # where the dataset is stored (its DVC md5: an address, not its id)


def _record(pointer: Pointer, metrics: dict[str, Any], config_dict: dict[str, Any], data_version: Any,
            run_id: str | None, data_pointer: Pointer | None = None) -> _Record:
    config = redact_tree(config_dict)
    kfp = provenance.kfp_run_id(run_id)
    data, data_pointer = data_fields(data_version, data_pointer)     # the data id (docs/operations.md "One data id")
    prov = {"code_revision": provenance.code_revision(), "libraries": provenance.library_versions(),
            "kfp_run_id": kfp, "data_version": data, "config_sha256": provenance.config_hash(config)}
    key = run_key(pointer.md5, config, kfp)
    tags = {"rglcd.run_key": key, "dvc.md5": pointer.md5, "dvc.remote": pointer.remote, "dvc.url": pointer.url,
            "dvc.pointer": json.dumps(pointer.to_dvc()), "data_version": data or "", "code_revision":
            prov["code_revision"], "kfp_run_id": kfp or "", "config_sha256": prov["config_sha256"]}
    if data_pointer is not None:
        tags.update({"data.dvc.md5": data_pointer.md5, "data.dvc.pointer": json.dumps(data_pointer.to_dvc())})
    tags.update({f"lib.{k}": v for k, v in prov["libraries"].items()})
    return _Record(pointer, _check_metrics(metrics), config, prov, {k: redact(v) for k, v in tags.items()}, key,
                   data_pointer)


def find_training_run(client: Any, exp_id: str, kfp_run_id: str | None) -> str | None:
    """The finished training run of KFP run `kfp_run_id` (rglcd.train.tracking tags it), if one was tracked."""
    if not kfp_run_id:
        return None
    runs = client.search_runs([exp_id], f"tags.`rglcd.role` = 'train' and tags.`kfp_run_id` = '{kfp_run_id}' "
                              "and attributes.status = 'FINISHED'", max_results=1)
    return runs[0].info.run_id if runs else None


def _log_run(client: Any, exp_id: str, rec: _Record, cfg: Any, training_run: str | None = None) -> str:
    """The version's run: the training run, or a new one with the config as params. Adds metrics, provenance
    tags, the pointer artifact and the MLflow Model; the run key tag comes last (it marks a complete record)."""
    from mlflow.entities import Metric, Param, RunTag

    from rglcd.registry.pyfunc import save_pyfunc      # mlflow.pyfunc and torch: loaded when registering only

    if training_run:
        rid, params = training_run, []                          # params were logged by the training run
    else:
        rid = client.create_run(exp_id, tags={k: v for k, v in rec.tags.items() if k != "rglcd.run_key"},
                                run_name=f"register-{rec.pointer.md5[:8]}").info.run_id
        params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                  for k, v in flatten(rec.config).items()]
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in rec.metrics.items()]
    for i in range(0, max(len(params), len(metrics)), 100):     # MLflow caps a batch at 100 params
        client.log_batch(rid, metrics=metrics[i:i + 100], params=params[i:i + 100])
    with tempfile.TemporaryDirectory() as tmp:
        files = {f"{rec.pointer.path}.dvc": rec.pointer.dumps("yaml"),
                 "config.yaml": yaml.safe_dump(rec.config, sort_keys=False),
                 "provenance.json": json.dumps(rec.provenance, indent=2)}
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
            client.log_artifact(rid, str(Path(tmp) / name), POINTER_DIR if name.endswith(".dvc") else None)
        client.log_artifacts(rid, str(save_pyfunc(cfg, rec.pointer, Path(tmp) / MODEL_DIR)), MODEL_DIR)
    client.log_batch(rid, tags=[RunTag(k, v) for k, v in rec.tags.items()])     # run key last: the record is whole
    if not training_run:
        client.set_terminated(rid, "FINISHED")
    return rid


def _settle(client: Any, name: str, key: str, mine: Any, run_id: str | None) -> Any:
    """Concurrent registrations of one run key: the version with the lowest number wins; the others
    delete their version and the run they created (`run_id`; None: the run was not theirs, e.g. the
    training run, and is kept), and report the winner. Returns the winning version.

    Why this rule: MLflow's registry has no compare-and-set on tags or aliases, and neither a SQLite
    file nor an object-store remote offers a lock that works across hosts. But the tracking store
    hands out version numbers in one transaction per version (unique (name, version) key, retried on
    conflict), so once a caller's own version exists every version with a lower number is already
    visible to its search. Every caller thus agrees on the same minimum, whoever runs first and
    however they interleave; a later rerun finds it too (`_find_version`). A caller that dies before
    cleaning up leaves a duplicate that never wins, so answers stay the same.
    """
    from mlflow.exceptions import MlflowException

    winner = _find_version(client, name, key)
    if winner is None or int(winner.version) == int(mine.version):
        return mine
    try:
        client.delete_model_version(name, mine.version)
        if run_id is not None and run_id != winner.run_id:
            client.delete_run(run_id)
    except MlflowException:             # already gone (another loser shared this run): nothing left to undo
        pass
    return winner


def _record_in_git(client: Any, cfg: Any, rec: _Record, mv: Any) -> Any:
    """With `storage.git_registry`: commit and tag the dataset's and the version's `.dvc` files there and
    record the Git revisions as version tags (rglcd.storage.gitreg). Idempotent, so a registration that
    failed here is completed by running it again. Returns the model version, re-read when tagged."""
    if not cfg.storage.git_registry or (mv.tags or {}).get("model.git.commit"):
        return mv
    tags = {}
    if rec.data_pointer is not None and rec.provenance["data_version"]:
        tags.update(record_dataset(cfg, rec.data_pointer, rec.provenance["data_version"]).tags("data"))
    tags.update(record_model(cfg, rec.pointer, int(mv.version)).tags("model"))
    for key, value in tags.items():
        client.set_model_version_tag(mv.name, mv.version, key, redact(value))
    return client.get_model_version(mv.name, mv.version)


def register(cfg: Any, model_pointer: Pointer | str | Path, metrics: dict[str, Any], config_dict: dict[str, Any],
             data_version: Any, run_id: str | None = None, verify_remote: bool = True,
             training_run: str | None = None, data_pointer: Pointer | None = None) -> ModelVersionInfo:
    """Register the weights behind `model_pointer` as a new version of `cfg.registry.model_name`.

    Order that loses nothing: the pointer is verified in the remote first (unless `verify_remote` is
    False because the caller just did), then the run is logged, then the version is created and given
    `cfg.registry.alias`. Re-running with the same run key returns the existing version (`created=False`);
    so do concurrent calls with one key: one run, one version, the alias set by the one that created it.
    `run_id`: the KFP run id (default: $KFP_RUN_ID). `training_run`: the MLflow run that trained the weights
    (default: the tracked training run of the same KFP run, if any; else a registration run is created).
    `data_version`: the data id (prep's content hash), or the dataset's pointer (its id is read from its
    manifest); `data_pointer`: where the dataset is stored, when the id is given as a string.
    With `storage.git_registry`, the version's and the dataset's `.dvc` files are committed and tagged there.
    """
    pointer = read_pointer(model_pointer)
    rec = _record(pointer, metrics, config_dict, data_version, run_id, data_pointer)
    client, name = _client(cfg), cfg.registry.model_name
    with _errors(cfg, f"registering {name}"):
        existing = _find_version(client, name, rec.key)
        if existing is not None:
            return _info(client, _record_in_git(client, cfg, rec, client.get_model_version(name, existing.version)))
        if verify_remote:
            verify(pointer)
        exp_id = _experiment_id(client, cfg)
        training_run = training_run or find_training_run(client, exp_id, rec.provenance["kfp_run_id"])
        rid = _find_finished_run(client, exp_id, rec.key) or _log_run(client, exp_id, rec, cfg, training_run)
        _ensure_model(client, name)
        version_tags = {k: v for k, v in rec.tags.items() if not k.startswith("lib.")}
        mv = client.create_model_version(name, f"runs:/{rid}/{MODEL_DIR}", run_id=rid, tags=version_tags,
                                         description=f"DVC {pointer.md5} in {pointer.remote}")
        winner = _settle(client, name, rec.key, mv, None if rid == training_run else rid)
        if int(winner.version) != int(mv.version):
            return _info(client, client.get_model_version(name, winner.version))
        mv = _record_in_git(client, cfg, rec, mv)
        if cfg.registry.alias:
            client.set_registered_model_alias(name, cfg.registry.alias, mv.version)
        return _info(client, client.get_model_version(name, mv.version), created=True)


def _info(client: Any, mv: Any, created: bool = False) -> ModelVersionInfo:
    tags = mv.tags or {}
    metrics = dict(client.get_run(mv.run_id).data.metrics) if mv.run_id else {}
    metrics = {k: v for k, v in metrics.items() if not k.startswith(TRAIN_METRIC_PREFIX)}
    pointer = tags.get("dvc.pointer")
    return ModelVersionInfo(
        name=mv.name, version=int(mv.version), run_id=mv.run_id or "", run_key=tags.get("rglcd.run_key", ""),
        source=mv.source, pointer=Pointer.from_dvc(json.loads(pointer), f"{mv.name} v{mv.version}") if pointer else None,
        metrics=metrics, aliases=sorted(mv.aliases or []), data_version=tags.get("data_version") or None,
        code_revision=tags.get("code_revision", ""), kfp_run_id=tags.get("kfp_run_id") or None, created=created,
        git_commit=tags.get("model.git.commit") or None, git_tag=tags.get("model.git.tag") or None)


def list_versions(cfg: Any) -> list[ModelVersionInfo]:
    """Every version of `cfg.registry.model_name`, oldest first (empty if none is registered)."""
    client, name = _client(cfg), cfg.registry.model_name
    with _errors(cfg, f"listing {name}"):
        found = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        return [_info(client, client.get_model_version(name, str(v))) for v in found]   # search omits aliases


def _get_version(client: Any, cfg: Any, version: int | str):
    from mlflow.exceptions import MlflowException

    name = cfg.registry.model_name
    try:
        return client.get_model_version(name, str(int(version)))
    except (MlflowException, ValueError):
        known = [int(v.version) for v in client.search_model_versions(f"name='{name}'")]
        raise RegistryError(f"model {name!r} has no version {version!r} in registry "
                            f"{safe_uri(cfg.registry.tracking_uri)}; versions: {sorted(known) or 'none'}") from None


def promote(cfg: Any, version: int | str, alias: str = "production") -> ModelVersionInfo:
    """Point `alias` at `version` (moving it from the version that held it)."""
    client, name = _client(cfg), cfg.registry.model_name
    with _errors(cfg, f"promoting {name} version {version} to {alias!r}"):
        mv = _get_version(client, cfg, version)
        client.set_registered_model_alias(name, alias, mv.version)
        return _info(client, client.get_model_version(name, mv.version))


def _by_alias(client: Any, name: str, alias: str):
    found = client.search_registered_models(f"name='{name}'")
    if not found or alias not in (found[0].aliases or {}):
        return None
    return client.get_model_version_by_alias(name, alias)


def get_version(cfg: Any, version: int | str | None = None, alias: str | None = None) -> ModelVersionInfo | None:
    """One version by number or alias (None when the alias is not set)."""
    client, name = _client(cfg), cfg.registry.model_name
    with _errors(cfg, f"reading {name}"):
        mv = _get_version(client, cfg, version) if version is not None else _by_alias(client, name, alias or "production")
        return _info(client, mv) if mv is not None else None


def production_metrics(cfg: Any) -> dict[str, float] | None:
    """Metrics of the version aliased 'production', or None when there is none (the evaluation gate's baseline)."""
    info = get_version(cfg, alias="production")
    return info.metrics if info is not None else None


__all__ = ["RegistryError", "ModelVersionInfo", "register", "list_versions", "promote", "get_version",
           "production_metrics", "safe_uri"]
