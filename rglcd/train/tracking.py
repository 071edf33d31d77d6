"""Training tracked in MLflow: params, the dataset as the run's input, per-step metrics (docs/serving.md "Tracking").

    with open_tracking(cfg, data_info, out_dir, is_main, resumed=...) as tracker:   # rank 0 only; others no-op
        ...
        tracker.log(record)          # never blocks: a bounded queue, drained by a background thread

The run lives in the experiment named like the registered model at `registry.tracking_uri`, tagged
`rglcd.role=train` and with the KFP run id, so the registration of the same KFP run makes it the version's
run (rglcd.registry.mlflow_registry.find_training_run). Per-step numbers go in as `train/<name>` metrics
(loss, lcd_loss, reward, reward_loss, lr, grad_norm, examples_per_s, step_time_s, ...) with step = the
optimizer step, batched into `log_batch` calls by the thread. A slow or unreachable server never stalls
training: when the queue is full the oldest records are dropped and counted (tag `rglcd.dropped_records`).
The run id is kept in `<output_dir>/mlflow-run.json`, so a resumed training continues the same run.
Upstream: mlflow/tracking/client.py (`log_batch`, `log_inputs`), mlflow/data/meta_dataset.py.
"""
from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_FILE = "mlflow-run.json"
PREFIX = "train/"
BATCH_LIMIT = 1000              # MLflow's cap on metrics per log_batch call
_STOP = object()


def metrics_of(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of one metrics record, named `train/<key>` (the step itself is the x-axis)."""
    return {f"{PREFIX}{k}": float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class NullTracker:
    """Tracking switched off (registry.track_training false) or a process other than rank 0."""
    run_id: str | None = None
    dropped = 0
    interrupted = False

    def log(self, record: dict[str, Any]) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class MlflowTracker(NullTracker):
    def __init__(self, client: Any, run_id: str, queue_size: int, flush_s: float = 1.0, close_s: float = 30.0):
        self.client, self.run_id, self.flush_s, self.close_s = client, run_id, flush_s, close_s
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self.interrupted = False
        self._thread = threading.Thread(target=self._drain, name="rglcd-mlflow-metrics", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        """Enqueue without ever waiting: when the queue is full the oldest record makes room."""
        while True:
            try:
                self.queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def log(self, record: dict[str, Any]) -> None:
        self._put((int(record["step"]), int(time.time() * 1000), metrics_of(record)))

    def _take(self) -> tuple[list, str | None]:
        """Records waiting in the queue (waits flush_s for the first); (records, final status if closing)."""
        items = []
        try:
            item = self.queue.get(timeout=self.flush_s)
            while True:
                if item[0] is _STOP:
                    return items, item[1]
                items.append(item)
                item = self.queue.get_nowait()
        except queue.Empty:
            return items, None

    def _send(self, items: list) -> None:
        """log_batch calls of at most BATCH_LIMIT metrics; a failed call drops its records (counted)."""
        from mlflow.entities import Metric

        chunk: list = []
        for item in [*items, None]:
            if item is None or (chunk and len(chunk) + len(item[2]) > BATCH_LIMIT):
                try:
                    if chunk:
                        self.client.log_batch(self.run_id, metrics=chunk)
                except Exception as err:  # noqa: BLE001  (a tracking outage must not end training)
                    self.dropped += len({m.step for m in chunk})
                    log.warning("MLflow metrics not logged (%d records dropped so far): %s", self.dropped, err)
                chunk = []
            if item is not None:
                step, ts, values = item
                chunk += [Metric(k, v, ts, step) for k, v in values.items()]

    def _close(self, status: str) -> None:
        from mlflow.entities import RunTag

        try:
            self.client.log_batch(self.run_id, tags=[RunTag("rglcd.dropped_records", str(self.dropped))])
            self.client.set_terminated(self.run_id, status)
        except Exception as err:  # noqa: BLE001
            log.warning("MLflow run %s not closed (%s): %s", self.run_id, status, err)

    def _drain(self) -> None:
        status = None
        while status is None:
            items, status = self._take()
            self._send(items)
        self._close(status)

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FAILED" if exc_type else ("KILLED" if self.interrupted else "FINISHED")
        self._put((_STOP, status))
        self._thread.join(timeout=self.close_s)    # a hung server delays the end of training by close_s at most
        if self._thread.is_alive():
            log.warning("MLflow server did not answer within %.0f s: run %s is closed in the background",
                        self.close_s, self.run_id)


def _dataset(data_info: dict[str, Any]) -> Any:
    """The training data as an mlflow.data dataset: its location and content hash (no data is uploaded)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from rglcd.storage import redact

    spec = redact(str(data_info.get("spec")))
    try:
        source = resolve_dataset_source(spec)
    except Exception:  # noqa: BLE001  (builtin:... and other specs no MLflow source understands)
        source = CodeDatasetSource({"rglcd.data": spec})
    digest = data_info.get("content_hash")
    return MetaDataset(source, name=Path(spec.rstrip("/")).name or spec, digest=digest[:36] if digest else None)


def _log_start(client: Any, run_id: str, config: dict[str, Any], data_info: dict[str, Any]) -> None:
    from mlflow.entities import DatasetInput, InputTag, Param

    from rglcd.registry.provenance import flatten

    params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in flatten(config).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    dataset = _dataset(data_info)._to_mlflow_entity()
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])])


def _resume_run(client: Any, out_dir: Path) -> str | None:
    file = out_dir / RUN_FILE
    if not file.is_file():
        return None
    try:
        run_id = str(json.loads(file.read_text())["run_id"])
        client.get_run(run_id)
    except Exception:  # noqa: BLE001  (another tracking server, a deleted run, a damaged file: start a new run)
        return None
    client.update_run(run_id, status="RUNNING")
    return run_id


def _start(cfg: Any, data_info: dict[str, Any], out_dir: Path, resumed: bool) -> MlflowTracker:
    from rglcd.config.fields import to_dict
    from rglcd.registry.mlflow_registry import redact_tree, tracking_client
    from rglcd.provenance import kfp_run_id

    client, exp_id = tracking_client(cfg)
    run_id = _resume_run(client, out_dir) if resumed else None
    if run_id is None:
        tags = {"rglcd.role": "train", "kfp_run_id": kfp_run_id() or "", "rglcd.output_dir": str(out_dir)}
        run_id = client.create_run(exp_id, tags=tags, run_name=f"train-{out_dir.name}").info.run_id
        _log_start(client, run_id, redact_tree(to_dict(cfg)), data_info)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id}))
    return MlflowTracker(client, run_id, cfg.registry.track_queue_size)


def open_tracking(cfg: Any, data_info: dict[str, Any], out_dir: Path, is_main: bool, resumed: bool = False):
    """A tracker for this process: MLflow on rank 0 when `registry.track_training`, else a no-op.

    A tracking server that cannot be reached at the start costs the run its tracking, not the training: a
    warning, and the run goes on untracked (the registration then records its own run).
    """
    if not (is_main and cfg.registry.track_training):
        return NullTracker()
    try:
        return _start(cfg, data_info, out_dir, resumed)
    except Exception as err:  # noqa: BLE001  (MLflow, network and file errors alike)
        from rglcd.registry.mlflow_registry import safe_uri

        log.warning("training is not tracked: MLflow at %s failed: %s", safe_uri(cfg.registry.tracking_uri), err)
        return NullTracker()
