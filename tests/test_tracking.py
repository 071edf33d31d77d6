"""Training tracked in MLflow (rglcd.train.tracking) and the registered version as an MLflow pyfunc Model
(rglcd.registry.pyfunc): per-step metrics, dataset input, lineage, `mlflow.pyfunc.load_model` == `rglcd sample`."""
from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from rglcd.config.fields import to_dict
from rglcd.registry import register
from rglcd.storage import push
from rglcd.train import train
from rglcd.train.tracking import MlflowTracker, metrics_of

FAST = ["reward.name=none", "reward.guidance=direct", "train.batch_size=2", "train.validation_every=1000",
        "train.max_steps=3", "train.checkpoint_every=3", "data.shuffle_buffer=8", "train.seed=3",
        "registry.track_training=true"]
DATA = "builtin:photos:12"


def client(cfg):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.registry.tracking_uri, registry_uri=cfg.registry.tracking_uri)


def decode(b64: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(b64))))


# ---------------------------------------------------------------- tracking

def test_training_run_has_per_step_metrics_params_and_dataset(tiny_cfg, mlflow_db, monkeypatch):
    monkeypatch.setenv("KFP_RUN_ID", "kfp-track-1")
    cfg = tiny_cfg(*FAST)
    result = train(cfg, DATA)
    c = client(cfg)
    (run,) = c.search_runs([c.get_experiment_by_name(cfg.registry.model_name).experiment_id],
                           "tags.`rglcd.role` = 'train'")
    assert run.info.status == "FINISHED" and run.data.tags["kfp_run_id"] == "kfp-track-1"
    assert run.data.params["train.max_steps"] == "3" and run.data.params["data.shuffle_buffer"] == "8"
    for name in ("train/loss", "train/lcd_loss", "train/lr", "train/examples_per_s"):
        history = c.get_metric_history(run.info.run_id, name)
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3], name
    lr = {m.value for m in c.get_metric_history(run.info.run_id, "train/lr")}
    assert lr == {cfg.train.lr}
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name and dataset.tags[0].value == "training"
    assert (result.output_dir / "mlflow-run.json").is_file()

    # the registration of the same KFP run makes that run the version's run (not a synthetic one)
    pointer = push(cfg, result.model_dir).pointer
    info = register(cfg, pointer, {"hps": 0.5}, to_dict(cfg), "d1", run_id="kfp-track-1")
    assert info.run_id == run.info.run_id and info.source == f"runs:/{run.info.run_id}/model"
    assert info.metrics == {"hps": 0.5}                     # training's per-step numbers stay out
    assert c.get_run(run.info.run_id).data.tags["dvc.md5"] == pointer.md5


def test_tracking_off_and_other_ranks_log_nothing(tiny_cfg, mlflow_db):
    from rglcd.train.tracking import NullTracker, open_tracking

    cfg = tiny_cfg(*FAST)
    assert isinstance(open_tracking(cfg, {}, Path("x"), is_main=False), NullTracker)
    off = tiny_cfg(*FAST, "registry.track_training=false")
    assert isinstance(open_tracking(off, {}, Path("x"), is_main=True), NullTracker)


def test_an_unreachable_tracking_server_costs_the_tracking_not_the_training(tiny_cfg, monkeypatch, caplog):
    from servers import free_port

    from rglcd.train.tracking import NullTracker, open_tracking

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    # (credentials in the URL are refused at config load: rglcd.config.checks, tests/test_untrusted_input.py)
    cfg = tiny_cfg(*FAST, f"registry.tracking_uri=http://127.0.0.1:{free_port()}")
    assert isinstance(open_tracking(cfg, {"spec": DATA}, Path("x"), is_main=True), NullTracker)
    assert "training is not tracked" in caplog.text


class SlowClient:
    """An MLflow client whose server hangs until released (what a slow tracking server looks like)."""

    def __init__(self):
        self.release, self.batches, self.terminated = threading.Event(), [], None

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.release.wait()
        self.batches.append(list(metrics))

    def set_terminated(self, run_id, status):
        self.terminated = status


def test_a_hung_server_never_blocks_training_and_the_queue_stays_bounded():
    slow = SlowClient()
    tracker = MlflowTracker(slow, "run", queue_size=5, flush_s=0.05)
    started = time.perf_counter()
    with tracker:
        for step in range(1, 101):
            tracker.log({"step": step, "loss": 1.0 / step, "reward": None, "bad_step": False})
        assert time.perf_counter() - started < 1.0          # 100 records while the server hangs
        assert tracker.queue.qsize() <= 5 and tracker.dropped >= 90
        slow.release.set()
    sent = [m for batch in slow.batches for m in batch]
    assert sent and sent[-1].step == 100 and sent[-1].key == "train/loss"   # the newest records survive
    assert slow.terminated == "FINISHED"


def test_a_hung_server_delays_the_end_of_training_by_close_s_at_most():
    hung = SlowClient()
    started = time.perf_counter()
    with MlflowTracker(hung, "run", queue_size=5, flush_s=0.05, close_s=0.5) as tracker:
        tracker.log({"step": 1, "loss": 1.0})
        time.sleep(0.2)                                     # the thread is now stuck in log_batch
    assert time.perf_counter() - started < 3.0 and hung.terminated is None
    hung.release.set()                                      # the server answers: the run is closed late
    tracker._thread.join(timeout=10)
    assert hung.terminated == "FINISHED"


def test_batches_never_exceed_mlflows_cap():
    counting = SlowClient()
    counting.release.set()
    with MlflowTracker(counting, "run", queue_size=1000, flush_s=0.05) as tracker:
        for step in range(1, 301):                            # 300 records x 7 metrics, all queued at once
            tracker.log({"step": step, **{f"m{i}": float(i) for i in range(7)}})
    assert sum(len(b) for b in counting.batches) == 2100 and max(len(b) for b in counting.batches) <= 1000


def test_metrics_of_keeps_finite_numbers_only():
    record = {"step": 3, "loss": 0.5, "reward": None, "bad_step": False, "lr": 1e-4, "nan": float("nan")}
    assert metrics_of(record) == {"train/loss": 0.5, "train/lr": 1e-4}


# ---------------------------------------------------------------- the pyfunc model

@pytest.mark.parametrize("weights", ["dvc", "artifacts"])
def test_registered_version_loads_with_plain_mlflow_and_matches_rglcd_sample(weights, tiny_student_dir, tiny_cfg,
                                                                              mlflow_db, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd

    from rglcd.cli import main

    cfg = tiny_cfg(f"registry.model_weights={weights}")
    info = register(cfg, push(cfg, tiny_student_dir).pointer, {"hps": 1.0}, to_dict(cfg), "d1", run_id="kfp-pyfunc")
    monkeypatch.setenv("RGLCD_WEIGHTS_CACHE", str(tmp_path / "weights-cache"))
    mlflow.set_tracking_uri(cfg.registry.tracking_uri)
    mlflow.set_registry_uri(cfg.registry.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.registry.model_name}@candidate")
    assert {c.name for c in model.metadata.signature.inputs} == {"prompt", "steps", "guidance", "seed", "height",
                                                                  "width"}
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{info.run_id}/model", dst_path=str(tmp_path / "m")))
    assert (local / "input_example.json").is_file() and "rglcd==" in (local / "requirements.txt").read_text()
    assert yaml.safe_load((local / "MLmodel").read_text())["metadata"]["dvc_md5"] == info.pointer.md5
    assert (local / "artifacts" / "weights").is_dir() == (weights == "artifacts")
    assert (tmp_path / "weights-cache").is_dir() == (weights == "dvc")         # pulled by pointer on load

    out = model.predict(pd.DataFrame({"prompt": ["a red fox", "a blue car"], "seed": [7, 8], "steps": [2, 2]}))
    assert list(out.seed) == [7, 8] and list(out.prompt) == ["a red fox", "a blue car"]
    for row, prompt, seed in ((0, "a red fox", 7), (1, "a blue car", 8)):
        main(["sample", "--model", str(tiny_student_dir), "--prompt", prompt, "--seed", str(seed), "--steps", "2",
              "--out", str(tmp_path / f"s{row}"), "--set", f"model.cache_dir={cfg.model.cache_dir}"])
        expected = np.array(Image.open(tmp_path / f"s{row}" / "steps-2" / "000.png"))
        np.testing.assert_array_equal(decode(out.image[row]), expected)


def test_pyfunc_refuses_bad_rows_with_the_field_named(tiny_student_dir, tiny_cfg, mlflow_db, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd

    cfg = tiny_cfg()
    register(cfg, push(cfg, tiny_student_dir).pointer, {"hps": 1.0}, to_dict(cfg), "d1", run_id="kfp-bad")
    monkeypatch.setenv("RGLCD_WEIGHTS_CACHE", str(tmp_path / "weights-cache"))
    mlflow.set_registry_uri(cfg.registry.tracking_uri)
    mlflow.set_tracking_uri(cfg.registry.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.registry.model_name}/1")
    with pytest.raises(ValueError, match="steps: 9 is out of range; allowed: 1..8"):
        model.predict(pd.DataFrame({"prompt": ["a cat"], "steps": [9]}))
    with pytest.raises(ValueError, match="height: 30 is not a multiple of 8"):
        model.predict(pd.DataFrame({"prompt": ["a cat"], "height": [30]}))


def test_weights_cache_pulls_once_and_stays_inside_its_folder(tiny_student_dir, tiny_cfg, tmp_path):
    import dataclasses

    from rglcd.registry.weights import local_weights

    cfg = tiny_cfg()
    pointer = push(cfg, tiny_student_dir).pointer
    first = local_weights(pointer, tmp_path / "cache")
    assert first.parent == tmp_path / "cache" / pointer.md5.removesuffix(".dir")
    assert (first / "model_index.json").read_bytes() == (tiny_student_dir / "model_index.json").read_bytes()
    assert [p.name for p in first.parent.iterdir()] == [first.name]           # no temporary folder left
    (first / "marker").write_text("reused")
    assert (local_weights(pointer, tmp_path / "cache") / "marker").is_file()   # second call: no pull
    sneaky = dataclasses.replace(pointer, path="..")
    assert local_weights(sneaky, tmp_path / "cache2").parent == tmp_path / "cache2" / pointer.md5.removesuffix(".dir")


def test_cli_register_of_a_trained_model_dir_uses_its_training_run(tiny_cfg, mlflow_db, tmp_path, monkeypatch):
    import json

    from rglcd.cli import main

    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    cfg = tiny_cfg(*FAST)
    result = train(cfg, DATA)
    run_id = json.loads((result.output_dir / "mlflow-run.json").read_text())["run_id"]
    (tmp_path / "m.json").write_text(json.dumps({"hps": 0.25}))
    keys = ("model.cache_dir", "storage.remote", "storage.cache_dir", "registry.tracking_uri")
    sets = [a for k in keys for a in ("--set", f"{k}={getattr(getattr(cfg, k.split('.')[0]), k.split('.')[1])}")]
    assert main(["register", "--model-dir", str(result.model_dir), "--metrics", str(tmp_path / "m.json"),
                 "--out", str(tmp_path / "v.json"), *sets]) == 0
    assert json.loads((tmp_path / "v.json").read_text())["run_id"] == run_id
