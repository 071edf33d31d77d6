"""Submit the pipeline to a Kubeflow Pipelines cluster (`kfp.Client`), and schedule recurring retraining.

Everything that can be wrong is checked before anything is sent: the config (`check_cluster_config`),
the cron expression, and the host (its healthz answers). The pipeline is compiled from the config
(`kfp.Client.create_run_from_pipeline_func` for a run, a temporary package for a schedule) and sent inline,
so the run records exactly what ran.

One scheduling path (docs/operations.md 4.2): a recurring run is the same pipeline with the same parameters as
a submitted run. `kfp.Client.create_recurring_run` (kfp/client/client.py) posts a V2beta1RecurringRun whose
`runtime_config.parameters` hold them and whose `pipeline_spec` is the compiled package
(backend/api/v2beta1/recurring_run.proto, POST /apis/v2beta1/recurringruns): `config_json` is the config
resolved here (preset < mounted settings file < RGLCD_* environment < --set), so every tick carries the
cluster's DVC remote and MLflow server, and `force` decides whether unchanged data trains.

Credentials. `kfp.Client(host=...)` sends no token of its own (kfp/client/client.py `_load_config`: an explicit
host skips the in-cluster defaults), which multi-user KFP refuses. Inside a pod the submitter therefore passes
`ServiceAccountTokenVolumeCredentials`: the projected ServiceAccount token with audience
`pipelines.kubeflow.org` that KFP documents, at $KF_PIPELINES_SA_TOKEN_PATH or
/var/run/secrets/kubeflow/pipelines/token (kfp/client/__init__.py; kubeflow/manifests mounts the same for its
own components, e.g. ml-pipeline-scheduledworkflow). The KFP API server reviews that token and authorises each
call by SubjectAccessReview on pipelines.kubeflow.org resources (backend/src/apiserver/common/const.go: runs,
jobs for recurring runs, experiments, pipelines), which the submitter's Role in manifests/base/rbac.yaml grants.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from components.step_config import config_json_of
from pipelines.compile import check_cluster_config, compile_pipeline
from pipelines.dag import build_pipeline
from rglcd.config import Config, ConfigError

TERMINAL = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "ERROR"}

# robfig/cron (KFP's scheduler): 6 fields, seconds first. name -> (low, high, names allowed)
_CRON_FIELDS = (("second", 0, 59, ()), ("minute", 0, 59, ()), ("hour", 0, 23, ()),
                ("day of month", 1, 31, ()),
                ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
                ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")))
_CRON_PART = re.compile(r"^(\*|\?|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?$")


class SubmitError(RuntimeError):
    """Submission refused before or while talking to KFP; the message says what to change."""


def _cron_value(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if text.upper() in names:
        return names.index(text.upper()) + low
    if not text.isdigit() or not low <= int(text) <= high:
        raise ConfigError(f"cron {name} field: {text!r} is not allowed; allowed: {low}-{high}"
                          + (f" or {names[0]}-{names[-1]}" if names else ""))
    return int(text)


def validate_cron(expr: str) -> str:
    """Check a 6-field, seconds-first cron expression (robfig/cron, as KFP's scheduler reads it)."""
    fields = expr.split()
    if len(fields) == 5:
        raise ConfigError(f"cron {expr!r} has 5 fields, but KFP schedules use 6 with seconds first "
                          f"(robfig/cron): a 5-field expression would be read shifted by one field. "
                          f"Did you mean '0 {expr.strip()}'? e.g. '0 0 3 * * *' = every day at 03:00:00")
    if len(fields) != 6:
        raise ConfigError(f"cron {expr!r} has {len(fields)} fields; allowed: 6 fields "
                          "'second minute hour day-of-month month day-of-week', e.g. '0 0 3 * * *'")
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS):
        for part in text.split(","):
            if not _CRON_PART.match(part):
                raise ConfigError(f"cron {name} field: {part!r} is not allowed; allowed: *, ?, N, N-M, */S, N-M/S, "
                                  "comma-separated lists")
            base = part.split("/")[0]
            if base not in ("*", "?"):
                bounds = [_cron_value(v, name, low, high, names) for v in base.split("-")]
                if bounds != sorted(bounds):
                    raise ConfigError(f"cron {name} field: range {base!r} runs backwards")
    return " ".join(fields)


def check_host(host: str, timeout: float = 10.0, token: str | None = None) -> dict[str, Any]:
    """GET <host>/apis/v2beta1/healthz (with the bearer `token` if given); returns its JSON or raises
    SubmitError naming the host."""
    if not re.match(r"^https?://[^/\s]+", host or ""):
        raise SubmitError(f"--host {host!r} is not allowed; allowed: an http(s):// URL of the KFP API, "
                          "e.g. http://ml-pipeline.kubeflow:8888")
    url = host.rstrip("/") + "/apis/v2beta1/healthz"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        raise SubmitError(f"KFP at {host} answered {url} with HTTP {err.code}; is this the KFP API endpoint "
                          "(ml-pipeline service, port 8888)?") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise SubmitError(f"cannot reach KFP at {host} ({reason}); nothing was submitted. Check --host and that "
                          "the API is reachable (e.g. kubectl -n kubeflow port-forward svc/ml-pipeline 8888:8888)") \
            from None


def token_path() -> Path | None:
    """The projected KFP token of this pod ($KF_PIPELINES_SA_TOKEN_PATH or KFP's default path), if mounted."""
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH

    path = Path(os.environ.get(KF_PIPELINES_SA_TOKEN_ENV) or KF_PIPELINES_SA_TOKEN_PATH)
    return path if path.is_file() else None


def _client(cfg: Config, host: str, log: Callable[[str], None]) -> tuple[Any, str | None]:
    """kfp.Client for `host` (already checked), with the namespace set when KFP runs multi-user, and the
    projected ServiceAccount token when this runs in a pod that mounts one."""
    import kfp
    from kfp.client import ServiceAccountTokenVolumeCredentials

    for warning in check_cluster_config(cfg):
        log(f"warning: {warning}")
    path = token_path()
    health = check_host(host, token=path.read_text().strip() if path else None)
    namespace = cfg.pipeline.namespace if health.get("multi_user") else None
    if path is None and health.get("multi_user"):
        log("warning: multi-user KFP and no ServiceAccount token at $KF_PIPELINES_SA_TOKEN_PATH: requests go "
            "without credentials (mount a projected token with audience pipelines.kubeflow.org)")
    credentials = ServiceAccountTokenVolumeCredentials(path=str(path)) if path else None
    return kfp.Client(host=host, namespace=namespace or "kubeflow", credentials=credentials), namespace


def run_arguments(cfg: Config, data_uri: str = "", max_steps: int = 0, force: bool = False) -> dict[str, Any]:
    """The pipeline parameters a submission sets: the whole config (with the cluster's remote and tracking URI,
    as loaded from the mounted settings) plus the overrides."""
    if max_steps < 0:
        raise ConfigError(f"--max-steps {max_steps}; allowed: 0 (keep train.max_steps) or > 0")
    return {"config_json": config_json_of(cfg), "preset": "", "data_uri": data_uri, "max_steps": max_steps,
            "force": bool(force)}


@dataclass
class Submitted:
    run_id: str
    experiment_id: str
    url: str
    state: str | None = None       # final state when waited for


def wait_for_run(client: Any, run_id: str, timeout: float | None = None, poll: float = 10.0,
                 log: Callable[[str], None] = print) -> str:
    """Poll the run, print each change of the run's and its tasks' states, return the final state."""
    start, seen = time.monotonic(), {}
    while True:
        run = client.get_run(run_id)
        state = str(run.state or "PENDING").upper()
        changes = {"run": state}
        for task in getattr(run.run_details, "task_details", None) or []:
            changes[task.display_name or task.task_id] = str(task.state or "").upper()
        for name, value in changes.items():
            if seen.get(name) != value:
                log(f"[{time.monotonic() - start:6.0f} s] {name}: {value}")
        seen.update(changes)
        if state in TERMINAL:
            return state
        if timeout is not None and time.monotonic() - start > timeout:
            raise SubmitError(f"run {run_id} still {state} after {timeout:.0f} s (it keeps running on the cluster)")
        time.sleep(poll)


def submit(cfg: Config, host: str, *, run_name: str | None = None, experiment: str | None = None,
           data_uri: str = "", max_steps: int = 0, force: bool = False, wait: bool = True,
           timeout: float | None = None, poll: float = 10.0, log: Callable[[str], None] = print) -> Submitted:
    """Compile `cfg`, create (or reuse) the experiment, start a run as `pipeline.service_account`."""
    arguments = run_arguments(cfg, data_uri, max_steps, force)
    client, namespace = _client(cfg, host, log)
    result = client.create_run_from_pipeline_func(
        build_pipeline(cfg), arguments=arguments,
        run_name=run_name or f"rglcd-{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}",
        experiment_name=experiment or cfg.pipeline.experiment, namespace=namespace,
        service_account=cfg.pipeline.service_account)
    out = Submitted(result.run_id, result.run_info.experiment_id, f"{host.rstrip('/')}/#/runs/details/{result.run_id}")
    log(f"submitted run {out.run_id} in experiment {experiment or cfg.pipeline.experiment}: {out.url}")
    if wait:
        out.state = wait_for_run(client, out.run_id, timeout, poll, log)
    return out


@dataclass
class Scheduled:
    recurring_run_id: str
    experiment_id: str
    cron: str


def schedule(cfg: Config, host: str, cron: str, *, name: str | None = None, experiment: str | None = None,
             data_uri: str = "", max_steps: int = 0, force: bool = False, max_concurrency: int = 1,
             catchup: bool = False, log: Callable[[str], None] = print) -> Scheduled:
    """Create a recurring run (6-field cron) of the same pipeline `submit` runs. Each tick starts with the
    data check: unchanged data ends the run before prep ("no new data"; `force` trains every tick), new data
    behind the same URI is a prep cache miss (prep's inputs hold the source version)."""
    cron = validate_cron(cron)
    if max_concurrency < 1:
        raise ConfigError(f"--max-concurrency {max_concurrency}; allowed: >= 1")
    arguments = run_arguments(cfg, data_uri, max_steps, force)
    client, namespace = _client(cfg, host, log)
    exp = client.create_experiment(name=experiment or cfg.pipeline.experiment, namespace=namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(cfg, Path(tmp) / "rglcd-pipeline.yaml")
        rec = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name or f"rglcd-{cfg.preset}-retrain", cron_expression=cron,
            max_concurrency=max_concurrency, no_catchup=not catchup, params=arguments,
            pipeline_package_path=str(package), service_account=cfg.pipeline.service_account)
    log(f"scheduled {rec.recurring_run_id} ({cron}) in experiment {experiment or cfg.pipeline.experiment}")
    return Scheduled(rec.recurring_run_id, exp.experiment_id, cron)
