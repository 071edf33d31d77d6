"""The KServe component (manifests/components/kserve): strict validation against KServe's CRD schema and the
core pod schema, the restricted Pod Security profile, the canary step in the DAG, and (-m cluster) the
InferenceService on a real API server, where the canary and `rglcd models promote --traffic` move it."""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pytest
import yaml

from k8s import checks
from k8s.podsecurity import read_only_root_gaps, violations
from rglcd.config import load_config
from rglcd.serve.rollout import model_uri, served_model, traffic, with_model

COMPONENT = checks.MANIFESTS / "components" / "kserve"
NS = "rglcd"                      # the multi-user overlay's namespace, used on the API server
# InferenceService predictor fields that are not core PodSpec fields (KServe's ComponentExtensionSpec).
EXTENSION = {"minReplicas", "maxReplicas", "scaleMetric", "scaleMetricType", "scaleTarget", "containerConcurrency",
             "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy",
             "autoScaling", "storageUris", "storageContainerName"}


def namespace_of(overlay: str) -> str:
    """Where the overlay's runs (and so the InferenceService) live: its pipeline.yaml's pipeline.namespace."""
    return checks.overlay_config(overlay).pipeline.namespace


def build(overlay: str, tmp_path: Path) -> list[dict]:
    """An overlay with the kserve component, as a user adds it (docs/serving.md: `components: [...]` in the
    kustomization that sets the namespace)."""
    folder = tmp_path / f"with-kserve-{overlay}"
    folder.mkdir()
    rel = lambda p: os.path.relpath(p, folder)   # noqa: E731  (kustomize wants relative paths)
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": namespace_of(overlay),      # what the overlay's own kustomization gives the component
        "resources": [rel(checks.MANIFESTS / "overlays" / overlay)], "components": [rel(COMPONENT)]}))
    return checks.kustomize(folder)


def isvc_of(docs: list[dict]) -> dict:
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    return isvc


def pod_spec(isvc: dict) -> dict:
    return {k: v for k, v in isvc["spec"]["predictor"].items() if k not in EXTENSION}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("kserve")
    return {overlay: build(overlay, root) for overlay in checks.OVERLAYS}


@pytest.mark.parametrize("version", checks.TARGET_VERSIONS)
def test_inference_service_validates_strictly(built, version):
    for overlay, docs in built.items():
        isvc = isvc_of(docs)
        assert checks.validate(isvc, version) == [], overlay
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                    "template": {"spec": pod_spec(isvc)}}
        assert checks.validate(template, version) == [], overlay
        for doc in docs:                                    # the component's RBAC objects too
            if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
                assert checks.validate(doc, version) == [], doc["metadata"]["name"]


def test_strict_schema_catches_mistakes(built):
    isvc = copy.deepcopy(isvc_of(built["standalone"]))
    isvc["spec"]["predictor"]["minReplica"] = 1                        # typo
    isvc["spec"]["predictor"]["containers"][0]["resource"] = {}        # typo, inside the pod spec part
    isvc["spec"]["predictor"]["scaleMetric"] = "gpu"                   # not an allowed metric
    errors = " ".join(checks.validate(isvc, checks.TARGET_VERSIONS[-1]))
    assert "minReplica" in errors and "resource" in errors and "scaleMetric" in errors


def test_restricted_pod_security_gpu_pool_and_scaling(built):
    for overlay, docs in built.items():
        isvc = isvc_of(docs)
        spec, predictor = pod_spec(isvc), isvc["spec"]["predictor"]
        assert violations(spec, overlay) == [] and read_only_root_gaps(spec, overlay) == []
        (c,) = spec["containers"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        assert {m["name"] for m in c["volumeMounts"]} <= writable and {"/tmp", "/cache"} <= {
            m["mountPath"] for m in c["volumeMounts"]}
        taints = checks.pool_taints(checks.overlay_config(overlay))
        assert taints and all(any(checks.tolerates(t, taint) for t in spec["tolerations"]) for taint in taints)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and c["resources"]["requests"]["memory"]
        assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
        assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] > 0
        assert served_model(isvc) == "models:/rglcd-student@production" and isvc["metadata"]["namespace"] == namespace_of(overlay)
        assert spec["terminationGracePeriodSeconds"] > int(c["args"][c["args"].index("serve.grace_period_s=30")]
                                                           .split("=")[1])
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_rollout_changes_only_the_model_and_the_split(built):
    isvc = isvc_of(built["standalone"])
    canary = with_model(isvc, model_uri("rglcd-student", 7), 10)
    assert traffic(canary) == {"model": "models:/rglcd-student/7", "percent": 10}
    assert traffic(isvc) == {"model": "models:/rglcd-student@production", "percent": 100}
    full = with_model(canary, model_uri("rglcd-student", 7), None)
    assert "canaryTrafficPercent" not in full["spec"]["predictor"] and traffic(full)["percent"] == 100
    strip = lambda d: {**d["spec"]["predictor"], "containers": None, "canaryTrafficPercent": None}  # noqa: E731
    assert strip(canary) == strip(isvc)                     # nothing else changed
    with pytest.raises(ValueError, match="allowed: 1..100"):
        with_model(isvc, "models:/x/1", 0)
    with pytest.raises(ValueError, match="not an rglcd serving deployment"):
        with_model({"metadata": {"name": "other"}, "spec": {"predictor": {"containers": [{"name": "c"}]}}},
                   "models:/x/1", 10)


def test_canary_step_is_in_the_dag_only_when_switched_on(tmp_path):
    from pipelines.compile import compile_pipeline

    def gate_tasks(*overrides):
        spec = yaml.safe_load_all(compile_pipeline(load_config("tiny-random", overrides=list(overrides)),
                                                   tmp_path / "p.yaml").read_text())
        return list(next(spec)["components"]["comp-condition-2"]["dag"]["tasks"])   # 1: the data check's

    assert gate_tasks() == ["register-model"]
    assert gate_tasks("serve.canary=true") == ["canary-rollout", "register-model"]


# ---------------------------------------------------------------- a real API server

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from kubernetes import config as kube_config

    from k8s.cluster import ControlPlane, require_binaries

    require_binaries()
    cp = ControlPlane(tmp_path_factory.mktemp("k8s"))
    try:
        cp.start(crds=checks.CRD_DIR)
        cp.admin = kube_config.new_client_from_config(config_file=str(cp.kubeconfig))
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="module")
def applied(cluster, built):
    """The multi-user overlay with the component, applied into its namespace (which the profile controller,
    absent here, would create); CronJob as batch/v1beta1 for the 1.20 server."""
    docs = copy.deepcopy(built["multi-user"])
    cluster.kubectl("create", "namespace", NS)
    for d in docs:
        if d["kind"] == "CronJob":
            d["apiVersion"] = "batch/v1beta1"
            d["spec"].pop("timeZone", None)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    return docs


def sa_client(cluster):
    """An API client as ServiceAccount rglcd/rglcd-pipeline (what the canary step runs as)."""
    from kubernetes import client

    req = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    deadline = time.monotonic() + 30
    while True:
        try:
            token = client.CoreV1Api(cluster.admin).create_namespaced_service_account_token("rglcd-pipeline", NS, req)
            break
        except client.ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    conf = client.Configuration()
    conf.host, conf.ssl_ca_cert = cluster.admin.configuration.host, cluster.admin.configuration.ssl_ca_cert
    conf.api_key, conf.api_key_prefix = {"authorization": token.status.token}, {"authorization": "Bearer"}
    return client.ApiClient(conf)


def read_isvc(cluster) -> dict:
    from kubernetes import client

    return client.CustomObjectsApi(cluster.admin).get_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", NS, "inferenceservices", "rglcd-student")


@pytest.mark.cluster
def test_api_server_accepts_the_inference_service_and_rejects_bad_ones(cluster, applied):
    from kubernetes import client

    assert served_model(read_isvc(cluster)) == "models:/rglcd-student@production"
    bad = copy.deepcopy(isvc_of(applied))
    bad["metadata"]["name"] = "bad"
    bad["spec"]["predictor"]["minReplicas"] = "two"
    bad["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(client.ApiException) as err:
        client.CustomObjectsApi(cluster.admin).create_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", NS, "inferenceservices", bad)
    assert err.value.status == 422 and "minReplicas" in err.value.body and "containerPort" in err.value.body


@pytest.mark.cluster
def test_canary_then_promote_moves_traffic_and_alias_together(cluster, applied, tiny_cfg, mlflow_db,
                                                              tiny_student_dir, capsys):
    from components.rollout import RolloutError, rollout
    from rglcd.cli import main
    from rglcd.config.fields import to_dict
    from rglcd.registry import get_version, register
    from rglcd.storage import push

    cfg = tiny_cfg()
    pointer = push(cfg, tiny_student_dir).pointer
    first = register(cfg, pointer, {"hps": 1.0}, to_dict(cfg), "d", run_id="k1")
    second = register(cfg, pointer, {"hps": 2.0}, to_dict(cfg), "d", run_id="k2")
    api = sa_client(cluster)
    assert rollout(api, cfg, second.version, 10) == {"model": "models:/rglcd-student/2", "percent": 10}
    assert traffic(read_isvc(cluster)) == {"model": "models:/rglcd-student/2", "percent": 10}

    kubeconfig = Path(cluster.kubeconfig)
    sets = [a for s in (f"model.cache_dir={cfg.model.cache_dir}", f"storage.remote={cfg.storage.remote}",
                        f"registry.tracking_uri={cfg.registry.tracking_uri}") for a in ("--set", s)]
    assert main(["models", "promote", str(second.version), "--traffic", "--kubeconfig", str(kubeconfig), *sets]) == 0
    assert traffic(read_isvc(cluster)) == {"model": "models:/rglcd-student/2", "percent": 100}
    assert "production" in get_version(cfg, version=second.version).aliases
    assert "all traffic to models:/rglcd-student/2" in capsys.readouterr().out

    missing = load_config("tiny-random", overrides=[f"registry.tracking_uri={cfg.registry.tracking_uri}",
                                             "serve.inference_service=nope"])
    with pytest.raises(RolloutError, match="404"):
        rollout(api, missing, first.version, 10)
    assert "production" not in get_version(cfg, version=first.version).aliases
