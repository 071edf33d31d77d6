"""Cluster tier: the manifests and the launcher against a real Kubernetes control plane on loopback.

etcd + kube-apiserver + controller-manager + scheduler (v1.20.2 built from Debian's source by `make k8s-bins`),
GPU nodes shaped like the `local` overlay's pool from the fake kubelet, pods created by the fake training
operator. The real scheduler, RBAC authorizer, garbage collector, PV provisioner and CRD validation decide
every outcome asserted here. Without the binaries: skipped (failed under CI=true) naming `make k8s-bins`.
"""
from __future__ import annotations

import copy
import os
import shutil
import time
import uuid

import pytest
import yaml
from kubernetes import client, config as kube_config

from components import k8s_launcher as kl
from k8s import checks
from k8s.cluster import ControlPlane, missing
from rglcd.config import load_config

pytestmark = pytest.mark.cluster
NS = "rglcd"
POOL = checks.gpu_pool("local")
GPUS_PER_NODE = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    problem = missing()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    cp = ControlPlane(tmp_path_factory.mktemp("k8s"))
    try:
        cp.start(crds=checks.CRD_DIR)
        cp.start_fakes(checks.MANIFESTS / "overlays" / "local" / "gpu-pool.yaml", gpu_nodes=2, gpus=GPUS_PER_NODE,
                       cpu_nodes=1)
        cp.admin = kube_config.new_client_from_config(config_file=str(cp.kubeconfig))
        yield cp
    except Exception:
        print("\n".join(f"--- {n}.log\n{cp.logs(n)}" for n in ("apiserver", "fake-kubelet", "fake-operator")))
        raise
    finally:
        volumes = _hostpath_volumes(cp)
        cp.stop()
        for path in volumes:                     # the hostPath provisioner's directories, ours only
            shutil.rmtree(path, ignore_errors=True)


def _hostpath_volumes(cp: ControlPlane) -> list[str]:
    try:
        pvs = client.CoreV1Api(cp.admin).list_persistent_volume().items
    except Exception:                            # the control plane never came up
        return []
    return [pv.spec.host_path.path for pv in pvs
            if pv.spec.host_path and pv.spec.host_path.path.startswith("/tmp/hostpath_pv/")]


def v1_20(docs: list[dict]) -> list[dict]:
    """The 1.20 server has CronJob only as batch/v1beta1 (same spec, no timeZone field)."""
    out = copy.deepcopy(docs)
    for d in out:
        if d["kind"] == "CronJob":
            d["apiVersion"] = "batch/v1beta1"
            d["spec"].pop("timeZone", None)
    return out


@pytest.fixture(scope="module")
def applied(cluster):
    """`kubectl apply` of the local overlay, as a platform engineer would (the CRDs came with the cluster)."""
    docs = checks.kustomize(checks.MANIFESTS / "overlays" / "local")
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(v1_20(docs)))
    wait_for(lambda: _sa_token_ready(cluster.admin), "ServiceAccount ready")
    return docs


def _sa_token_ready(api) -> bool:
    sa = client.CoreV1Api(api).read_namespaced_service_account("rglcd-pipeline", NS)
    return bool(sa.secrets)


def wait_for(pred, what: str, timeout: float = 45.0, every: float = 0.3):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def sa_api(cluster, applied) -> client.ApiClient:
    """An API client authenticated as ServiceAccount rglcd/rglcd-pipeline (a TokenRequest token)."""
    req = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    token = client.CoreV1Api(cluster.admin).create_namespaced_service_account_token("rglcd-pipeline", NS, req)
    conf = client.Configuration()
    conf.host = cluster.admin.configuration.host
    conf.ssl_ca_cert = cluster.admin.configuration.ssl_ca_cert
    conf.api_key = {"authorization": token.status.token}
    conf.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(conf)


def pods_of(api, selector: str) -> list:
    return client.CoreV1Api(api).list_namespaced_pod(NS, label_selector=selector).items


def failed_scheduling(api, pod: str) -> str:
    ev = client.CoreV1Api(api).list_namespaced_event(
        NS, field_selector=f"involvedObject.name={pod},reason=FailedScheduling").items
    return ev[0].message if ev else ""


def pod_body(name: str, gpus: int, tolerate: bool = True, node_selector: dict | None = None) -> dict:
    spec = {"restartPolicy": "Never", "serviceAccountName": "rglcd-pipeline",
            "containers": [{"name": "c", "image": "x",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}}]}
    if tolerate:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


# --- the manifests ---------------------------------------------------------------------------------------

def test_overlay_applies_and_pvcs_bind(cluster, applied):
    core = client.CoreV1Api(cluster.admin)
    for name in ("rglcd-checkpoints", "rglcd-model-cache"):
        pvc = wait_for(lambda: (p := core.read_namespaced_persistent_volume_claim(name, NS)).status.phase == "Bound"
                       and p, f"PVC {name} Bound")
        assert pvc.spec.volume_name and pvc.spec.storage_class_name == "standard"
    got = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load(cluster.kubectl(
        "-n", NS, "get", "serviceaccount,role,rolebinding,configmap,cronjob,pytorchjob", "-o", "yaml"))["items"]}
    want = {(d["kind"], d["metadata"]["name"]) for d in applied
            if d["kind"] not in ("Namespace", "PersistentVolumeClaim")}
    assert want <= got


def test_manifest_pytorchjob_trains_on_the_gpu_pool(cluster, applied):
    """Applied suspended (no pods, however long we wait); started by the documented patch."""
    co = client.CustomObjectsApi(cluster.admin)
    time.sleep(1.5)                                   # the fake operator reconciles every 0.3 s
    assert not pods_of(cluster.admin, "training.kubeflow.org/job-name=rglcd-train")
    cluster.kubectl("-n", NS, "patch", "pytorchjob", "rglcd-train", "--type", "merge",
                    "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    job = wait_for(lambda: kl.job_state(kl.PYTORCHJOB, j := co.get_namespaced_custom_object(
        "kubeflow.org", "v1", NS, "pytorchjobs", "rglcd-train")) and j, "rglcd-train to finish")
    assert kl.job_state(kl.PYTORCHJOB, job) == "Succeeded"
    (pod,) = pods_of(cluster.admin, "training.kubeflow.org/job-name=rglcd-train")
    assert pod.spec.node_name.startswith("gpu-node-") and pod.status.phase == "Succeeded"
    assert {v.name: v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim} \
        == {"checkpoints": "rglcd-checkpoints", "model-cache": "rglcd-model-cache"}


def test_cronjob_pods_run_on_cpu_nodes(cluster, applied):
    """A Job from the CronJob's template (what the CronJob controller creates at the scheduled time)."""
    (cron,) = [d for d in applied if d["kind"] == "CronJob"]
    name = "retrain-now-" + uuid.uuid4().hex[:5]
    body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": cron["spec"]["jobTemplate"]["spec"]}
    batch = client.BatchV1Api(cluster.admin)
    batch.create_namespaced_job(NS, body)
    wait_for(lambda: batch.read_namespaced_job_status(name, NS).status.succeeded, "the submit Job to succeed")
    (pod,) = pods_of(cluster.admin, f"job-name={name}")
    assert pod.spec.node_name == "cpu-node-0"
    env_from = {e.config_map_ref.name for e in pod.spec.containers[0].env_from if e.config_map_ref}
    assert client.CoreV1Api(cluster.admin).read_namespaced_config_map(env_from.pop(), NS).data["KFP_HOST"]


def test_scheduler_keeps_gpu_pods_on_fitting_gpu_nodes(cluster, applied):
    core, tag = client.CoreV1Api(cluster.admin), uuid.uuid4().hex[:5]
    cases = {f"fits-{tag}": pod_body(f"fits-{tag}", GPUS_PER_NODE, node_selector=POOL["nodeLabels"]),
             f"untolerated-{tag}": pod_body(f"untolerated-{tag}", 1, tolerate=False),
             f"too-many-{tag}": pod_body(f"too-many-{tag}", GPUS_PER_NODE + 1),
             f"wrong-pool-{tag}": pod_body(f"wrong-pool-{tag}", 1, node_selector={"cloud.google.com/gke-accelerator":
                                                                                   "nvidia-h100-80gb"})}
    for body in cases.values():
        core.create_namespaced_pod(NS, body)
    fits = wait_for(lambda: (p := core.read_namespaced_pod(f"fits-{tag}", NS)).spec.node_name and p, "scheduling")
    assert fits.spec.node_name.startswith("gpu-node-")
    msgs = {n: wait_for(lambda n=n: failed_scheduling(cluster.admin, n), f"FailedScheduling of {n}")
            for n in cases if not n.startswith("fits")}
    assert "had taint {nvidia.com/gpu: present}, that the pod didn't tolerate" in msgs[f"untolerated-{tag}"]
    assert "Insufficient nvidia.com/gpu" in msgs[f"too-many-{tag}"]
    assert "3 node(s) didn't match" in msgs[f"wrong-pool-{tag}"]
    for n in cases:
        assert core.read_namespaced_pod(n, NS).spec.node_name != "cpu-node-0"


# --- RBAC ------------------------------------------------------------------------------------------------

ALLOWED = [(g, r, v, NS) for g, r, v in kl.PERMISSIONS] + [
    ("", "pods/log", "get", NS), ("argoproj.io", "workflowtaskresults", "create", NS),
    ("pipelines.kubeflow.org", "runs", "create", NS)]
DENIED = [("", "secrets", "get", NS), ("", "secrets", "list", NS), ("", "pods", "create", NS),
          ("", "pods", "delete", NS), ("apps", "deployments", "create", NS), ("", "nodes", "list", None),
          ("kubeflow.org", "pytorchjobs", "create", "default"), ("rbac.authorization.k8s.io", "roles", "create", NS),
          ("", "configmaps", "update", NS)]


def _can(api, group, resource, verb, ns) -> bool:
    sub = resource.split("/")
    attrs = client.V1ResourceAttributes(group=group, resource=sub[0], subresource=sub[1] if len(sub) > 1 else None,
                                        verb=verb, namespace=ns)
    review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
    return client.AuthorizationV1Api(api).create_self_subject_access_review(review).status.allowed


def test_service_account_can_do_what_the_pipeline_needs_and_nothing_else(sa_api):
    assert [a for a in ALLOWED if not _can(sa_api, *a)] == []
    assert [d for d in DENIED if _can(sa_api, *d)] == []
    with pytest.raises(client.ApiException) as err:            # and the server enforces it on real calls
        client.CoreV1Api(sa_api).list_namespaced_secret(NS)
    assert err.value.status == 403 and "system:serviceaccount:rglcd:rglcd-pipeline" in err.value.body
    assert isinstance(client.CoreV1Api(sa_api).list_namespaced_pod(NS).items, list)


# --- the launcher ----------------------------------------------------------------------------------------

def _cfg(*overrides: str):
    return load_config(overrides=["pipeline.distributed=pytorchjob", "pipeline.gpus=1",
                                          f"pipeline.node_selector={POOL['nodeLabels']}", *overrides])


def test_launcher_runs_a_multi_node_job_as_the_service_account(cluster, sa_api):
    name = "lt-" + uuid.uuid4().hex[:6]
    result = kl.run(_cfg("pipeline.num_nodes=3", "pipeline.gpus=4"), name, sa_api, unschedulable_timeout=30)
    assert (result.kind, result.state, result.output_dir) == ("PyTorchJob", "Succeeded", f"/checkpoints/{name}")
    assert sorted(result.pod_nodes) == [f"{name}-master-0", f"{name}-worker-0", f"{name}-worker-1"]
    assert set(result.pod_nodes.values()) <= {"gpu-node-0", "gpu-node-1"}
    pods = {p.metadata.name: p for p in pods_of(cluster.admin, f"training.kubeflow.org/job-name={name}")}
    worker = pods[f"{name}-worker-1"].spec.containers[0]
    assert {e.name: e.value for e in worker.env}["PET_NODE_RANK"] == "2"
    assert worker.resources.limits == {"nvidia.com/gpu": "4"} and worker.command[-2:] == ["--config",
                                                                                           "/etc/rglcd/config.yaml"]
    core = client.CoreV1Api(cluster.admin)
    cm = core.read_namespaced_config_map(f"{name}-config", NS)
    assert cm.metadata.owner_references[0].name == name
    assert yaml.safe_load(cm.data["config.yaml"])["pipeline"]["num_nodes"] == 3
    kl.delete(sa_api, kl.PYTORCHJOB, NS, name)                   # the garbage collector takes pods + ConfigMap

    def gone():
        try:
            core.read_namespaced_config_map(f"{name}-config", NS)
            return False
        except client.ApiException as err:
            return err.status == 404 and not pods_of(cluster.admin, f"training.kubeflow.org/job-name={name}")
    wait_for(gone, "garbage collection of the ConfigMap and pods")


def test_launcher_runs_a_trainjob(cluster, sa_api):
    name = "tj-" + uuid.uuid4().hex[:6]
    result = kl.run(_cfg("pipeline.distributed=trainjob", "pipeline.num_nodes=2"), name, sa_api,
                    unschedulable_timeout=30)
    assert (result.kind, result.state) == ("TrainJob", "Complete") and len(result.pod_nodes) == 2
    assert all(n.startswith("gpu-node-") for n in result.pod_nodes.values())


@pytest.mark.parametrize("overrides,expected,hint", [
    (["pipeline.gpus=9"], "Insufficient nvidia.com/gpu", "no node of the pool has 9 free nvidia.com/gpu"),
    (["pipeline.gpu_toleration_key=gpu"], "didn't tolerate", "taint key 'gpu'"),
])
def test_launcher_reports_unschedulable_gpu_requests(cluster, sa_api, overrides, expected, hint):
    name = "lu-" + uuid.uuid4().hex[:6]
    with pytest.raises(kl.Unschedulable) as err:
        kl.run(_cfg(*overrides), name, sa_api, unschedulable_timeout=0)
    assert expected in str(err.value) and hint in str(err.value) and f"{name}-master-0" in str(err.value)
    co = client.CustomObjectsApi(cluster.admin)                   # a stuck job is cleaned up
    wait_for(lambda: not any(j["metadata"]["name"] == name for j in co.list_namespaced_custom_object(
        "kubeflow.org", "v1", NS, "pytorchjobs")["items"]), "the stuck job to be deleted")


def test_launcher_reports_a_failed_job(cluster, sa_api):
    name = "lf-" + uuid.uuid4().hex[:6]
    with pytest.raises(kl.JobFailed, match=f"PyTorchJob rglcd/{name} failed: PodFailed: pod"):
        kl.run(_cfg(), name, sa_api, annotations={"fake-kubelet/exit-code": "3"}, unschedulable_timeout=30)


def test_launcher_explains_rbac_denial_and_conflicts(cluster, sa_api):
    with pytest.raises(kl.Forbidden) as err:
        kl.launch(sa_api, _cfg("pipeline.namespace=default"), "forbidden-" + uuid.uuid4().hex[:4])
    text = str(err.value)
    assert "create PyTorchJob default/" in text and "forbidden by RBAC" in text
    assert "system:serviceaccount:rglcd:rglcd-pipeline" in text and "manifests/base/rbac.yaml" in text
    with pytest.raises(kl.Forbidden, match="get PyTorchJob default/"):
        kl.job_exists(sa_api, _cfg("pipeline.namespace=default"), "forbidden")
    name = "dup-" + uuid.uuid4().hex[:4]
    assert not kl.job_exists(sa_api, _cfg(), name)              # what a retried launcher pod asks first
    kl.launch(sa_api, _cfg(), name)
    assert kl.job_exists(sa_api, _cfg(), name)
    with pytest.raises(kl.LaunchError, match="already exists"):
        kl.launch(sa_api, _cfg(), name)
    kl.delete(sa_api, kl.PYTORCHJOB, NS, name)


def test_apiserver_validates_custom_resources_with_our_crds(cluster, applied):
    job = kl.build_job(_cfg(), "bad-" + uuid.uuid4().hex[:4])
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    job["spec"]["runPolicy"]["cleanPodPolicy"] = "Sometimes"
    with pytest.raises(client.ApiException) as err:
        client.CustomObjectsApi(cluster.admin).create_namespaced_custom_object("kubeflow.org", "v1", NS,
                                                                               "pytorchjobs", job)
    assert err.value.status == 422
    assert "replicas" in err.value.body and "cleanPodPolicy" in err.value.body
