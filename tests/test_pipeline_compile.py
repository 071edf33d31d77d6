"""The compiled pipeline: every variant's PipelineSpec/PlatformSpec carries the GPU, pool, Secret, /dev/shm,
PVC, retry, caching and gating settings the config asks for; the config parameter round-trips."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.step_config import (LRM_SECTIONS, PREP_SECTIONS, config_json_of, load_step_config,
                                    parse_config_json, resolve_config)
from pipelines.compile import check_cluster_config, compile_pipeline, version_name
from rglcd.cli import main
from rglcd.config import ConfigError, load_config

POOL = "pipeline.node_selector={cloud.google.com/gke-accelerator: nvidia-h100-80gb}"


ROOT = Path(__file__).resolve().parents[1]


def compiled(tmp_path, preset, *overrides, **kwargs):
    """(pipeline spec, kubernetes platform executors) of the compiled pipeline for a preset + overrides."""
    cfg = load_config(preset, overrides=list(overrides))
    out = compile_pipeline(cfg, tmp_path / "p.yaml", **kwargs)
    docs = list(yaml.safe_load_all(out.read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return docs[0], platform


def tasks(spec):
    """Every task of the pipeline, the ones inside dsl.If blocks (condition components) included."""
    found = dict(spec["root"]["dag"]["tasks"])
    for name, comp in spec["components"].items():
        if name.startswith("comp-condition-"):
            found.update(comp["dag"]["tasks"])
    return found


def container(spec, task):
    name = f"exec-{task}"
    return spec["deploymentSpec"]["executors"][name]["container"]


def caching(task_spec):
    return task_spec.get("cachingOptions", {}).get("enableCache", False)


@pytest.fixture(scope="module")
def gpu_lrm(tmp_path_factory):
    return compiled(tmp_path_factory.mktemp("gpu"), "sd21-base-hpsv21-lrm", POOL, "pipeline.gpus=4",
                    "pipeline.retries=2", "pipeline.shm_size=32Gi")


def test_dag_shape_and_gate(gpu_lrm):
    spec, _ = gpu_lrm
    t = tasks(spec)
    assert set(t) == {"configure", "check-data", "prep-data", "pretrain-lrm", "train-student", "evaluate-student",
                      "register-model", "condition-1", "condition-2"}
    # the data check runs first, at the root; everything that needs data or a GPU is inside its dsl.If
    assert set(spec["root"]["dag"]["tasks"]) == {"configure", "check-data", "condition-1"}
    assert t["condition-1"]["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--check-data-Output'] == true"
    assert set(spec["components"]["comp-condition-1"]["dag"]["tasks"]) == {
        "prep-data", "pretrain-lrm", "train-student", "evaluate-student", "condition-2"}
    assert t["prep-data"]["inputs"]["parameters"]["source_version"] == {
        "componentInputParameter": "pipelinechannel--check-data-source_version"}    # prep's cache key: the data
    assert {"prep-data", "pretrain-lrm"} <= set(t["train-student"]["dependentTasks"])
    assert t["train-student"]["inputs"]["artifacts"]["lrm"]["taskOutputArtifact"]["producerTask"] == "pretrain-lrm"
    # LRM pretraining reads the data by DVC pointer (a plain parameter), so its cache key is the data version
    pre = t["pretrain-lrm"]["inputs"]
    assert "artifacts" not in pre and pre["parameters"]["data_pointer"]["taskOutputParameter"] == {
        "outputParameterKey": "data_pointer", "producerTask": "prep-data"}
    cond = t["condition-2"]
    assert cond["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--evaluate-student-Output'] == true"
    assert list(spec["components"]["comp-condition-2"]["dag"]["tasks"]) == ["register-model"]
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"config_json", "preset", "data_uri", "max_steps",
                                                                   "force"}
    check = spec["components"]["comp-check-data"]["outputDefinitions"]["parameters"]
    assert check["Output"]["parameterType"] == "BOOLEAN" and check["reason"]["parameterType"] == "STRING"
    outputs = spec["components"]["comp-evaluate-student"]["outputDefinitions"]["parameters"]
    assert outputs["Output"]["parameterType"] == "BOOLEAN"
    assert outputs["fid"]["parameterType"] == outputs["hps"]["parameterType"] == "NUMBER_DOUBLE"
    assert outputs["reward"]["parameterType"] == "NUMBER_DOUBLE"


def test_gpu_steps_request_the_pool(gpu_lrm):
    spec, platform = gpu_lrm
    counts = {"train-student": "4", "evaluate-student": "1", "pretrain-lrm": "1"}
    for task, count in counts.items():
        acc = container(spec, task)["resources"]["accelerator"]
        assert (acc["resourceType"], acc["resourceCount"]) == ("nvidia.com/gpu", count)
        ex = platform[f"exec-{task}"]
        assert ex["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
        assert ex["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert ex["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory",
                                         "sizeLimit": "32Gi"}]
        assert container(spec, task)["image"] == "ghcr.io/rglcd/rglcd-train:0.1.0"
    for task in ("configure", "prep-data", "register-model"):
        assert "accelerator" not in container(spec, task)["resources"]
        assert "nodeSelector" not in platform[f"exec-{task}"] and "tolerations" not in platform[f"exec-{task}"]
        image = "ghcr.io/rglcd/rglcd-cpu:0.1.0" if task == "configure" else "ghcr.io/rglcd/rglcd-train:0.1.0"
        assert container(spec, task)["image"] == image        # prep and registration need torch: not the CPU image


def test_secret_pvc_retries_and_caching(gpu_lrm):
    spec, platform = gpu_lrm
    from components.podspec import MLFLOW_KEYS, S3_KEYS

    for name, ex in platform.items():   # every step may touch the DVC remote: the one S3 key list, same way
        s3 = [s for s in ex["secretAsEnv"] if s["secretName"] == "rglcd-s3"]
        assert [m["secretKey"] for s in s3 for m in s["keyToEnv"]] == list(S3_KEYS)
        assert [s.get("optional", False) for s in s3] == [False, True]       # region/endpoint/session optional
        mlflow = [s for s in ex["secretAsEnv"] if s["secretName"] == "rglcd-mlflow"]
        talks_to_mlflow = name in ("exec-check-data", "exec-evaluate-student", "exec-register-model")
        assert bool(mlflow) == talks_to_mlflow, name
        if mlflow:
            assert [m["secretKey"] for m in mlflow[0]["keyToEnv"]] == list(MLFLOW_KEYS) and mlflow[0]["optional"]
    mounts = {m["constant"]: m["mountPath"] for m in platform["exec-train-student"]["pvcMount"]}
    assert mounts == {"rglcd-checkpoints": "/checkpoints", "rglcd-model-cache": "/cache"}
    env = {e["name"]: e["value"] for e in container(spec, "train-student")["env"]}
    assert env == {"HF_HOME": "/cache/huggingface", "TORCH_HOME": "/cache/torch", "RGLCD_MODEL_CACHE_DIR": "/cache/rglcd"}
    t = tasks(spec)
    assert t["train-student"]["inputs"]["parameters"]["checkpoint_root"]["runtimeValue"]["constant"] == "/checkpoints"
    assert t["train-student"]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert t["train-student"]["retryPolicy"]["maxRetryCount"] == 2
    assert t["prep-data"]["retryPolicy"]["maxRetryCount"] == t["evaluate-student"]["retryPolicy"]["maxRetryCount"] \
        == t["register-model"]["retryPolicy"]["maxRetryCount"] == t["check-data"]["retryPolicy"]["maxRetryCount"] == 2
    assert "retryPolicy" not in t["configure"]
    cached = {name: caching(task) for name, task in t.items() if not name.startswith("condition-")}
    assert cached == {"configure": True, "check-data": False, "prep-data": True, "pretrain-lrm": True,
                      "train-student": False, "evaluate-student": False, "register-model": False}


def test_every_task_has_requests_a_memory_limit_a_timeout_and_a_non_root_identity(gpu_lrm):
    spec, platform = gpu_lrm
    expected = {"train-student": ("32", "256Gi", 172800), "pretrain-lrm": ("8", "64Gi", 21600),
                "evaluate-student": ("8", "64Gi", 21600), "configure": ("1", "4Gi", 21600),
                "prep-data": ("1", "4Gi", 21600), "register-model": ("1", "4Gi", 21600)}
    for task, (cpu, memory, timeout) in expected.items():
        res = container(spec, task)["resources"]
        assert (res["resourceCpuRequest"], res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == \
            (cpu, memory, memory), task
        ex = platform[f"exec-{task}"]
        assert int(ex["activeDeadlineSeconds"]) == timeout, task
        assert ex["securityContext"] == {"runAsUser": "1000", "runAsGroup": "1000", "runAsNonRoot": True}, task


def test_kueue_label_and_pool_taints_reach_gpu_tasks_only(tmp_path):
    spec, platform = compiled(tmp_path, "sd21-base-hpsv21", "pipeline.queue_name=team-gpu",
                              'pipeline.gpu_taints=["nvidia.com/gpu=present:NoSchedule", "pool:NoExecute"]')
    ex = platform["exec-train-student"]
    assert ex["podMetadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpu"
    assert ex["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                                  "effect": "NoSchedule"}, {"key": "pool", "operator": "Exists", "effect": "NoExecute"}]
    assert "podMetadata" not in platform["exec-configure"] and "tolerations" not in platform["exec-prep-data"]


def test_launcher_step_alone_gets_the_launcher_token_and_its_own_pod_identity(tmp_path):
    spec, platform = compiled(tmp_path, "sd21-base-hpsv21", "pipeline.distributed=trainjob", "pipeline.num_nodes=2")
    ex = platform["exec-launch-training"]
    assert ex["secretAsVolume"] == [{"secretName": "rglcd-launcher-token", "secretNameParameter": {
        "runtimeValue": {"constant": "rglcd-launcher-token"}}, "mountPath": "/var/run/secrets/rglcd/launcher",
        "optional": False}] or [v["mountPath"] for v in ex["secretAsVolume"]] == ["/var/run/secrets/rglcd/launcher"]
    assert {f["name"]: f["fieldPath"] for f in ex["fieldPathAsEnv"]} == {"POD_NAME": "metadata.name",
                                                                         "POD_UID": "metadata.uid"}
    assert int(ex["activeDeadlineSeconds"]) > 172800                       # outlives the job's own deadline
    assert not [n for n, e in platform.items() if n != "exec-launch-training" and "secretAsVolume" in e]


def test_components_install_nothing_at_pod_start(gpu_lrm):
    spec, _ = gpu_lrm
    for name, ex in spec["deploymentSpec"]["executors"].items():
        command = " ".join(ex["container"]["command"])
        assert "pip install" not in command, name
        assert "kfp.dsl.executor_main" in command


def test_direct_reward_has_no_lrm_step(tmp_path):
    spec, _ = compiled(tmp_path, "sd21-base-hpsv21")
    assert "pretrain-lrm" not in tasks(spec)
    assert "lrm" not in tasks(spec)["train-student"]["inputs"].get("artifacts", {})
    spec, _ = compiled(tmp_path, "sd21-base-hpsv21-lrm", "lrm.checkpoint=s3://bucket/lrm")   # pretrained LRM given
    assert "pretrain-lrm" not in tasks(spec)


def test_tiny_random_preset_runs_on_cpu(tmp_path):
    spec, platform = compiled(tmp_path, "tiny-random")
    assert "pretrain-lrm" in tasks(spec)   # the tiny-random preset is LRM-guided: every step runs
    for name, ex in spec["deploymentSpec"]["executors"].items():
        assert "accelerator" not in ex["container"].get("resources", {}), name
    assert all("tolerations" not in ex for ex in platform.values())


def test_the_data_check_is_a_cpu_step_before_any_gpu_step(tmp_path):
    """A skipped tick costs one CPU pod: the check has no accelerator, and every GPU task depends on it."""
    spec, platform = compiled(tmp_path, "sd21-base-hpsv21", POOL)
    t = tasks(spec)
    assert "accelerator" not in container(spec, "check-data")["resources"]
    assert container(spec, "check-data")["image"] == "ghcr.io/rglcd/rglcd-train:0.1.0"   # reads rglcd.data (torch)
    assert "nodeSelector" not in platform["exec-check-data"]
    inside = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    gpu = [n for n in t if n.startswith(("train", "evaluate", "pretrain")) and
           "accelerator" in container(spec, n)["resources"]]
    assert gpu and set(gpu) <= set(inside)


def test_multi_node_training_goes_through_the_launcher(tmp_path):
    spec, platform = compiled(tmp_path, "sd21-base-hpsv21", "pipeline.distributed=pytorchjob", "pipeline.num_nodes=4")
    t = tasks(spec)
    assert "train-student" not in t and "launch-training" in t
    assert "accelerator" not in container(spec, "launch-training")["resources"]     # GPUs are on the job's pods
    assert container(spec, "launch-training")["image"] == "ghcr.io/rglcd/rglcd-train:0.1.0"  # publishes the model
    mounts = {m["constant"]: m["mountPath"] for m in platform["exec-launch-training"]["pvcMount"]}
    assert mounts["rglcd-checkpoints"] == "/checkpoints"
    assert t["launch-training"]["retryPolicy"]["maxRetryCount"] == 3
    assert t["evaluate-student"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == \
        "launch-training"


def test_kubernetes_manifest_form(tmp_path):
    cfg = load_config("sd21-base-hpsv21")
    out = compile_pipeline(cfg, tmp_path / "m.yaml", kubernetes_manifest=True, namespace="kubeflow")
    pipeline, version = yaml.safe_load_all(out.read_text())
    assert (pipeline["kind"], pipeline["metadata"]) == ("Pipeline", {"name": "rglcd", "namespace": "kubeflow"})
    assert version["kind"] == "PipelineVersion" and version["spec"]["pipelineName"] == "rglcd"
    assert version["metadata"]["name"] == version_name(cfg)
    assert "train-student" in tasks(version["spec"]["pipelineSpec"])
    assert version["spec"]["platformSpec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert version_name(load_config("sd21-base-hpsv21", overrides=["train.lr=1e-5"])) != version_name(cfg)


def test_default_config_parameter_round_trips(tmp_path):
    cfg = load_config("sd21-768-hpsv21", overrides=["train.max_steps=123"])
    spec, _ = compiled(tmp_path, "sd21-768-hpsv21", "train.max_steps=123")
    default = spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    assert load_step_config(default) == cfg


def test_resolve_config_overrides_and_errors():
    full = config_json_of(load_config("tiny-random"))
    cfg = resolve_config(full, data_uri="s3://bucket/shards", max_steps=7)
    assert (cfg.data.train, cfg.train.max_steps, cfg.preset) == ("s3://bucket/shards", 7, "tiny-random")
    cfg = resolve_config('{"train": {"lr": 2e-5}}', preset="sd21-768-hpsv21")   # a preset plus a few keys
    assert (cfg.model.resolution, cfg.train.lr, cfg.preset) == (768, 2e-5, "sd21-768-hpsv21")
    with pytest.raises(ConfigError, match="conflicts with config_json"):
        resolve_config(full, preset="sd21-768-hpsv21")
    with pytest.raises(ConfigError, match=r"config_json: not valid JSON \(Expecting"):
        resolve_config('{"train": {"lr": }')
    with pytest.raises(ConfigError, match="expected a JSON object"):
        parse_config_json("[1, 2]")
    with pytest.raises(ConfigError, match="train.lrr"):
        resolve_config('{"train": {"lrr": 1}}')
    with pytest.raises(ConfigError, match="max_steps"):
        resolve_config(full, max_steps=-1)


def test_configure_component_slices_the_config():
    from components.configure import configure

    full = config_json_of(load_config("tiny-random"))
    out = configure.python_func(config_json=full, preset="", data_uri="", max_steps=5)
    assert json.loads(out.config)["train"]["max_steps"] == 5
    assert set(json.loads(out.prep_config)) == set(PREP_SECTIONS)
    lrm = json.loads(out.lrm_config)
    assert set(lrm) == {name.split(".")[0] for name in LRM_SECTIONS}
    assert lrm["train"] == {"seed": 0}          # only the key LRM pretraining reads
    # the prep slice does not change when only training settings do: its cache key stays the same
    other = configure.python_func(config_json=full, preset="", data_uri="", max_steps=9)
    assert other.prep_config == out.prep_config and other.config != out.config


def test_cluster_checks():
    with pytest.raises(ConfigError, match="pipeline.s3_secret"):
        check_cluster_config(load_config("tiny-random", overrides=["storage.remote=s3://b/p", "pipeline.s3_secret=null"]))
    warnings = check_cluster_config(load_config("tiny-random"))
    assert any("storage.remote" in w for w in warnings) and any("registry.tracking_uri" in w for w in warnings)
    ok = load_config("tiny-random", overrides=["storage.remote=s3://b/p", "registry.tracking_uri=http://mlflow:5000"])
    assert check_cluster_config(ok) == []


def test_cli_compile(tmp_path, capsys):
    out = tmp_path / "pipe.yaml"
    assert main(["pipeline", "compile", "--preset", "sd15-hpsv21", "--out", str(out)]) == 0
    assert "compiled pipeline (sd15-hpsv21)" in capsys.readouterr().out
    assert yaml.safe_load_all(out.read_text()).__next__()["pipelineInfo"]["name"] == "rglcd"
    assert main(["pipeline", "compile", "--set", "storage.remote=s3://b/p", "--set", "pipeline.s3_secret=null",
                 "--out", str(out)]) == 2
    assert "pipeline.s3_secret" in capsys.readouterr().err


def test_rglcd_never_imports_kfp():
    code = ("import sys; from rglcd.cli import build_parser; build_parser(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('kfp', 'kubernetes', 'pipelines', 'components')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_run_requires_local_flag(capsys):
    assert main(["pipeline", "run"]) == 1
    assert "--local" in capsys.readouterr().err


def test_pod_model_cache_and_local_settings(monkeypatch, tmp_path):
    from pipelines.local import local_config

    text = config_json_of(load_config("tiny-random"))
    assert load_step_config(text).model.cache_dir == "~/.cache/rglcd"
    monkeypatch.setenv("RGLCD_MODEL_CACHE_DIR", "/cache/rglcd")        # set on pods that mount the PVC
    assert load_step_config(text).model.cache_dir == "/cache/rglcd"
    monkeypatch.chdir(tmp_path)
    cfg = local_config(load_config("tiny-random"))
    assert (cfg.pipeline.retries, cfg.pipeline.model_cache_pvc) == (0, None)
    assert cfg.storage.remote == str(tmp_path / ".rglcd" / "remote")
    assert cfg.registry.tracking_uri == f"sqlite:///{tmp_path / '.rglcd' / 'mlflow.db'}"


def test_launch_training_stages_inputs_reattaches_and_publishes(tmp_path, monkeypatch):
    """The multi-node step's own logic, with the cluster calls of components.launcher replaced by a job
    that 'runs' by writing what `rglcd train` writes (the launcher itself is tested against a real API server)."""
    from kfp.dsl import HTML, Dataset, Metrics, Model

    from components import podspec
    from components.launcher import api as launcher, staging
    from components.train import launch_training
    from rglcd.storage import Pointer, verify

    cfg = load_config("tiny-random", overrides=["pipeline.distributed=pytorchjob", f"storage.remote={tmp_path / 'remote'}"])
    calls, existing = [], set()
    ckpt = tmp_path / "checkpoints"
    monkeypatch.setattr(podspec, "CHECKPOINT_MOUNT", str(ckpt))
    monkeypatch.setattr(launcher, "api_client", lambda: "api")
    monkeypatch.setattr(launcher, "job_exists", lambda api, c, name: name in existing)
    monkeypatch.setenv("POD_NAME", "launcher-pod")
    monkeypatch.setenv("POD_UID", "uid-1")
    staged_calls = []
    real_stage = staging.stage_inputs

    def stage_inputs(*args):
        staged_calls.append(args)
        return real_stage(*args)

    monkeypatch.setattr(staging, "stage_inputs", stage_inputs)

    def run(c, name, api, train_args, annotations, owner, attach):
        if not attach:
            calls.append((name, train_args, annotations, owner))
            existing.add(name)
        out = ckpt / name
        (out / "model" / "unet").mkdir(parents=True, exist_ok=True)
        (out / "model" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
        (out / "report.html").write_text("<!doctype html><p>report</p>")
        (out / "metrics.jsonl").write_text('{"step": 1, "lcd_loss": 0.5}\n{"step": 2, "lcd_loss": 0.25}\n')
        return launcher.JobResult(name, "rglcd", "PyTorchJob", "Succeeded", str(out), 1.0, {"p-0": "gpu-node-1"})

    monkeypatch.setattr(launcher, "run", run)
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    lrm = tmp_path / "lrm"
    lrm.mkdir()
    (lrm / "lrm_config.json").write_text("{}")

    def artifacts(n):
        return {name: cls(name=name, uri=str(tmp_path / f"out{n}" / name))
                for name, cls in (("model", Model), ("metrics", Metrics), ("report", HTML))}

    run_id = "0f6c2c1e-5e7a-4a43-9a3e-0b9d0c1f2a3b"
    for attempt in (1, 2):      # the second attempt (a retried launcher pod) must not create a second job
        out = artifacts(attempt)
        res = launch_training.python_func(config_json=config_json_of(cfg), dataset=Dataset(uri=str(data)),
                                          run_id=run_id, lrm=Model(uri=str(lrm)), **out)
        if attempt == 1:        # the retry's input artifact differs: a re-stage would overwrite what the job reads
            (data / "manifest.json").write_text('{"retry": true}')
    (name, args, annotations, owner), = calls
    assert owner == {"name": "launcher-pod", "uid": "uid-1"}
    assert name == res.job_name == f"rglcd-{run_id}" and len(name) <= 45
    staged = ckpt / name / "inputs"
    assert args == ("--data", str(staged / "data"), "--resume", "auto", "--lrm-checkpoint", str(staged / "lrm"))
    assert (staged / "data" / "manifest.json").is_file() and (staged / "lrm" / "lrm_config.json").is_file()
    assert len(staged_calls) == 1 and (staged / "data" / "manifest.json").read_text() == "{}"   # staged once
    assert annotations == {"pipelines.kubeflow.org/run_id": run_id}
    pointer = Pointer.from_dvc(json.loads(res.model_pointer))
    assert (pointer.nfiles, verify(pointer)) == (1, 2)      # model_index.json and the .dir object are in the remote
    assert out["model"].metadata["nodes"] == {"p-0": "gpu-node-1"}
    assert out["metrics"].metadata == {"step": 2.0, "lcd_loss": 0.25}
    assert (tmp_path / "out2" / "report").read_text().startswith("<!doctype html>")


def test_training_outputs_names_what_is_missing(tmp_path):
    from rglcd.results import training_outputs

    (tmp_path / "model").mkdir()
    with pytest.raises(FileNotFoundError, match="report.html.*metrics.jsonl"):
        training_outputs(str(tmp_path))


def test_training_outputs_keep_the_last_finite_number_of_each_metric(tmp_path):
    from rglcd.results import training_outputs

    (tmp_path / "model").mkdir()
    (tmp_path / "report.html").write_text("<!doctype html>")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5, "gn": 2.0, "note": "x"}\n'
                                            '{"step": 2, "loss": NaN, "gn": Infinity, "nan_guard": true}\n')
    assert training_outputs(str(tmp_path))["metrics"] == {"step": 2.0, "loss": 0.5, "gn": 2.0}


def test_the_launch_step_and_its_job_share_volumes_at_the_same_paths(tmp_path):
    """The launch step stages inputs and reads outputs under its checkpoint-PVC mount; the job's pods mount the
    same PVC at the same path and write there; the job and the pipeline's steps keep models in one cache."""
    from components.launcher import objects as k8s_launcher

    overrides = ("pipeline.distributed=pytorchjob", "pipeline.num_nodes=2")
    cfg = load_config("sd21-base-hpsv21", overrides=list(overrides))
    _, platform = compiled(tmp_path, "sd21-base-hpsv21", *overrides)
    step = {m["constant"]: m["mountPath"] for m in platform["exec-launch-training"]["pvcMount"]}
    evaluate = {m["constant"]: m["mountPath"] for m in platform["exec-evaluate-student"]["pvcMount"]}
    pod = k8s_launcher.build_pytorchjob(cfg, "rglcd-x")["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    job = {claims[m["name"]]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] in claims}
    ckpt, cache = cfg.pipeline.checkpoint_pvc, cfg.pipeline.model_cache_pvc
    assert job[ckpt] == step[ckpt]
    pod_cfg = k8s_launcher.pod_config(cfg, "rglcd-x")
    assert Path(pod_cfg.train.output_dir) == Path(step[ckpt]) / "rglcd-x"        # what the step reads back
    env = {e["name"]: e["value"] for e in container(compiled(tmp_path, "sd21-base-hpsv21")[0], "train-student")["env"]}
    assert job[cache] == evaluate[cache] and pod_cfg.model.cache_dir == env["RGLCD_MODEL_CACHE_DIR"]
    assert Path(env["RGLCD_MODEL_CACHE_DIR"]).parent == Path(job[cache])


def test_pretrain_lrm_component_records_the_prep_data_version(tmp_path, monkeypatch):
    """The LRM artifact's data_version is prep's (the manifest content hash, what the registry records);
    the DVC directory hash of the data pointer is kept apart as data_md5."""
    import rglcd.lrm
    from kfp.dsl import Model

    from components.dvc_io import push_artifact
    from components.lrm import pretrain_lrm
    from rglcd.data.prep import prep

    cfg = load_config("tiny-random", overrides=[f"storage.remote={tmp_path / 'remote'}"])
    prepared = tmp_path / "prepared"
    manifest = prep(cfg, "builtin:photos:4", prepared)
    pointer = push_artifact(cfg, str(prepared))
    seen = {}

    def fake_pretrain(c, data_dir, out, device=None):
        seen["manifest"] = json.loads(Path(data_dir, "manifest.json").read_text())
        (Path(out) / "lrm_config.json").parent.mkdir(parents=True, exist_ok=True)
        (Path(out) / "lrm_config.json").write_text("{}")
        return {"steps": 3, "first_loss": 2.0, "last_loss": 1.0, "losses": [2.0, 1.5, 1.0], "out_dir": str(out)}

    monkeypatch.setattr(rglcd.lrm, "pretrain_lrm_from_data", fake_pretrain)
    lrm = Model(name="lrm", uri=str(tmp_path / "lrm"))
    out = pretrain_lrm.python_func(config_json=config_json_of(cfg), data_pointer=json.dumps(pointer), lrm=lrm)
    assert seen["manifest"] == manifest            # the step pretrains on the pulled prep output
    assert lrm.metadata["data_version"] == manifest["content_hash"]
    assert lrm.metadata["data_md5"] == pointer["outs"][0]["md5"] != manifest["content_hash"]
    assert {k: lrm.metadata[k] for k in ("steps", "first_loss", "last_loss")} == {"steps": 3, "first_loss": 2.0,
                                                                                   "last_loss": 1.0}
    assert "losses" not in lrm.metadata and json.loads(out.lrm_pointer)["outs"][0]["md5"]


# ---------------------------------------------------------------- what each image can run

def _body_imports(source: str) -> list[str]:
    """The project modules an embedded component's source imports (its function body included)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        found += [n for n in names if n.split(".")[0] in ("rglcd", "components", "pipelines")]
    return found


@pytest.mark.parametrize("overrides", [(), ("pipeline.distributed=pytorchjob", "pipeline.num_nodes=2"),
                                       ("serve.canary=true", "data.prep_partitions=2")])
def test_steps_on_the_cpu_image_import_nothing_that_needs_torch(tmp_path, overrides):
    """The CPU image has clients only (images/requirements-client.txt: no torch). Every task placed on it must
    import, in its component body, only modules that load without torch; the rest runs on the training image."""
    spec, _ = compiled(tmp_path, "sd21-base-hpsv21-lrm", *overrides)
    cpu_image = load_config("sd21-base-hpsv21-lrm").pipeline.cpu_image
    modules = {}
    for name, ex in spec["deploymentSpec"]["executors"].items():
        if ex["container"]["image"] == cpu_image:
            modules[name] = _body_imports(ex["container"]["command"][-1])
    assert "exec-configure" in modules and modules["exec-configure"]          # the check reads real bodies
    probe = ("import importlib, json, sys\nsys.modules['torch'] = None   # `import torch` raises ImportError\n"
             "bad = {}\nfor task, mods in json.loads(sys.argv[1]).items():\n    for m in mods:\n"
             "        try:\n            importlib.import_module(m)\n"
             "        except ImportError as err:\n            bad[f'{task}: {m}'] = str(err)\nprint(json.dumps(bad))")
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(modules)], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {}


def test_the_cli_compiles_and_submits_without_torch(tmp_path):
    """The scheduled submitter (`rglcd pipeline submit` in the CronJob) runs on the CPU image, which has no torch."""
    probe = ("import sys\nsys.modules['torch'] = None\nfrom rglcd.cli import main\n"
             f"sys.exit(main(['pipeline', 'compile', '--preset', 'sd21-base-hpsv21', '--out', {str(tmp_path / 'p.yaml')!r}]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "p.yaml").is_file()
