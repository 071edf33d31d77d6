"""`rglcd pipeline submit|schedule` over real HTTP against a fake KFP v2beta1 API server on loopback
(tests/fake_kfp.py): what is sent, and what is refused before anything is sent."""
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from components.step_config import load_step_config
from fake_kfp import FakeKFP
from pipelines.submit import validate_cron
from rglcd.cli import main
from rglcd.config import ConfigError, load_config

CLUSTER = ["--set", "storage.remote=s3://rglcd-bucket/dvc", "--set", "registry.tracking_uri=http://mlflow:5000"]


@pytest.fixture
def kfp_api():
    with FakeKFP(run_states=("PENDING", "RUNNING", "SUCCEEDED")) as api:
        yield api


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submit_creates_experiment_and_run_and_waits(kfp_api, capsys):
    rc = main(["pipeline", "submit", "--preset", "tiny-random", "--host", kfp_api.url, *CLUSTER, "--data", "s3://d/shards",
               "--max-steps", "12", "--experiment", "nightly", "--run-name", "r1", "--poll", "0.01"])
    out = capsys.readouterr().out
    assert rc == 0, out
    (exp,) = kfp_api.posted("/experiments")
    assert exp["display_name"] == "nightly"
    (run,) = kfp_api.posted("/runs")
    assert run["display_name"] == "r1" and run["service_account"] == "rglcd-pipeline"
    assert run["experiment_id"] in kfp_api.experiments
    params = run["runtime_config"]["parameters"]
    assert (params["data_uri"], params["max_steps"], params["preset"]) == ("s3://d/shards", 12, "")
    sent = load_step_config(params["config_json"])
    assert sent == load_config("tiny-random", overrides=CLUSTER[1::2])
    spec = run["pipeline_spec"]     # the compiled package, inline: PipelineSpec + kubernetes PlatformSpec
    assert "train-student" in spec["pipeline_spec"]["components"]["comp-condition-1"]["dag"]["tasks"]
    assert "exec-train-student" in spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # progress: every state change printed once, then the final state
    assert [line.split("] ")[1] for line in out.splitlines() if line.startswith("[") and "run:" in line] == \
        ["run: PENDING", "run: RUNNING", "run: SUCCEEDED"]
    assert f"run {next(iter(kfp_api.runs))} finished: SUCCEEDED" in out
    polls = [r for r in kfp_api.requests if r["method"] == "GET" and "/runs/" in r["path"]]
    assert len(polls) == 3


def test_failed_run_exits_nonzero(capsys):
    with FakeKFP(run_states=("RUNNING", "FAILED")) as api:
        assert main(["pipeline", "submit", "--host", api.url, *CLUSTER, "--poll", "0.01"]) == 1
    assert "finished: FAILED" in capsys.readouterr().out


def test_no_wait_returns_after_creating_the_run(kfp_api):
    assert main(["pipeline", "submit", "--host", kfp_api.url, *CLUSTER, "--no-wait"]) == 0
    assert len(kfp_api.posted("/runs")) == 1
    assert not [r for r in kfp_api.requests if r["method"] == "GET" and "/runs/" in r["path"]]


def test_multi_user_cluster_gets_the_namespace(capsys):
    with FakeKFP(multi_user=True) as api:
        assert main(["pipeline", "submit", "--host", api.url, *CLUSTER, "--set", "pipeline.namespace=team-a",
                     "--no-wait"]) == 0
        (exp,) = api.posted("/experiments")
    assert exp["namespace"] == "team-a"


def test_schedule_creates_a_recurring_run(kfp_api, capsys):
    assert main(["pipeline", "schedule", "--preset", "tiny-random", "--host", kfp_api.url, *CLUSTER,
                 "--cron", "0 30 2 * * MON-FRI", "--name", "weekday-retrain", "--max-steps", "40"]) == 0
    (rec,) = kfp_api.posted("/recurringruns")
    assert rec["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * MON-FRI"
    assert (rec["display_name"], rec["mode"], rec["no_catchup"]) == ("weekday-retrain", "ENABLE", True)
    assert int(rec["max_concurrency"]) == 1 and rec["service_account"] == "rglcd-pipeline"
    assert rec["runtime_config"]["parameters"]["max_steps"] == 40
    spec = rec["pipeline_spec"]["pipeline_spec"]
    assert set(spec["root"]["dag"]["tasks"]) == {"configure", "check-data", "condition-1"}   # the check first
    prep = spec["components"]["comp-condition-1"]["dag"]["tasks"]["prep-data"]
    assert prep["cachingOptions"]["enableCache"] is True          # keyed by the source version the check computed
    assert prep["inputs"]["parameters"]["source_version"] == {
        "componentInputParameter": "pipelinechannel--check-data-source_version"}
    assert rec["runtime_config"]["parameters"]["force"] is False
    assert "scheduled" in capsys.readouterr().out


def test_submit_and_schedule_json(kfp_api, capsys):
    """--json: one JSON object on stdout (the run or recurring run), the progress lines on stderr."""
    assert main(["pipeline", "submit", "--host", kfp_api.url, *CLUSTER, "--poll", "0.01", "--json"]) == 0
    out = capsys.readouterr()
    run = json.loads(out.out)
    run_id = next(iter(kfp_api.runs))
    assert run == {"run_id": run_id, "experiment_id": kfp_api.posted("/runs")[0]["experiment_id"],
                   "url": f"{kfp_api.url}/#/runs/details/{run_id}", "state": "SUCCEEDED"}
    assert "run: SUCCEEDED" in out.err and f"submitted run {run_id}" in out.err
    assert main(["pipeline", "schedule", "--host", kfp_api.url, *CLUSTER, "--cron", "0 0 3 * * *", "--json"]) == 0
    out = capsys.readouterr()
    rec = json.loads(out.out)
    assert rec["cron"] == "0 0 3 * * *" and rec["recurring_run_id"] in out.err
    assert rec["experiment_id"] == kfp_api.posted("/recurringruns")[0]["experiment_id"]


def refused(api, argv, capsys):
    """Run the CLI; assert it failed and that the server got no request at all; return stderr."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0 and api.requests == [], err
    return err


def test_five_field_cron_is_refused_with_a_hint(kfp_api, capsys):
    err = refused(kfp_api, ["pipeline", "schedule", "--host", kfp_api.url, *CLUSTER, "--cron", "0 3 * * *"], capsys)
    assert "5 fields" in err and "seconds first" in err and "'0 0 3 * * *'" in err


@pytest.mark.parametrize("cron, needle", [("0 0 25 * * *", "hour field: '25'"), ("0 0 3 * * MON-XYZ", "day of week"),
                                          ("0 0 3 * *", "5 fields"), ("0 0 3 * * * *", "7 fields"),
                                          ("0 0 3 1 13 *", "month field: '13'"), ("0 0 5-3 * * *", "backwards")])
def test_cron_validation(cron, needle):
    with pytest.raises(ConfigError, match=needle):
        validate_cron(cron)


def test_valid_crons():
    for cron in ("0 0 3 * * *", "*/30 * * * * ?", "0 0 0 1,15 JAN-JUN SUN", "0 0/15 8-18 * * 1-5"):
        assert validate_cron(cron) == cron


def test_unreachable_host_is_a_clear_error(capsys):
    port = free_port()
    assert main(["pipeline", "submit", "--host", f"http://127.0.0.1:{port}", *CLUSTER]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach KFP at http://127.0.0.1:{port}" in err and "nothing was submitted" in err


def test_host_must_be_a_url(kfp_api, capsys):
    assert "--host 'ml-pipeline:8888' is not allowed" in refused(
        kfp_api, ["pipeline", "submit", "--host", "ml-pipeline:8888", *CLUSTER], capsys)


def test_bad_config_is_refused_before_submission(kfp_api, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": {"lr": 1e-5,}}')
    assert "is not valid JSON" in refused(kfp_api, ["pipeline", "submit", "--host", kfp_api.url, "--config",
                                                     str(bad)], capsys)
    err = refused(kfp_api, ["pipeline", "submit", "--host", kfp_api.url, "--preset", "sd99"], capsys)
    assert "preset: 'sd99' is not a known preset" in err
    err = refused(kfp_api, ["pipeline", "schedule", "--host", kfp_api.url, "--cron", "0 0 3 * * *",
                            "--set", "storage.remote=s3://b/p", "--set", "pipeline.s3_secret=null"], capsys)
    assert "pipeline.s3_secret" in err and "AWS_ACCESS_KEY_ID" in err


def test_fake_server_rejects_what_the_api_server_would(kfp_api):
    def post(path, body):
        req = urllib.request.Request(kfp_api.url + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())["error"]
        return 200, ""

    exp = post("/apis/v2beta1/experiments", {"display_name": "e"})
    assert exp[0] == 200
    exp_id = next(iter(kfp_api.experiments))
    code, msg = post("/apis/v2beta1/runs", {"experiment_id": exp_id, "pipeline_spec": {"root": {"dag": 5}}})
    assert code == 400 and "invalid pipeline spec" in msg
    spec = {"pipelineInfo": {"name": "p"}, "root": {"inputDefinitions": {"parameters": {
        "n": {"parameterType": "NUMBER_INTEGER"}}}}}
    code, msg = post("/apis/v2beta1/runs", {"experiment_id": exp_id, "pipeline_spec": spec,
                                            "runtime_config": {"parameters": {"m": 1}}})
    assert code == 400 and "unknown pipeline parameters ['m']" in msg
    code, msg = post("/apis/v2beta1/recurringruns", {"experiment_id": exp_id, "pipeline_spec": spec,
                                                     "trigger": {"cron_schedule": {"cron": "0 3 * * *"}}})
    assert code == 400 and "6 fields" in msg


def test_uploaded_package_parses(kfp_api, tmp_path):
    import kfp

    package = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--out", str(package)]) == 0
    client = kfp.Client(host=kfp_api.url)
    pipe = client.upload_pipeline(str(package), pipeline_name="rglcd-tiny")
    assert client.get_pipeline_id("rglcd-tiny") == pipe.pipeline_id
    assert len(list(yaml.safe_load_all(package.read_text()))) == 2


def test_in_cluster_submitter_sends_the_projected_kfp_token(tmp_path, monkeypatch, capsys):
    """The CronJob's pod mounts a projected token (audience pipelines.kubeflow.org) and points
    KF_PIPELINES_SA_TOKEN_PATH at it; every request to multi-user KFP carries it, or the server refuses."""
    token = tmp_path / "token"
    token.write_text("projected-sa-token\n")
    with FakeKFP(multi_user=True, tokens=("projected-sa-token",)) as api:
        monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH", raising=False)
        monkeypatch.setattr("kfp.client.KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "absent"))
        monkeypatch.setattr("kfp.client.client.KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "absent"), raising=False)
        assert main(["pipeline", "submit", "--host", api.url, *CLUSTER, "--no-wait"]) == 1   # no token: refused
        assert api.requests and {r["authorization"] for r in api.requests} == {None} and not api.runs
        api.requests.clear()
        monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
        assert main(["pipeline", "submit", "--host", api.url, *CLUSTER, "--no-wait"]) == 0
        assert main(["pipeline", "schedule", "--host", api.url, *CLUSTER, "--cron", "0 0 3 * * *"]) == 0
    assert {r["authorization"] for r in api.requests} == {"Bearer projected-sa-token"}
    assert {r["path"].rsplit("/", 1)[-1] for r in api.requests if r["method"] == "POST"} >= {"runs", "recurringruns"}
    assert len(api.runs) == 1 and len(api.recurring_runs) == 1
    assert "projected-sa-token" not in capsys.readouterr().out          # never printed


ROOT = Path(__file__).resolve().parents[1]
OVERLAY_SETTINGS = ROOT / "manifests/overlays/standalone/pipeline.yaml"


def sent_config(request):
    """The config a run or recurring-run request carries: its config_json parameter, and the compiled
    pipeline's default for it (what a run started from the KFP UI without parameters uses)."""
    spec = request["pipeline_spec"]["pipeline_spec"]
    default = spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    return load_step_config(request["runtime_config"]["parameters"]["config_json"]), load_step_config(default)


def test_recurring_run_carries_the_clusters_remote_and_registry(kfp_api, monkeypatch, capsys):
    """Scheduling with the overlay's settings file (ConfigMap rglcd-settings) and an RGLCD_* variable: the request
    sent to the KFP API holds the cluster's DVC remote and MLflow server, not the preset's laptop defaults."""
    monkeypatch.setenv("RGLCD_REGISTRY__TRACKING_URI", "http://mlflow.team-a:5000")
    assert main(["pipeline", "schedule", "--preset", "tiny-random", "--config", str(OVERLAY_SETTINGS), "--host", kfp_api.url,
                 "--cron", "0 0 3 * * SUN", "--force"]) == 0
    (rec,) = kfp_api.posted("/recurringruns")
    laptop = load_config("tiny-random")
    settings = yaml.safe_load(OVERLAY_SETTINGS.read_text())
    for cfg in sent_config(rec):
        assert cfg.storage.remote == settings["storage"]["remote"] != laptop.storage.remote
        assert cfg.registry.tracking_uri == "http://mlflow.team-a:5000" != laptop.registry.tracking_uri
        assert cfg.pipeline.namespace == settings["pipeline"]["namespace"]
    assert rec["runtime_config"]["parameters"]["force"] is True
    assert "warning" not in capsys.readouterr().err       # no pod-local remote or SQLite registry to warn about


def test_the_cronjob_runs_the_same_submit_with_the_mounted_settings(kfp_api, monkeypatch):
    """The CronJob's command line (manifests/base/cronjob.yaml), with its ConfigMap's values and the mounted
    pipeline.yaml, sends a run with the cluster's remote and registry, like `rglcd pipeline schedule` does."""
    (cron,) = [d for d in yaml.safe_load_all((ROOT / "manifests/base/cronjob.yaml").read_text())]
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    literals = {"RGLCD_PRESET": "tiny-random", "KFP_HOST": kfp_api.url}
    args = [a.replace("/etc/rglcd/pipeline.yaml", str(OVERLAY_SETTINGS)) for a in container["args"]]
    args = [literals.get(a[2:-1], a) if a.startswith("$(") else a for a in args]
    assert container["command"][:3] == ["rglcd", "pipeline", "submit"]
    assert main([*container["command"][1:], *args]) == 0
    (run,) = kfp_api.posted("/runs")
    settings = yaml.safe_load(OVERLAY_SETTINGS.read_text())
    for cfg in sent_config(run):
        assert (cfg.storage.remote, cfg.registry.tracking_uri) == (settings["storage"]["remote"],
                                                                  settings["registry"]["tracking_uri"])
