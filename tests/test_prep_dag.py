"""The DAG's prep: one task by default; with data.prep_partitions > 1 a dsl.ParallelFor of partition pods and
a merge task (compiled IR), run for real through kfp.local (2.17 runs ParallelFor and dsl.Collected)."""
# (no `from __future__ import annotations`: kfp reads the pipeline function's annotations as types)

import json
import os
import warnings
from pathlib import Path

import pytest
import yaml
from kfp import dsl

from components.configure import configure
from components.step_config import config_json_of
from pipelines.compile import compile_pipeline
from pipelines.dag import prep_step
from pipelines.local import REPO_ROOT, local_config, read_run
from rglcd.config import load_config
from rglcd.data.prep import prep

POOL = "pipeline.node_selector={pool: gpu}"


def _compiled(tmp_path, *overrides):
    out = compile_pipeline(load_config("sd21-base-hpsv21-lrm", overrides=list(overrides)), tmp_path / "p.yaml")
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _after_check(spec: dict) -> dict:
    """The tasks inside the data check's dsl.If (everything after it: prep, training, ...)."""
    (name,) = [k for k, v in spec["root"]["dag"]["tasks"].items() if k.startswith("condition")]
    return spec["components"][spec["root"]["dag"]["tasks"][name]["componentRef"]["name"]]["dag"]["tasks"]


def test_one_prep_task_by_default(tmp_path):
    spec, _ = _compiled(tmp_path)
    assert "prep-data" in _after_check(spec)
    assert not any(k.startswith("for-loop") for k in _after_check(spec))


def test_partitions_fan_out_and_merge_into_the_same_outputs(tmp_path):
    spec, platform = _compiled(tmp_path, "data.prep_partitions=4", "data.precompute_latents=true",
                               "pipeline.prep_gpus=1", POOL, "data.prep_workers=3")
    t = _after_check(spec)
    loop = next(k for k in t if k.startswith("for-loop"))
    assert "prep-data" not in t and t["plan-prep-partitions"]["inputs"]["parameters"]["partitions"][
        "runtimeValue"]["constant"] == 4
    items = t[loop]["parameterIterator"]["items"]["inputParameter"]
    assert t[loop]["inputs"]["parameters"][items]["taskOutputParameter"]["producerTask"] == "plan-prep-partitions"
    body = spec["components"][f"comp-{loop}"]["dag"]["tasks"]
    assert list(body) == ["prep-partition-data"]
    inputs = body["prep-partition-data"]["inputs"]["parameters"]
    selectors = {k: v["parameterExpressionSelector"] for k, v in inputs.items()}
    assert selectors == {k: f"parseJson(string_value)[\"{k}\"]"
                         for k in ("config_json", "partition", "partitions", "source_version")}
    source = t["plan-prep-partitions"]["inputs"]["parameters"]["source_version"]   # the data check's, via the item
    assert source["componentInputParameter"].startswith("pipelinechannel--check-data-source_version")
    partials = t["merge-prep-data"]["inputs"]["artifacts"]["partials"]["taskOutputArtifact"]
    assert partials["producerTask"] == loop
    assert spec["components"][f"comp-{loop}"]["outputDefinitions"]["artifacts"][partials["outputArtifactKey"]][
        "isArtifactList"]
    for consumer in ("pretrain-lrm", "train-student"):   # downstream steps read the merge's outputs
        assert "merge-prep-data" in t[consumer]["dependentTasks"]
    execs = spec["deploymentSpec"]["executors"]
    part = execs["exec-prep-partition-data"]["container"]["resources"]
    assert part["accelerator"]["resourceCount"] == "1" and part["resourceCpuRequest"] == "3"   # latents: GPU pool
    assert platform["exec-prep-partition-data"]["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert "accelerator" not in execs["exec-merge-prep-data"]["container"]["resources"]       # merge copies latents
    assert "nodeSelector" not in platform["exec-merge-prep-data"]


def test_prep_gpus_apply_only_to_latent_precompute(tmp_path):
    spec, _ = _compiled(tmp_path, "pipeline.prep_gpus=1")
    assert "accelerator" not in spec["deploymentSpec"]["executors"]["exec-prep-data"]["container"]["resources"]
    spec, _ = _compiled(tmp_path, "pipeline.prep_gpus=2", "data.precompute_latents=true")
    assert spec["deploymentSpec"]["executors"]["exec-prep-data"]["container"]["resources"]["accelerator"][
        "resourceCount"] == "2"


@pytest.mark.slow
def test_fan_out_runs_in_kfp_local_and_equals_one_process_prep(model_cache, tmp_path, monkeypatch):
    from kfp import local

    cfg = local_config(load_config("tiny-random", overrides=[
        f"model.cache_dir={model_cache}", f"storage.remote={tmp_path / 'remote'}",
        f"storage.cache_dir={tmp_path / 'dvc-cache'}", "data.train=builtin:photos:14", "data.shard_size=4",
        "data.prep_partitions=3"]))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))

    @dsl.pipeline(name="prep-fan-out")
    def fan_out(config_json: str = config_json_of(cfg)):
        conf = configure(config_json=config_json, preset="", data_uri="", max_steps=0)
        # an upstream task's output as the source version, as the data check's is in the DAG
        prep_step(cfg, conf.outputs["prep_config"], source_version=conf.outputs["lrm_config"])

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True, enable_caching=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*have no effect in the current local runner")
        fan_out()
    run = read_run(next((tmp_path / "root").glob("prep-fan-out-*")))
    merged = Path(run.artifact("merge-prep-data", "dataset")["uri"])
    single = prep(cfg, cfg.data.train, tmp_path / "single")
    assert {p.name: p.read_bytes() for p in merged.iterdir()} == \
        {p.name: p.read_bytes() for p in (tmp_path / "single").iterdir()}
    assert run.parameter("merge-prep-data", "data_version") == single["content_hash"]
    assert json.loads(run.parameter("merge-prep-data", "data_pointer"))["outs"][0]["nfiles"] == 5   # 4 shards, manifest
