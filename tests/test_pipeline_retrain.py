"""Scheduled retraining that knows its data, through kfp.local (docs/operations.md 4.6, 4.7): one workdir, four
runs in sequence on an image folder. 1: trains and registers. 2: same data, production trained on it: the data
check ends the run ("no new data"), nothing trains, nothing registers. 3: images added: prep runs again (its
cache key is the source version), a new version with a new data version is registered. 4: same data again with
--force and a warm start: trains anyway, from the production student, and the version records its parent."""
import json
import time
from pathlib import Path

import pytest

from pipelines.local import read_run, run_local
from rglcd.cli import main
from rglcd.config import load_config
from rglcd.registry import list_versions, promote
from rglcd.registry.datacheck import NO_NEW_DATA

pytestmark = pytest.mark.slow

FAST = ["train.max_steps=2", "train.checkpoint_every=2", "train.validation_every=2", "reward.guidance=direct",
        "eval.num_prompts=4", "eval.steps=[1, 4]", "eval.teacher_steps=4", "eval.latency_repeats=1",
        "eval.fid_num_images=4", "eval.fid_reference=null", "eval.gate_min_reward_margin=-1000",
        "eval.gate_max_hf_ratio=1000", "eval.gate_max_fid_regression=1000"]
TRAINING = {"prep-data", "train-student", "evaluate-student", "register-model"}


def add_images(folder: Path, start: int, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        Image.new("RGB", (48 + i, 40 + i), (20 * i % 255, 120, 200 - 10 * i)).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"a flat colour picture number {i}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("retrain")
    data = root / "images"
    add_images(data, 0, 6)
    sets = [f"model.cache_dir={model_cache}", f"storage.remote={root / 'remote'}", f"storage.cache_dir={root / 'dvc'}",
            f"registry.tracking_uri=sqlite:///{root / 'mlflow.db'}", f"data.train={data}", *FAST]
    cfg = load_config("tiny-random", overrides=sets)
    work, out, seconds = root / "work", {}, {}

    def timed(name, fn):
        start = time.perf_counter()
        out[name] = fn()
        seconds[name] = time.perf_counter() - start

    timed("first", lambda: run_local(cfg, work))
    promote(cfg, out["first"].registered["version"], "production")
    timed("unchanged", lambda: run_local(cfg, work))
    add_images(data, 6, 3)
    timed("added", lambda: run_local(cfg, work))
    promote(cfg, out["added"].registered["version"], "production")
    argv = ["pipeline", "run", "--local", "--preset", "tiny-random", "--workdir", str(work), "--force", "--json",
            *[a for s in [*sets, "train.warm_start=production"] for a in ("--set", s)]]
    timed("forced", lambda: main(argv))
    print("local run seconds:", json.dumps({k: round(v, 1) for k, v in seconds.items()}))
    return cfg, out, seconds


def test_first_run_trains_and_records_the_source_version(runs):
    cfg, out, _ = runs
    first = out["first"]
    assert TRAINING <= set(first.tasks) and not first.skipped
    (version,) = [v for v in list_versions(cfg) if str(v.version) == first.registered["version"]]
    assert version.source_version == first.parameter("check-data", "source_version")
    assert version.data_version == first.parameter("prep-data", "data_version")


def test_unchanged_data_ends_the_run_before_prep(runs):
    cfg, out, seconds = runs
    skip = out["unchanged"]
    assert set(skip.tasks) <= {"configure", "check-data"} and "check-data" in skip.tasks   # no prep, no GPU step
    assert skip.skipped and skip.registered is None
    reason = skip.parameter("check-data", "reason")
    assert reason.startswith(NO_NEW_DATA) and "production is version 1" in reason
    assert skip.parameter("check-data", "source_version") == out["first"].parameter("check-data", "source_version")
    assert "no new data" in skip.summary() and "not run" in skip.summary()
    assert seconds["unchanged"] < seconds["first"] / 2


def test_added_images_retrain_and_register_a_new_data_version(runs):
    cfg, out, _ = runs
    first, added = out["first"], out["added"]
    assert TRAINING <= set(added.tasks) and "new data" in added.parameter("check-data", "reason")
    assert added.parameter("check-data", "source_version") != first.parameter("check-data", "source_version")
    assert added.parameter("prep-data", "data_version") != first.parameter("prep-data", "data_version")
    manifest = json.loads((Path(added.artifact("prep-data", "dataset")["uri"]) / "manifest.json").read_text())
    assert manifest["num_records"] == 9
    versions = {str(v.version): v for v in list_versions(cfg)}
    new = versions[added.registered["version"]]
    assert new.data_version == manifest["content_hash"] and new.source_version != versions["1"].source_version


def test_force_retrains_unchanged_data_from_the_production_student(runs):
    cfg, out, _ = runs
    assert out["forced"] == 0
    versions = list_versions(cfg)
    assert len(versions) == 3
    forced, parent = versions[-1], versions[-2]
    assert forced.source_version == parent.source_version           # the same data, trained again because forced
    run = read_run(max((Path(cfg.storage.remote).parent / "work" / "pipeline-root").glob("rglcd-*"),
                       key=lambda p: p.stat().st_mtime))
    assert "forced" in run.parameter("check-data", "reason")
    assert "prep-data" not in run.tasks                              # same source version: prep came from the cache
    assert run.artifact("train-student", "model")["metadata"]["warm_start"]["version"] == parent.version
    from mlflow import MlflowClient

    uri = cfg.registry.tracking_uri   # the registry URI too: another test may have set a global one
    tags = MlflowClient(uri, uri).get_model_version(cfg.registry.model_name, str(forced.version)).tags
    assert json.loads(tags["warm_start"]) == {"from": "production", "model_name": cfg.registry.model_name,
                                              "version": parent.version, "md5": parent.pointer.md5,
                                              "data_version": parent.data_version}
