"""rglcd.registry on MLflow (SQLite file and a real `mlflow server`), with weights in real DVC remotes."""
from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from pathlib import Path

import pytest
import yaml
from fsspec.callbacks import Callback
from servers import isolate_aws_env

from rglcd import provenance
from rglcd.cli import main
from rglcd.config.fields import to_dict
from rglcd.registry import (RegistryError, get_version, list_versions, production_metrics, promote, publish,
                            register)
from rglcd.registry.provenance import flatten, run_key
from rglcd.storage import StorageError, pull, push, read_pointer, write_pointer

METRICS = {"hps_4step": 0.271, "fid": 31.5, "latency_ms_4step": 120.0}


def tree_digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def client(cfg):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.registry.tracking_uri, registry_uri=cfg.registry.tracking_uri)


@pytest.fixture
def model_dir(tiny_teacher_dir, tmp_path) -> Path:
    path = tmp_path / "student"
    shutil.copytree(tiny_teacher_dir("epsilon"), path)
    return path


@pytest.fixture
def local_cfg(tiny_cfg, mlflow_db):
    """tiny config: local directory remote, SQLite registry (pre-migrated)."""
    return tiny_cfg()


def test_register_records_everything(local_cfg, model_dir, tmp_path):
    cfg = local_cfg
    pointer = push(cfg, model_dir).pointer
    info = register(cfg, pointer, METRICS, to_dict(cfg), "data-md5-abc", run_id="kfp-run-123")
    assert (info.version, info.created, info.aliases) == (1, True, ["candidate"])
    assert info.pointer == pointer and info.metrics == METRICS
    assert (info.data_version, info.kfp_run_id) == ("data-md5-abc", "kfp-run-123")
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", info.code_revision)
    assert info.source == f"runs:/{info.run_id}/model"

    run = client(cfg).get_run(info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == str(cfg.train.lr)
    assert run.data.params["eval.steps"] == json.dumps(cfg.eval.steps)
    assert run.data.tags["dvc.md5"] == pointer.md5 and run.data.tags["dvc.url"] == pointer.url
    assert {"lib.torch", "lib.mlflow", "lib.dvc", "lib.python"} <= set(run.data.tags)

    run_dir = tmp_path / "mlflow-artifacts" / info.run_id / "artifacts"   # beside the SQLite file, not in the CWD
    assert read_pointer(run_dir / "dvc-pointer" / "student.dvc") == pointer
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == to_dict(cfg)
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["config_sha256"] == provenance.config_hash(to_dict(cfg)) and prov["libraries"]["torch"]


def test_register_is_idempotent_per_run_key(local_cfg, model_dir):
    cfg = local_cfg
    pointer = push(cfg, model_dir).pointer
    first = register(cfg, pointer, METRICS, to_dict(cfg), "d1", run_id="run-a")
    again = register(cfg, pointer, METRICS, to_dict(cfg), "d1", run_id="run-a")
    assert (again.version, again.created, again.run_id) == (first.version, False, first.run_id)
    assert len(list_versions(cfg)) == 1
    other = register(cfg, pointer, METRICS, to_dict(cfg), "d1", run_id="run-b")     # another run: new version
    assert (other.version, other.created) == (2, True)
    assert [v.version for v in list_versions(cfg)] == [1, 2]


def test_interrupted_registration_reuses_its_finished_run(local_cfg, model_dir, monkeypatch):
    from mlflow import MlflowClient

    cfg = local_cfg
    pointer = push(cfg, model_dir).pointer
    real = MlflowClient.create_model_version
    monkeypatch.setattr(MlflowClient, "create_model_version",
                        lambda *a, **k: (_ for _ in ()).throw(ConnectionError("registry went away")))
    with pytest.raises(ConnectionError):
        register(cfg, pointer, METRICS, to_dict(cfg), "d1")
    monkeypatch.setattr(MlflowClient, "create_model_version", real)
    info = register(cfg, pointer, METRICS, to_dict(cfg), "d1")
    (exp,) = [e for e in client(cfg).search_experiments() if e.name == cfg.registry.model_name]
    assert [r.info.run_id for r in client(cfg).search_runs([exp.experiment_id])] == [info.run_id]


def test_promote_moves_the_alias_and_gates_read_production(local_cfg, model_dir):
    cfg = local_cfg
    assert production_metrics(cfg) is None and list_versions(cfg) == []
    pointer = push(cfg, model_dir).pointer
    v1 = register(cfg, pointer, METRICS, to_dict(cfg), "d1", run_id="r1")
    v2 = register(cfg, pointer, {**METRICS, "fid": 29.0}, to_dict(cfg), "d1", run_id="r2")
    assert production_metrics(cfg) is None             # registered, but nothing promoted yet
    promote(cfg, v1.version)
    assert production_metrics(cfg) == METRICS
    moved = promote(cfg, v2.version, alias="production")
    assert "production" in moved.aliases and production_metrics(cfg)["fid"] == 29.0
    by_version = {v.version: v.aliases for v in list_versions(cfg)}
    assert by_version == {1: [], 2: ["candidate", "production"]}   # candidate moved to v2 on registration
    with pytest.raises(RegistryError, match=r"has no version 7 .* versions: \[1, 2\]"):
        promote(cfg, 7)


def test_registered_pointer_pulls_the_same_bytes(local_cfg, model_dir, tmp_path):
    cfg = local_cfg
    publish(cfg, model_dir, METRICS, to_dict(cfg), "d1")
    info = get_version(cfg, alias="candidate")
    pull(info.pointer, tmp_path / "from-registry")
    assert tree_digest(tmp_path / "from-registry") == tree_digest(model_dir)


def test_register_verifies_the_pointer_first(local_cfg, model_dir, tmp_path):
    cfg = local_cfg
    pointer = push(cfg, model_dir).pointer
    shutil.rmtree(tmp_path / "remote")
    with pytest.raises(StorageError, match="does not exist"):
        register(cfg, pointer, METRICS, to_dict(cfg), "d1")
    assert list_versions(cfg) == []
    with pytest.raises(RegistryError, match="'fid' = 'n/a' is not allowed"):
        register(cfg, pointer, {"fid": "n/a"}, to_dict(cfg), "d1", verify_remote=False)


class StopServerAfterFirstUpload(Callback):
    """Takes the S3 server down right after the first object has been uploaded."""

    def __init__(self, server):
        super().__init__()
        self.server, self.fired = server, False

    def relative_update(self, inc=1):
        super().relative_update(inc)
        if not self.fired:
            self.fired = True
            self.server.stop()


def test_s3_outage_mid_push_registers_nothing_and_retry_completes(s3_remote, tiny_cfg, mlflow_db, model_dir,
                                                                 monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")          # fail fast instead of botocore's backoff
    cfg = tiny_cfg(*s3_remote.overrides)
    try:
        with pytest.raises(StorageError) as err:
            publish(cfg, model_dir, METRICS, to_dict(cfg), "d1", jobs=1,
                    callback=StopServerAfterFirstUpload(s3_remote.server))
    finally:
        s3_remote.server.start()                          # the outage ends; moto kept what was uploaded
    message = str(err.value)
    assert s3_remote.url in message and "objects not transferred" in message and "cannot reach" in message
    assert list_versions(cfg) == [] and client(cfg).search_registered_models() == []
    assert client(cfg).get_experiment_by_name(cfg.registry.model_name) is None

    done = publish(cfg, model_dir, METRICS, to_dict(cfg), "d1")
    assert 0 < done.push.objects_present < done.push.pointer.nfiles   # the retry resumed, it did not restart
    assert done.version.version == 1 and [v.version for v in list_versions(cfg)] == [1]


def test_wrong_credentials_clear_error_no_secret_nothing_registered(s3_remote, tiny_cfg, mlflow_db, model_dir,
                                                                    monkeypatch, tmp_path):
    cfg = tiny_cfg(*s3_remote.overrides)
    with s3_remote.server.require_auth() as (key_id, secret):
        isolate_aws_env(monkeypatch, tmp_path, key_id, secret)
        assert publish(cfg, model_dir, METRICS, to_dict(cfg), "d1", run_id="ok").version.version == 1
        wrong = f"WRONG-{uuid.uuid4().hex}"
        for bad_key, bad_secret in ((key_id, wrong), ("AKIAUNKNOWN0000000", wrong)):
            isolate_aws_env(monkeypatch, tmp_path, bad_key, bad_secret)
            with pytest.raises(StorageError) as err:
                publish(cfg, model_dir, METRICS, to_dict(cfg), "d1", run_id="bad")
            message = str(err.value)
            assert f"access denied by remote {s3_remote.url}" in message and wrong not in message
            assert ("SignatureDoesNotMatch" if bad_key == key_id else "InvalidAccessKeyId") in message
    assert [v.kfp_run_id for v in list_versions(cfg)] == ["ok"]


def test_credentials_never_reach_logs_metrics_or_registry(s3_remote, tiny_cfg, mlflow_db, model_dir, tmp_path,
                                                          monkeypatch, caplog, capsys):
    secret = f"S3CR3T-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    caplog.set_level(logging.DEBUG)
    cfg = tiny_cfg(*s3_remote.overrides)
    config = to_dict(cfg)
    config["data"]["train"] = f"s3://bucket/shards?token={secret}"     # a secret that leaked into the config
    info = publish(cfg, model_dir, METRICS, config, "d1").version
    assert main(["models", "list", "--set", f"registry.tracking_uri={cfg.registry.tracking_uri}"]) == 0
    assert client(cfg).get_run(info.run_id).data.params["data.train"] == "s3://bucket/shards?token=***"
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    out = capsys.readouterr()
    assert leaks == [] and secret not in caplog.text and secret not in out.out + out.err


def test_cli_register_list_promote(local_cfg, model_dir, tmp_path, capsys):
    cfg = local_cfg
    sets = ["--set", f"registry.tracking_uri={cfg.registry.tracking_uri}", "--set", f"storage.remote={cfg.storage.remote}"]
    write_pointer(push(cfg, model_dir).pointer, tmp_path / "student.json")
    (tmp_path / "metrics.json").write_text(json.dumps({"fid": 30.0, "hps": {"1": 0.25, "4": 0.27}}))
    argv = ["register", "--model-pointer", str(tmp_path / "student.json"), "--metrics", str(tmp_path / "metrics.json"),
            "--run-id", "kfp-1", "--out", str(tmp_path / "version.json"), *sets]
    assert main(argv) == 0 and "registered: rglcd-student version 1" in capsys.readouterr().out
    assert main(argv) == 0 and "already registered" in capsys.readouterr().out
    assert json.loads((tmp_path / "version.json").read_text())["metrics"] == {"fid": 30.0, "hps.1": 0.25, "hps.4": 0.27}
    assert main(["models", "promote", "1", *sets]) == 0
    assert "version 1 is now 'production'" in capsys.readouterr().out
    assert main(["models", "list", *sets]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^\s+1\s+candidate,production\s+[0-9a-f]{32}\.dir\s+fid=30", table, re.M)
    assert main(["register", "--model-dir", str(model_dir), "--metrics", str(tmp_path / "metrics.json"),
                 "--run-id", "kfp-2", *sets]) == 0
    out = capsys.readouterr().out
    assert "uploaded 0 objects" in out and "registered: rglcd-student version 2 [candidate]" in out
    (tmp_path / "bad.json").write_text(json.dumps({"fid": 30.0, "device": "cpu"}))
    assert main([*argv[:3], "--metrics", str(tmp_path / "bad.json"), *sets]) == 1
    assert "'device' = 'cpu' is not a number" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("fid: [30.0\n")
    assert main([*argv[:3], "--metrics", str(tmp_path / "broken.yaml"), *sets]) == 1
    assert "broken.yaml' is not valid YAML at line 2" in capsys.readouterr().err


def test_versions_registered_by_others_are_listed(local_cfg, model_dir):
    cfg = local_cfg
    publish(cfg, model_dir, METRICS, to_dict(cfg), "d1")
    client(cfg).create_model_version(cfg.registry.model_name, "s3://elsewhere/model")     # not made by rglcd
    listed = list_versions(cfg)
    assert [(v.version, v.pointer is None, v.source) for v in listed][1] == (2, True, "s3://elsewhere/model")
    assert listed[0].pointer is not None and listed[0].metrics == METRICS


def test_provenance_revision_and_versions(monkeypatch):
    monkeypatch.setenv(provenance.REVISION_ENV, "abc123")
    assert provenance.code_revision() == "abc123"
    monkeypatch.delenv(provenance.REVISION_ENV)
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", provenance.code_revision())
    monkeypatch.setenv(provenance.KFP_RUN_ID_ENV, "from-env")
    assert provenance.kfp_run_id() == "from-env" and provenance.kfp_run_id("arg") == "arg"
    assert provenance.config_hash({"a": 1, "b": 2}) == provenance.config_hash({"b": 2, "a": 1})
    assert run_key("x.dir", {}, "r1") != run_key("x.dir", {}, "r2")
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}


@pytest.mark.slow
def test_against_a_real_mlflow_server(mlflow_server, tiny_cfg, model_dir, tmp_path):
    from mlflow import MlflowClient

    cfg = tiny_cfg(f"registry.tracking_uri={mlflow_server}", f"registry.model_name=srv-{uuid.uuid4().hex[:8]}")
    pointer = push(cfg, model_dir).pointer
    info = register(cfg, pointer, METRICS, to_dict(cfg), "d1", run_id="kfp-srv")
    assert register(cfg, pointer, METRICS, to_dict(cfg), "d1", run_id="kfp-srv").version == info.version
    promote(cfg, info.version)
    assert production_metrics(cfg) == METRICS
    fetched = MlflowClient(mlflow_server).download_artifacts(info.run_id, "dvc-pointer", str(tmp_path))
    assert read_pointer(Path(fetched) / "student.dvc") == pointer
    assert [v.version for v in list_versions(cfg)] == [info.version]


def test_cli_json_of_push_pull_and_register(local_cfg, model_dir, tmp_path, capfd):
    """--json: stdout holds one JSON object and nothing else (summaries and logs go to stderr)."""
    cfg = local_cfg
    sets = ["--set", f"registry.tracking_uri={cfg.registry.tracking_uri}", "--set", f"storage.remote={cfg.storage.remote}"]
    assert main(["push", str(model_dir), "--out", str(tmp_path / "student.json"), "--json", *sets]) == 0
    pushed = json.loads(capfd.readouterr().out)
    pointer = read_pointer(tmp_path / "student.json")
    assert pushed["pointer"] == pointer.to_dvc() and pushed["pointer_file"] == str(tmp_path / "student.json")
    assert pushed["objects_uploaded"] + pushed["objects_present"] == len(tree_digest(model_dir))
    assert main(["pull", str(tmp_path / "student.json"), str(tmp_path / "back"), "--json"]) == 0
    pulled = json.loads(capfd.readouterr().out)
    assert pulled["path"] == str(tmp_path / "back") and pulled["pointer"]["outs"] == pushed["pointer"]["outs"]
    assert tree_digest(tmp_path / "back") == tree_digest(model_dir)
    (tmp_path / "metrics.json").write_text(json.dumps({"fid": 30.0}))
    assert main(["register", "--model-pointer", str(tmp_path / "student.json"), "--metrics",
                 str(tmp_path / "metrics.json"), "--run-id", "kfp-9", "--json", *sets]) == 0
    out = capfd.readouterr()
    version = json.loads(out.out)
    assert (version["version"], version["kfp_run_id"], version["metrics"], version["created"]) == (1, "kfp-9", {"fid": 30.0}, True)
    assert version["pointer"]["outs"] == pushed["pointer"]["outs"] and "registered: rglcd-student version 1" not in out.out
    assert main(["models", "list", "--json", *sets]) == 0
    assert [v["version"] for v in json.loads(capfd.readouterr().out)] == [1]
# ---------------------------------------------------------------- concurrent registration of one run key

def _register_at_barrier(barrier, overrides: list[str], pointer_file: str, out_file: str) -> None:
    """Child process: build the config, wait for the others, register, write the answer."""
    from rglcd.config import load_config

    cfg = load_config("tiny-random", overrides=overrides)
    barrier.wait(timeout=120)
    info = register(cfg, pointer_file, METRICS, to_dict(cfg), "d1", run_id="kfp-same")
    Path(out_file).write_text(json.dumps({"version": info.version, "created": info.created, "run_id": info.run_id}))


def _three_at_once(overrides: list[str], pointer_file: Path, tmp_path: Path) -> list[dict]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    outs = [tmp_path / f"registered-{i}.json" for i in range(3)]
    procs = [ctx.Process(target=_register_at_barrier, args=(barrier, overrides, str(pointer_file), str(out)))
             for out in outs]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    return [json.loads(out.read_text()) for out in outs]


def _assert_one_run_one_version(cfg, answers: list[dict]) -> None:
    from mlflow.entities import ViewType

    versions = list_versions(cfg)
    assert len(versions) == 1 and versions[0].aliases == ["candidate"]
    assert {a["version"] for a in answers} == {versions[0].version}
    assert sum(a["created"] for a in answers) == 1
    exp = client(cfg).get_experiment_by_name(cfg.registry.model_name)
    active = client(cfg).search_runs([exp.experiment_id], run_view_type=ViewType.ACTIVE_ONLY)
    assert [r.info.run_id for r in active] == [versions[0].run_id]
    again = register(cfg, read_pointer(Path(cfg.train.output_dir).parent / "p.json"), METRICS, to_dict(cfg), "d1",
                     run_id="kfp-same")
    assert (again.version, again.created, again.aliases) == (versions[0].version, False, ["candidate"])


def _concurrent_case(cfg, overrides, model_dir, tmp_path):
    pointer_file = write_pointer(push(cfg, model_dir).pointer, tmp_path / "p.json")
    answers = _three_at_once(overrides, pointer_file, tmp_path)
    _assert_one_run_one_version(cfg, answers)


def _child_overrides(tmp_path: Path, model_cache: str, uri: str, name: str) -> list[str]:
    return [f"model.cache_dir={model_cache}", f"train.output_dir={tmp_path / 'run'}",
            f"storage.remote={tmp_path / 'remote'}", f"storage.cache_dir={tmp_path / 'dvc-cache'}",
            f"registry.tracking_uri={uri}", f"registry.model_name={name}",
            "registry.track_training=false"]   # as tiny_cfg: children and parent hash the same config


@pytest.mark.slow
def test_three_concurrent_registrations_of_one_key_make_one_version_on_sqlite(tiny_cfg, mlflow_db, model_dir,
                                                                              model_cache, tmp_path):
    overrides = _child_overrides(tmp_path, model_cache, mlflow_db, "concurrent")
    _concurrent_case(tiny_cfg(*overrides), overrides, model_dir, tmp_path)


@pytest.mark.slow
def test_three_concurrent_registrations_of_one_key_make_one_version_on_a_server(mlflow_server, tiny_cfg, model_dir,
                                                                                model_cache, tmp_path):
    overrides = _child_overrides(tmp_path, model_cache, mlflow_server, f"conc-{uuid.uuid4().hex[:8]}")
    _concurrent_case(tiny_cfg(*overrides), overrides, model_dir, tmp_path)
