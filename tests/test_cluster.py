"""Cluster tier: the manifests and the launcher against a real Kubernetes control plane on loopback.

etcd + kube-apiserver + controller-manager + scheduler (v1.20.2 built from Debian's source by `make k8s-bins`),
GPU nodes shaped like the standalone overlay's GPU pool (its pipeline.yaml) from the fake kubelet, pods created by the fake training
operator. The real scheduler, RBAC authorizer, garbage collector, PV provisioner and CRD validation decide
every outcome asserted here. Without the binaries: skipped (failed under CI=true) naming `make k8s-bins`.
"""
from __future__ import annotations

import base64
import copy
import os
import signal
import subprocess
import sys
import shutil
import time
import uuid

import pytest
import yaml
from kubernetes import client, config as kube_config

from components.launcher import api as la
from components.launcher import objects as lo
from k8s import checks
from k8s.cluster import ControlPlane, require_binaries

pytestmark = pytest.mark.cluster
OVERLAY = "standalone"
CFG = checks.overlay_config(OVERLAY)
NS = CFG.pipeline.namespace                       # kubeflow: standalone KFP runs the run pods in its namespace
POOL = {"nodeLabels": CFG.pipeline.node_selector, "taints": checks.pool_taints(CFG)}
GPUS_PER_NODE = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_binaries()
    cp = ControlPlane(tmp_path_factory.mktemp("k8s"))
    try:
        cp.start(crds=checks.CRD_DIR)
        cp.start_fakes(checks.pipeline_file(OVERLAY), gpu_nodes=2, gpus=GPUS_PER_NODE, cpu_nodes=1)
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
    """`kubectl apply` of the standalone overlay into KFP's namespace, as a platform engineer would (KFP and the
    CRDs came with the cluster; here only the namespace stands for KFP)."""
    docs = checks.kustomize(checks.MANIFESTS / "overlays" / OVERLAY)
    cluster.kubectl("create", "namespace", NS)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(v1_20(docs)))
    wait_for(lambda: _token_filled(cluster.admin), "the launcher's token Secret")
    return docs


def _token_filled(api) -> bool:
    secret = client.CoreV1Api(api).read_namespaced_secret(CFG.pipeline.launcher_token_secret, NS)
    return bool((secret.data or {}).get("token"))


def wait_for(pred, what: str, timeout: float = 45.0, every: float = 0.3):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def token_client(cluster, token: str) -> client.ApiClient:
    conf = client.Configuration()
    conf.host = cluster.admin.configuration.host
    conf.ssl_ca_cert = cluster.admin.configuration.ssl_ca_cert
    conf.api_key = {"authorization": token}
    conf.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(conf)


@pytest.fixture(scope="module")
def launcher_api(cluster, applied) -> client.ApiClient:
    """The launcher identity as the multi-node training step gets it: the token from its Secret."""
    secret = client.CoreV1Api(cluster.admin).read_namespaced_secret(CFG.pipeline.launcher_token_secret, NS)
    return token_client(cluster, base64.b64decode(secret.data["token"]).decode())


@pytest.fixture(scope="module")
def launcher_kubeconfig(cluster, launcher_api, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("launcher") / "kubeconfig"
    conf = launcher_api.configuration
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "l",
        "clusters": [{"name": "c", "cluster": {"server": conf.host, "certificate-authority": conf.ssl_ca_cert}}],
        "users": [{"name": "launcher", "user": {"token": conf.api_key["authorization"]}}],
        "contexts": [{"name": "l", "context": {"cluster": "c", "user": "launcher", "namespace": NS}}]}))
    return str(path)


def pods_of(api, selector: str) -> list:
    return client.CoreV1Api(api).list_namespaced_pod(NS, label_selector=selector).items


def failed_scheduling(api, pod: str) -> str:
    ev = client.CoreV1Api(api).list_namespaced_event(
        NS, field_selector=f"involvedObject.name={pod},reason=FailedScheduling").items
    return ev[0].message if ev else ""


def pod_body(name: str, gpus: int, tolerate: bool = True, node_selector: dict | None = None) -> dict:
    spec = {"restartPolicy": "Never", "serviceAccountName": CFG.pipeline.service_account,
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
        "-n", NS, "get", "serviceaccount,role,rolebinding,configmap,cronjob,secret", "-o", "yaml"))["items"]}
    want = {(d["kind"], d["metadata"]["name"]) for d in applied
            if d["kind"] not in ("Namespace", "PersistentVolumeClaim")}
    assert want <= got


def test_multi_user_overlay_applies_with_its_profile(cluster, applied):
    """The other mode applies too (the profile controller, absent here, would create the namespace)."""
    docs = checks.kustomize(checks.MANIFESTS / "overlays" / "multi-user")
    ns = checks.overlay_config("multi-user").pipeline.namespace
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(v1_20(docs)))
    profile = client.CustomObjectsApi(cluster.admin).get_cluster_custom_object("kubeflow.org", "v1", "profiles", ns)
    assert profile["spec"]["owner"]["kind"] == "User"
    roles = {r.metadata.name for r in client.RbacAuthorizationV1Api(cluster.admin).list_namespaced_role(ns).items}
    assert roles == {"rglcd-submitter", "rglcd-pipeline", "rglcd-launcher"}


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
    assert "had taint {nvidia.com/gpu: }, that the pod didn't tolerate" in msgs[f"untolerated-{tag}"]
    assert "Insufficient nvidia.com/gpu" in msgs[f"too-many-{tag}"]
    assert "node(s) didn't match" in msgs[f"wrong-pool-{tag}"]
    for n in cases:
        assert core.read_namespaced_pod(n, NS).spec.node_name != "cpu-node-0"


# --- RBAC: a permission matrix per identity, by SubjectAccessReview against the applied Roles --------------

def allowed(cluster, account: str, group: str, resource: str, verb: str, ns: str | None, name: str = "") -> bool:
    sub = resource.split("/")
    attrs = client.V1ResourceAttributes(group=group, resource=sub[0], subresource=sub[1] if len(sub) > 1 else None,
                                        verb=verb, namespace=ns, name=name or None)
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=f"system:serviceaccount:{NS}:{account}", groups=["system:serviceaccounts", f"system:serviceaccounts:{NS}"],
        resource_attributes=attrs))
    return client.AuthorizationV1Api(cluster.admin).create_subject_access_review(review).status.allowed


KFP = "pipelines.kubeflow.org"
# account -> (each call its code makes, dangerous neighbours); (group, resource, verb, namespace, name)
MATRIX = {
    "rglcd-submitter": (
        [(KFP, r, v, NS, "") for r in ("experiments", "runs", "jobs") for v in ("create", "get", "list")],
        [(KFP, "runs", "delete", NS, ""), (KFP, "runs", "create", "default", ""), ("", "secrets", "get", NS, ""),
         ("", "pods", "create", NS, ""), ("kubeflow.org", "pytorchjobs", "create", NS, "")]),
    "rglcd-pipeline": (
        [("", "secrets", "get", NS, "mlpipeline-minio-artifact"), ("", "configmaps", "get", NS, "kfp-launcher"),
         ("", "pods", "get", NS, "any-task-pod"), ("argoproj.io", "workflowtaskresults", "create", NS, ""),
         ("argoproj.io", "workflowtaskresults", "patch", NS, "")],
        [("", "secrets", "get", NS, "rglcd-s3"), ("", "secrets", "get", NS, CFG.pipeline.launcher_token_secret),
         ("", "secrets", "list", NS, ""), ("", "pods/exec", "create", NS, "x"), ("", "pods", "create", NS, ""),
         ("kubeflow.org", "pytorchjobs", "create", NS, ""), (KFP, "runs", "create", NS, ""),
         ("", "configmaps", "get", NS, "other")]),
    "rglcd-launcher": (
        [(g, r, v, NS, "") for g, r, v in la.PERMISSIONS],
        [("", "secrets", "get", NS, "rglcd-s3"), ("", "pods/log", "get", NS, "x"), ("", "pods/exec", "create", NS, "x"),
         ("", "pods", "create", NS, ""), ("kubeflow.org", "pytorchjobs", "create", "default", ""),
         ("", "pods", "list", "default", ""), (KFP, "runs", "create", NS, ""), ("", "configmaps", "update", NS, ""),
         ("rbac.authorization.k8s.io", "roles", "create", NS, "")]),
    "rglcd-training": (
        [],
        [(KFP, "runs", "create", NS, ""), (KFP, "jobs", "create", NS, ""), ("", "secrets", "get", NS, "rglcd-s3"),
         ("", "pods", "list", NS, ""), ("kubeflow.org", "pytorchjobs", "create", NS, "")]),
}


@pytest.mark.parametrize("account", sorted(MATRIX))
def test_permission_matrix_per_identity(cluster, applied, account):
    calls, neighbours = MATRIX[account]
    assert [c for c in calls if not allowed(cluster, account, *c)] == []
    assert [d for d in neighbours if allowed(cluster, account, *d)] == []


def test_rbac_is_enforced_on_real_calls(cluster, launcher_api):
    with pytest.raises(client.ApiException) as err:
        client.CoreV1Api(launcher_api).list_namespaced_secret(NS)
    assert err.value.status == 403 and f"system:serviceaccount:{NS}:rglcd-launcher" in err.value.body
    assert isinstance(client.CoreV1Api(launcher_api).list_namespaced_pod(NS).items, list)


# --- the launcher ----------------------------------------------------------------------------------------

def _cfg(*overrides: str):
    return checks.overlay_config(OVERLAY, "pipeline.distributed=pytorchjob", "pipeline.gpus=1",
                                 "pipeline.train_cpu=1", "pipeline.train_memory=2Gi", *overrides)


def test_launcher_runs_a_multi_node_job_as_the_service_account(cluster, launcher_api):
    name = "lt-" + uuid.uuid4().hex[:6]
    result = la.run(_cfg("pipeline.num_nodes=3", "pipeline.gpus=4"), name, launcher_api, unschedulable_timeout=30)
    assert (result.kind, result.state, result.output_dir) == ("PyTorchJob", "Succeeded", f"/checkpoints/{name}")
    assert sorted(result.pod_nodes) == [f"{name}-master-0", f"{name}-worker-0", f"{name}-worker-1"]
    assert set(result.pod_nodes.values()) <= {"gpu-node-0", "gpu-node-1"}
    pods = {p.metadata.name: p for p in pods_of(cluster.admin, f"training.kubeflow.org/job-name={name}")}
    worker = pods[f"{name}-worker-1"].spec.containers[0]
    assert {e.name: e.value for e in worker.env}["PET_NODE_RANK"] == "2"
    assert worker.resources.limits == {"memory": "2Gi", "nvidia.com/gpu": "4"}
    assert worker.command[-2:] == ["--config", "/etc/rglcd/config.yaml"]
    assert pods[f"{name}-worker-1"].spec.service_account_name == "rglcd-training"
    assert not [v for v in pods[f"{name}-worker-1"].spec.volumes if v.secret]      # no API token mounted
    core = client.CoreV1Api(cluster.admin)
    cm = core.read_namespaced_config_map(f"{name}-config", NS)
    assert cm.metadata.owner_references[0].name == name
    assert yaml.safe_load(cm.data["config.yaml"])["pipeline"]["num_nodes"] == 3
    la.delete(launcher_api, lo.PYTORCHJOB, NS, name)                   # the garbage collector takes pods + ConfigMap

    def gone():
        try:
            core.read_namespaced_config_map(f"{name}-config", NS)
            return False
        except client.ApiException as err:
            return err.status == 404 and not pods_of(cluster.admin, f"training.kubeflow.org/job-name={name}")
    wait_for(gone, "garbage collection of the ConfigMap and pods")


def test_launcher_runs_a_trainjob(cluster, launcher_api):
    name = "tj-" + uuid.uuid4().hex[:6]
    result = la.run(_cfg("pipeline.distributed=trainjob", "pipeline.num_nodes=2"), name, launcher_api,
                    unschedulable_timeout=30)
    assert (result.kind, result.state) == ("TrainJob", "Complete") and len(result.pod_nodes) == 2
    assert all(n.startswith("gpu-node-") for n in result.pod_nodes.values())


@pytest.mark.parametrize("overrides,expected,hint", [
    (["pipeline.gpus=9"], "Insufficient nvidia.com/gpu", "no node of the pool has 9 free nvidia.com/gpu"),
    (['pipeline.gpu_taints=["gpu:NoSchedule"]'], "didn't tolerate", "the pods tolerate the taints ['gpu:NoSchedule']"),
])
def test_launcher_reports_unschedulable_gpu_requests(cluster, launcher_api, overrides, expected, hint):
    name = "lu-" + uuid.uuid4().hex[:6]
    with pytest.raises(la.Unschedulable) as err:
        la.run(_cfg(*overrides), name, launcher_api, unschedulable_timeout=0)
    assert expected in str(err.value) and hint in str(err.value) and f"{name}-master-0" in str(err.value)
    co = client.CustomObjectsApi(cluster.admin)                   # a stuck job is cleaned up
    wait_for(lambda: not any(j["metadata"]["name"] == name for j in co.list_namespaced_custom_object(
        "kubeflow.org", "v1", NS, "pytorchjobs")["items"]), "the stuck job to be deleted")


def test_launcher_reports_a_failed_job(cluster, launcher_api):
    name = "lf-" + uuid.uuid4().hex[:6]
    with pytest.raises(la.JobFailed, match=f"PyTorchJob {NS}/{name} failed: PodFailed: pod"):
        la.run(_cfg(), name, launcher_api, annotations={"fake-kubelet/exit-code": "3"}, unschedulable_timeout=30)


def test_launcher_explains_rbac_denial_and_conflicts(cluster, launcher_api):
    with pytest.raises(la.Forbidden) as err:
        la.launch(launcher_api, _cfg("pipeline.namespace=default"), "forbidden-" + uuid.uuid4().hex[:4])
    text = str(err.value)
    assert "create PyTorchJob default/" in text and "forbidden by RBAC" in text
    assert f"system:serviceaccount:{NS}:rglcd-launcher" in text and "manifests/base/rbac.yaml" in text
    with pytest.raises(la.Forbidden, match="get PyTorchJob default/"):
        la.job_exists(launcher_api, _cfg("pipeline.namespace=default"), "forbidden")
    name = "dup-" + uuid.uuid4().hex[:4]
    assert not la.job_exists(launcher_api, _cfg(), name)              # what a retried launcher pod asks first
    la.launch(launcher_api, _cfg(), name)
    assert la.job_exists(launcher_api, _cfg(), name)
    with pytest.raises(lo.LaunchError, match="already exists"):
        la.launch(launcher_api, _cfg(), name)
    la.delete(launcher_api, lo.PYTORCHJOB, NS, name)


def test_apiserver_validates_custom_resources_with_our_crds(cluster, applied):
    job = lo.build_job(_cfg(), "bad-" + uuid.uuid4().hex[:4])
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    job["spec"]["runPolicy"]["cleanPodPolicy"] = "Sometimes"
    with pytest.raises(client.ApiException) as err:
        client.CustomObjectsApi(cluster.admin).create_namespaced_custom_object("kubeflow.org", "v1", NS,
                                                                               "pytorchjobs", job)
    assert err.value.status == 422
    assert "replicas" in err.value.body and "cleanPodPolicy" in err.value.body


# --- clean-up: a cancelled run's job goes with it ----------------------------------------------------------

_LAUNCH = """
import sys
from components.launcher import api
from k8s import checks
cfg = checks.overlay_config("standalone", *sys.argv[3:])
print("launching", flush=True)
api.run(cfg, sys.argv[1], api.api_client(sys.argv[2]), annotations={"fake-kubelet/run-seconds": "600"})
"""


def _job_gone(cluster, name: str) -> bool:
    jobs = client.CustomObjectsApi(cluster.admin).list_namespaced_custom_object("kubeflow.org", "v1", NS,
                                                                                "pytorchjobs")["items"]
    return not any(j["metadata"]["name"] == name for j in jobs) and \
        not pods_of(cluster.admin, f"training.kubeflow.org/job-name={name}")


def test_cancel_mid_job_deletes_the_launched_job(cluster, launcher_kubeconfig):
    """Cancelling a KFP run stops the launcher's pod with SIGTERM; the launcher deletes the job, and the garbage
    collector its pods. Here the launcher runs as a process with the launcher's token, as in the step."""
    name = "cancel-" + uuid.uuid4().hex[:5]
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checks.REPO), tests, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, name, launcher_kubeconfig, "pipeline.distributed=pytorchjob",
                             "pipeline.num_nodes=2", "pipeline.gpus=1"], env=env, cwd=checks.REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        running = wait_for(lambda: [p for p in pods_of(cluster.admin, f"training.kubeflow.org/job-name={name}")
                                    if p.status.phase == "Running"], "training pods running", timeout=60)
        assert len(running) == 2 and proc.poll() is None            # mid-job: pods running, launcher waiting
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "Cancelled" in err and f"{NS}/{name} deleted" in err
    wait_for(lambda: _job_gone(cluster, name), "the job and its pods to be deleted", timeout=60)


def test_deleting_the_launchers_pod_deletes_the_job(cluster, applied, launcher_api):
    """Owner reference: when KFP deletes a run's pods (run deleted, TTL), the job goes with its launcher pod."""
    core, name = client.CoreV1Api(cluster.admin), "owned-" + uuid.uuid4().hex[:5]
    owner = core.create_namespaced_pod(NS, pod_body(f"launcher-{name}", 0))
    la.launch(launcher_api, _cfg(), name, annotations={"fake-kubelet/run-seconds": "600"},
              owner={"name": owner.metadata.name, "uid": owner.metadata.uid})
    wait_for(lambda: pods_of(cluster.admin, f"training.kubeflow.org/job-name={name}"), "training pods")
    core.delete_namespaced_pod(owner.metadata.name, NS, grace_period_seconds=0)
    wait_for(lambda: _job_gone(cluster, name), "garbage collection of the owned job", timeout=60)
