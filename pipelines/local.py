"""Run the whole DAG on this machine with `kfp.local` (no cluster, no Docker): `rglcd pipeline run --local`.

Every step runs as a subprocess of this interpreter (`SubprocessRunner(use_venv=False)`: nothing is
pip-installed), on the embedded defaults of the config: tiny models, a local DVC remote, a SQLite
MLflow registry. Kubernetes settings (GPUs, node pool, PVCs, Secrets) are ignored locally;
checkpoints go to `<workdir>/checkpoints`.

Artifact layout (kfp.local): `<workdir>/pipeline-root/rglcd-<timestamp>/<task>/<output>`, with each
task's parameters and artifact metadata in `<task>/executor_output.json`.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.dag import PIPELINE_NAME, build_pipeline
from rglcd.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]   # holds the `components` and `pipelines` packages


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def local_config(cfg: Config) -> Config:
    """The config with every local path absolute, so step subprocesses agree on them; no task retries
    (kfp.local honours `set_retry` with its backoff: a local failure should fail fast; training and step retries) and no model-cache
    PVC (kfp.local applies task env vars, and those would point the caches at its mount path)."""
    out = copy.deepcopy(cfg)
    out.pipeline.retries = 0
    out.pipeline.step_retries = 0
    out.pipeline.model_cache_pvc = None
    out.storage.remote = _absolute(out.storage.remote)
    out.storage.cache_dir = _absolute(out.storage.cache_dir)
    out.model.cache_dir = _absolute(out.model.cache_dir)
    uri = out.registry.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        out.registry.tracking_uri = f"sqlite:///{db}"
    return out


@dataclass
class LocalRun:
    """What a local run left: per task, its output parameters and artifacts (uri + metadata)."""
    run_dir: Path
    tracking_uri: str = ""
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def artifact(self, task: str, name: str) -> dict[str, Any]:
        return self.tasks[task]["artifacts"][name]

    def parameter(self, task: str, name: str) -> Any:
        return self.tasks[task]["parameters"][name]

    @property
    def registered(self) -> dict[str, Any] | None:
        """The registry entry ({version, model_name}) or None when the gate did not pass."""
        return self.tasks.get("register-model", {}).get("parameters")

    @property
    def skipped(self) -> bool:
        """The data check ended the run: no new data since the production model, and not forced."""
        return self.tasks.get("check-data", {}).get("parameters", {}).get("Output") is False

    def gate_reward(self) -> str:
        """'<eval.gate_reward> <student> (teacher <teacher>)': the numbers the gate's reward rule compared."""
        ev = "evaluate-student"
        numbers = json.loads(self.parameter(ev, "metrics_json"))
        name = self.artifact(ev, "metrics")["metadata"].get("gate", {}).get("reward", "reward")
        teacher = numbers.get("teacher_reward")
        return (f"{name} {self.parameter(ev, 'reward'):.4f}"
                + (f" (teacher {teacher:.4f})" if teacher is not None else ""))

    def summary(self) -> str:
        if self.skipped:
            check = self.tasks["check-data"]["parameters"]
            lines = [("pipeline run", str(self.run_dir)), ("data check", check["reason"]),
                     ("training", "not run (--force trains anyway)"), ("registry entry", "none (no new data)")]
            return "\n".join(f"{name + ':':<20}{value}" for name, value in lines)
        train, ev = "train-student", "evaluate-student"
        pointer = json.loads(self.parameter(train, "model_pointer"))
        gate = "passed" if self.parameter(ev, "Output") else f"failed ({self.parameter(ev, 'failed_rules')})"
        reg = self.registered
        lines = [("pipeline run", str(self.run_dir)),
                 ("model", f"{self.artifact(train, 'model')['uri']} (DVC {pointer['outs'][0]['md5']} in "
                           f"{pointer['meta']['rglcd']['remote']})"),
                 ("training report", self.artifact(train, "report")["uri"]),
                 ("training metrics", f"{self.artifact(train, 'metrics')['uri']} (JSONL, one record per step)"),
                 ("evaluation page", self.artifact(ev, "page")["uri"]),
                 ("evaluation metrics", f"{self.artifact(ev, 'metrics')['uri']} (JSON; {self.gate_reward()}, "
                                        f"fid {self.parameter(ev, 'fid'):.4f})"),
                 ("data check", self.parameter("check-data", "reason")),
                 ("gate", gate),
                 ("registry entry", f"{reg['model_name']} version {reg['version']} in {self.tracking_uri}" if reg
                  else "none (the gate did not pass)")]
        return "\n".join(f"{name + ':':<20}{value}" for name, value in lines)


def _parameter_file(path: Path) -> Any:
    """An output parameter written to its own file (`dsl.OutputPath`): numbers and bools parsed, text kept."""
    text = path.read_text()
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, bool)) else text


def read_run(run_dir: Path, tracking_uri: str = "") -> LocalRun:
    """Collect every task's outputs of a finished local run: executor_output.json (return values and
    artifact metadata) plus the files of its `OutputPath` parameters."""
    run = LocalRun(Path(run_dir), tracking_uri)
    for out in sorted(Path(run_dir).glob("*/executor_output.json")):
        data = json.loads(out.read_text())
        arts = {name: {"uri": a["artifacts"][0]["uri"], "metadata": a["artifacts"][0].get("metadata", {})}
                for name, a in data.get("artifacts", {}).items()}
        params = {p.name: _parameter_file(p) for p in out.parent.iterdir()
                  if p.is_file() and p.name not in arts and p != out}
        params.update(data.get("parameterValues", {}))
        run.tasks[out.parent.name] = {"parameters": params, "artifacts": arts}
    return run


def _new_run_dir(root: Path, before: set[Path]) -> Path:
    runs = [p for p in root.glob(f"{PIPELINE_NAME}-*") if p.is_dir() and p not in before]
    if not runs:
        raise RuntimeError(f"kfp.local wrote no run directory under {root}")
    return max(runs, key=lambda p: p.stat().st_mtime)


def run_local(cfg: Config, workdir: str | Path = "runs/pipeline", cache: bool = True, force: bool = False) -> LocalRun:
    """Run every step of the DAG for `cfg` here; returns where its outputs are.

    `cache`: kfp.local's task cache under the pipeline root, used by the tasks the DAG caches
    (configure, prep, LRM pretraining): a re-run with the same data reuses them. A cached task
    leaves no folder in the new run's directory. `force`: the pipeline parameter that trains even when
    the data check finds no new data."""
    from kfp import local

    workdir = Path(workdir).resolve()
    root = workdir / "pipeline-root"
    root.mkdir(parents=True, exist_ok=True)
    cfg = local_config(cfg)
    path = os.environ.get("PYTHONPATH", "")
    if str(REPO_ROOT) not in path.split(os.pathsep):   # step subprocesses inherit it: `import components`
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), path) if p)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
               enable_caching=cache)
    before = set(root.glob(f"{PIPELINE_NAME}-*"))
    with warnings.catch_warnings():   # expected locally: pod settings and images are not used (module doc)
        warnings.filterwarnings("ignore", message=r".*have no effect in the current local runner")
        warnings.filterwarnings("ignore", message=r".*custom or non-Python base image")
        build_pipeline(cfg, checkpoint_root=str(workdir / "checkpoints"))(force=force)
    return read_run(_new_run_dir(root, before), cfg.registry.tracking_uri)
