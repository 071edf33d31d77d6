"""`rglcd pipeline run --local`: the whole DAG through kfp.local on the tiny preset, twice in one workdir:
once with the gate forced open (a registry version appears) and once forced shut (none appears; prep
and LRM pretraining come from the cache)."""
import filecmp
import json
from pathlib import Path

import pytest

from pipelines.local import read_run, run_local
from rglcd.cli import main
from rglcd.config import load_config

pytestmark = pytest.mark.slow

ALL_TASKS = {"configure", "check-data", "prep-data", "pretrain-lrm", "train-student", "evaluate-student",
             "register-model"}
FAST = ["train.max_steps=4", "train.checkpoint_every=2", "train.validation_every=4", "lrm.pretrain_steps=6",
        "data.train=builtin:photos:16", "eval.num_prompts=4", "eval.steps=[1, 4]", "eval.teacher_steps=8",
        "eval.latency_repeats=1", "eval.fid_num_images=4"]
OPEN = ["eval.gate_min_reward_margin=-1000", "eval.gate_max_hf_ratio=1000"]
SHUT = ["eval.gate_min_reward_margin=1000"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("local-pipeline")
    common = [f"model.cache_dir={model_cache}", f"storage.remote={root / 'remote'}",
              f"storage.cache_dir={root / 'dvc-cache'}", *FAST]
    return root, common


@pytest.fixture(scope="module")
def passed(work):
    root, common = work
    cfg = load_config("tiny-random", overrides=[*common, *OPEN, f"registry.tracking_uri=sqlite:///{root / 'open.db'}"])
    return cfg, run_local(cfg, root / "work")


@pytest.fixture(scope="module")
def shut(work, passed):
    """The second run, through the CLI, in the same workdir (after `passed`, so the cache is warm)."""
    root, common = work
    sets = [a for o in [*common, *SHUT, f"registry.tracking_uri=sqlite:///{root / 'shut.db'}"] for a in ("--set", o)]
    argv = ["pipeline", "run", "--local", "--preset", "tiny-random", "--workdir", str(root / "work"), *sets]
    return argv, load_config("tiny-random", overrides=sets[1::2])


def test_every_step_ran_and_left_its_artifacts(passed):
    cfg, run = passed
    assert set(run.tasks) == ALL_TASKS
    dataset = run.artifact("prep-data", "dataset")
    manifest = json.loads((Path(dataset["uri"]) / "manifest.json").read_text())
    assert run.parameter("prep-data", "data_version") == manifest["content_hash"] == dataset["metadata"]["data_version"]
    lrm = run.artifact("pretrain-lrm", "lrm")
    assert (Path(lrm["uri"]) / "lrm_config.json").is_file()
    assert lrm["metadata"]["data_version"] == manifest["content_hash"]      # one data version across the lineage
    assert lrm["metadata"]["data_md5"] == json.loads(run.parameter("prep-data", "data_pointer"))["outs"][0]["md5"]
    model = Path(run.artifact("train-student", "model")["uri"])
    assert (model / "model_index.json").is_file() and (model / "unet").is_dir()
    for task, name in (("train-student", "report"), ("evaluate-student", "page")):
        assert Path(run.artifact(task, name)["uri"]).read_text().lstrip().lower().startswith("<!doctype html")
    train_metrics = run.artifact("train-student", "metrics")
    assert train_metrics["metadata"]["step"] == 4
    assert Path(train_metrics["uri"]).read_text().count("\n") == 4      # the metrics JSONL, one line per step
    assert run.parameter("evaluate-student", "Output") is True
    numbers = json.loads(run.parameter("evaluate-student", "metrics_json"))
    assert numbers["hps"] == run.parameter("evaluate-student", "hps")
    assert numbers["reward"] == run.parameter("evaluate-student", "reward") == numbers["hps"]   # gate reward hpsv2.1
    assert run.gate_reward() == f"hpsv2.1 {numbers['reward']:.4f} (teacher {numbers['teacher_reward']:.4f})"


def test_dvc_remote_holds_the_model(passed, tmp_path):
    from rglcd.storage import Pointer, pull

    cfg, run = passed
    pointer = Pointer.from_dvc(json.loads(run.parameter("train-student", "model_pointer")))
    assert pointer.remote == str(cfg.storage.remote)
    pull(pointer, tmp_path / "fresh")                       # a fresh machine: the pointer alone, an empty cache
    model = Path(run.artifact("train-student", "model")["uri"])
    cmp = filecmp.dircmp(model, tmp_path / "fresh")
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files
    assert run.artifact("train-student", "model")["metadata"]["dvc"]["outs"][0]["md5"] == pointer.md5


def test_registry_holds_a_version_when_the_gate_passes(passed):
    from rglcd.registry import list_versions

    cfg, run = passed
    (version,) = list_versions(cfg)
    assert run.registered == {"version": str(version.version), "model_name": cfg.registry.model_name}
    assert version.pointer.md5 == json.loads(run.parameter("train-student", "model_pointer"))["outs"][0]["md5"]
    assert version.data_version == run.parameter("prep-data", "data_version")
    assert version.kfp_run_id and version.metrics["hps"] == pytest.approx(run.parameter("evaluate-student", "hps"))


def test_gate_failure_registers_nothing_and_reuses_cached_steps(shut, capsys):
    from rglcd.registry import list_versions

    argv, cfg = shut
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "registry entry:     none (the gate did not pass)" in out
    run = read_run(Path(next(line.split(":", 1)[1].strip() for line in out.splitlines()
                             if line.startswith("pipeline run:"))))
    assert run.parameter("evaluate-student", "Output") is False
    assert "reward_margin" in run.parameter("evaluate-student", "failed_rules")
    assert "(JSON; hpsv2.1 " in out and "(teacher " in out     # the run's summary names the gate reward
    assert "register-model" not in run.tasks and list_versions(cfg) == []
    # same data and data-shaping config as the first run: prep and LRM pretraining were cache hits
    assert {"prep-data", "pretrain-lrm"}.isdisjoint(run.tasks)
    assert {"configure", "train-student", "evaluate-student"} <= set(run.tasks)


def test_registered_version_is_an_mlflow_model_with_the_pixels_of_rglcd_sample(passed, tmp_path, monkeypatch):
    import base64
    import io

    import mlflow
    import numpy as np
    import pandas as pd
    from PIL import Image

    cfg, run = passed
    monkeypatch.setenv("RGLCD_WEIGHTS_CACHE", str(tmp_path / "weights"))
    mlflow.set_tracking_uri(cfg.registry.tracking_uri)
    mlflow.set_registry_uri(cfg.registry.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.registry.model_name}@candidate")   # weights pulled by pointer
    out = model.predict(pd.DataFrame({"prompt": ["a lighthouse at dusk"], "seed": [5], "steps": [4]}))
    exported = run.artifact("train-student", "model")["uri"]
    assert main(["sample", "--model", exported, "--prompt", "a lighthouse at dusk", "--seed", "5", "--steps", "4",
                 "--out", str(tmp_path / "sample"), "--set", f"model.cache_dir={cfg.model.cache_dir}"]) == 0
    served = np.array(Image.open(io.BytesIO(base64.b64decode(out.image[0]))))
    np.testing.assert_array_equal(served, np.array(Image.open(tmp_path / "sample" / "steps-4" / "000.png")))


def test_the_version_points_at_the_training_run_with_per_step_metrics(passed):
    from mlflow import MlflowClient

    from rglcd.registry import list_versions

    cfg, run = passed
    (version,) = list_versions(cfg)
    client = MlflowClient(cfg.registry.tracking_uri, cfg.registry.tracking_uri)   # tracking and registry
    training = client.get_run(version.run_id)
    assert training.data.tags["rglcd.role"] == "train" and training.data.tags["dvc.md5"] == version.pointer.md5
    for name in ("train/loss", "train/lr", "train/examples_per_s"):
        assert sorted(m.step for m in client.get_metric_history(version.run_id, name)) == [1, 2, 3, 4], name
    assert training.inputs.dataset_inputs and version.source == f"runs:/{version.run_id}/model"
    # the entry says what the distillation bought when served: images/s against the teacher's
    assert {"served_images_per_s_b1", "teacher_images_per_s_b1", "served_speedup_b8"} <= set(version.metrics)
