"""Offline tier of the Kubernetes checks: every overlay builds with kustomize, every object validates strictly
against the Kubernetes schemas (kubernetes-validate) or our CRDs' schemas, and the scheduling, RBAC and naming
rules hold. The launcher's generated objects go through the same checks. No cluster needed."""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import pytest
import yaml

from k8s import checks
from components import k8s_launcher as kl
from rglcd.config import PipelineConfig, list_presets, load_config

OVERLAYS = checks.OVERLAYS
DEFAULTS = PipelineConfig()


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    return {o: checks.kustomize(checks.MANIFESTS / "overlays" / o) for o in OVERLAYS}


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_there_is_a_local_and_a_cloud_gpu_overlay():
    assert "local" in OVERLAYS and {"gke", "eks"} & set(OVERLAYS)


@pytest.mark.parametrize("version", checks.TARGET_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(built, overlay, version):
    docs = built[overlay]
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "PyTorchJob",
            "CronJob", "ConfigMap"} <= {d["kind"] for d in docs}
    errors = [e for d in docs for e in checks.validate(d, version)]
    assert errors == []
    # applying an overlay must never start a multi-node GPU job: the hand-started PyTorchJob comes suspended
    assert all(pj["spec"]["runPolicy"]["suspend"] is True for pj in by_kind(docs, "PyTorchJob"))


def test_validation_catches_broken_objects(built):
    """The validators are not vacuous: typical mistakes in each object family are reported."""
    pj = copy.deepcopy(by_kind(built["gke"], "PyTorchJob")[0])
    pj["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    pj["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] = "Sometimes"
    pj["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["gpus"] = 8
    errors = "\n".join(checks.validate(pj, "1.30.0"))
    assert "'one' is not of type 'integer'" in errors
    assert "'Sometimes' is not one of" in errors
    assert "'gpus' was unexpected" in errors
    cron = copy.deepcopy(by_kind(built["gke"], "CronJob")[0])
    cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] = "two"
    assert "'two' is not of type 'integer'" in "".join(checks.validate(cron, "1.30.0"))
    pvc = copy.deepcopy(by_kind(built["gke"], "PersistentVolumeClaim")[0])
    pvc["spec"]["storageClass"] = "typo"
    assert "storageClass" in "".join(checks.validate(pvc, "1.30.0"))


def test_names_match_the_config_defaults(built):
    for overlay, docs in built.items():
        names = {(d["kind"], d["metadata"]["name"]) for d in docs}
        assert ("Namespace", DEFAULTS.namespace) in names
        assert ("ServiceAccount", DEFAULTS.service_account) in names
        assert {("PersistentVolumeClaim", DEFAULTS.checkpoint_pvc),
                ("PersistentVolumeClaim", DEFAULTS.model_cache_pvc)} <= names
        assert all(d["metadata"].get("namespace", DEFAULTS.namespace) == DEFAULTS.namespace for d in docs)
        images = {c["image"] for d in docs for _, t in checks.pod_templates(d) for c in checks.containers(t)}
        assert images == {DEFAULTS.image, DEFAULTS.cpu_image}, overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_pods_target_the_overlays_gpu_pool(built, overlay):
    pool = checks.gpu_pool(overlay)
    templates = [(d, w, t) for d in built[overlay] for w, t in checks.pod_templates(d)]
    gpu = [(d, w, t) for d, w, t in templates if checks.gpus_requested(t)]
    assert gpu, "no pod template requests nvidia.com/gpu"
    for doc, where, t in gpu:
        spec = t["spec"]
        for taint in pool["taints"]:
            assert any(checks.tolerates(tol, taint) for tol in spec.get("tolerations", [])), (where, taint)
        assert spec.get("nodeSelector") and spec["nodeSelector"].items() <= pool["nodeLabels"].items(), where
        assert checks.gpus_requested(t) <= pool["gpusPerNode"], where
        shm = [v for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        mounts = {m["mountPath"]: m["name"] for c in checks.containers(t) for m in c.get("volumeMounts", [])}
        assert shm and mounts.get("/dev/shm") == shm[0]["name"], where
        assert doc["spec"]["nprocPerNode"] == str(checks.gpus_requested(t)), where
    for doc, where, t in templates:
        if not checks.gpus_requested(t):       # CPU pods stay off the GPU pool
            assert not any(checks.tolerates(tol, taint) for tol in t["spec"].get("tolerations", [])
                           for taint in pool["taints"]), where


def test_toleration_semantics():
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    assert checks.tolerates({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, taint)
    assert checks.tolerates({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}, taint)
    assert checks.tolerates({"operator": "Exists"}, taint)
    assert not checks.tolerates({"key": "nvidia.com/gpu", "operator": "Equal", "value": "true"}, taint)
    assert not checks.tolerates({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, taint)
    assert not checks.tolerates({"key": "gpu", "operator": "Exists"}, taint)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_jobs_restart_policies_and_volumes(built, overlay):
    docs = built[overlay]
    claims = {d["metadata"]["name"] for d in by_kind(docs, "PersistentVolumeClaim")}
    for doc in docs:
        for where, t in checks.pod_templates(doc):
            if doc["kind"] in ("Job", "CronJob"):
                assert t["spec"]["restartPolicy"] in ("OnFailure", "Never"), where
            used = {v["persistentVolumeClaim"]["claimName"] for v in t["spec"].get("volumes", [])
                    if "persistentVolumeClaim" in v}
            assert used <= claims, (where, used - claims)
            assert t["spec"]["serviceAccountName"] == DEFAULTS.service_account
            assert t["spec"]["securityContext"]["runAsNonRoot"] is True
    for role, replica in by_kind(docs, "PyTorchJob")[0]["spec"]["pytorchReplicaSpecs"].items():
        assert role in ("Master", "Worker") and replica["restartPolicy"] in ("OnFailure", "ExitCode")
        assert [c["name"] for c in replica["template"]["spec"]["containers"]] == ["pytorch"]
    nodes = sum(r["replicas"] for r in by_kind(docs, "PyTorchJob")[0]["spec"]["pytorchReplicaSpecs"].values())
    if nodes > 1:   # every rank reads the checkpoints on resume: shared storage
        assert all("ReadWriteMany" in d["spec"]["accessModes"] for d in by_kind(docs, "PersistentVolumeClaim"))


def test_cronjob_submits_the_pipeline_on_a_valid_schedule(built):
    for overlay, docs in built.items():
        (cron,) = by_kind(docs, "CronJob")
        assert checks.cron_errors(cron["spec"]["schedule"]) == []
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["rglcd", "pipeline", "submit"] and "--no-wait" in container["args"]
        refs = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
        settings = {d["metadata"]["name"]: d["data"] for d in by_kind(docs, "ConfigMap")}
        assert refs and set(refs) <= set(settings), overlay      # kustomize resolved the hashed name
        needed = set(re.findall(r"\$\((\w+)\)", " ".join(container["args"])))
        assert needed == {"RGLCD_PRESET", "KFP_HOST"} and needed <= set(settings[refs[0]])
        assert settings[refs[0]]["RGLCD_PRESET"] in list_presets()


def test_cron_syntax_checker():
    assert checks.cron_errors("0 3 * * 0") == [] and checks.cron_errors("@weekly") == []
    assert checks.cron_errors("*/15 1-5 1,15 JAN-MAR MON-FRI") == []
    assert "6 fields" in checks.cron_errors("0 0 3 * * *")[0]      # KFP's 6-field form is not a CronJob's
    assert checks.cron_errors("61 * * * *") == ["'61' is outside 0-59"]
    assert checks.cron_errors("0 5-1 * * *") == ["'5-1' is an empty range"]
    assert checks.cron_errors("0 0 * * 7") == ["'7' is outside 0-6"]


def test_rbac_is_namespaced_least_privilege_and_covers_the_launcher(built):
    for overlay, docs in built.items():
        assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
        (role,) = by_kind(docs, "Role")
        (binding,) = by_kind(docs, "RoleBinding")
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": DEFAULTS.service_account,
                                        "namespace": DEFAULTS.namespace}]
        granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
                   for r in rule["resources"] for v in rule["verbs"]}
        assert not any("*" in x for x in granted), "no wildcards"
        assert not {x for x in granted if x[1] in ("secrets", "nodes", "roles", "rolebindings")}
        assert not {x for x in granted if x[1] == "pods" and x[2] in ("create", "delete", "patch")}
        assert set(kl.PERMISSIONS) <= granted, set(kl.PERMISSIONS) - granted


def test_s3_secret_is_a_template_outside_the_build(built):
    path = checks.MANIFESTS / "base" / "secret-s3.template.yaml"
    text = path.read_text()
    secret = yaml.safe_load(text)
    assert secret["metadata"]["name"] == DEFAULTS.s3_secret
    assert set(secret["stringData"]) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(v == "" for v in secret["stringData"].values()), "no real values in the template"
    assert f"kubectl -n {DEFAULTS.namespace} create secret generic {DEFAULTS.s3_secret}" in text
    assert checks.validate(secret, "1.30.0") == []
    assert not any(d["kind"] == "Secret" for docs in built.values() for d in docs)


# --- the launcher's objects ------------------------------------------------------------------------------

def _cfg(*overrides: str):
    return load_config(overrides=["pipeline.distributed=pytorchjob", *overrides])   # defaults = docs/method.md 8


@pytest.mark.parametrize("nodes,gpus", [(1, 8), (4, 8), (2, 0)])
def test_launcher_pytorchjob_validates_and_follows_the_config(nodes, gpus):
    pool = checks.gpu_pool("gke")
    cfg = _cfg(f"pipeline.num_nodes={nodes}", f"pipeline.gpus={gpus}",
               f"pipeline.node_selector={pool['nodeLabels']}")
    job = kl.build_job(cfg, "rglcd-train-1", ("--resume=auto",), {"a": "b"})
    for version in checks.TARGET_VERSIONS:
        assert checks.validate(job, version) == []
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert sum(s["replicas"] for s in specs.values()) == nodes and specs["Master"]["replicas"] == 1
    assert job["spec"]["nprocPerNode"] == str(max(gpus, 1)) and job["spec"]["runPolicy"]["backoffLimit"] == 3
    for _, t in checks.pod_templates(job):
        assert checks.gpus_requested(t) == gpus
        assert t["metadata"]["annotations"] == {"a": "b"}
        tolerated = all(any(checks.tolerates(x, taint) for x in t["spec"].get("tolerations", []))
                        for taint in pool["taints"])
        assert tolerated == (gpus > 0)
        (c,) = checks.containers(t)
        assert c["command"][:3] == ["torchrun", "--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)"]
        assert c["command"][-4:] == ["train", "--config", "/etc/rglcd/config.yaml", "--resume=auto"]
        assert c["envFrom"] == [{"secretRef": {"name": "rglcd-s3"}}]


def test_launcher_trainjob_validates_against_its_crd():
    cfg = _cfg("pipeline.distributed=trainjob", "pipeline.num_nodes=3", "pipeline.gpus=4",
               "pipeline.node_selector={cloud.google.com/gke-accelerator: nvidia-h100-80gb}")
    job = kl.build_job(cfg, "rglcd-tj")
    assert checks.validate(job, "1.30.0") == []
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 4)
    assert trainer["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": "4"}}
    assert "--master_addr=$(MASTER_ADDR)" not in trainer["command"]     # Trainer injects PET_MASTER_*
    ((_, pod),) = checks.pod_templates(job)
    assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    # the patched pod, with the runtime's container filled in, is a valid core pod template
    pod = copy.deepcopy(pod)
    pod["spec"]["containers"][0].update(image=trainer["image"], command=trainer["command"], env=trainer["env"])
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": pod}
    assert checks.validate(wrapped, "1.30.0") == []
    broken = copy.deepcopy(job)
    broken["spec"]["trainer"]["numNodes"] = 0
    assert "less than the minimum of 1" in "".join(checks.validate(broken, "1.30.0"))


def test_launcher_config_map_round_trips_with_pod_paths(tmp_path):
    cfg = _cfg("pipeline.num_nodes=2", "train.max_steps=77")
    cm = kl.build_config_map(cfg, "rglcd-x")
    assert checks.validate(cm, "1.30.0") == []
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    back = load_config(path=path)
    assert back.train.max_steps == 77 and back.pipeline.num_nodes == 2
    assert back.train.output_dir == "/checkpoints/rglcd-x" and back.model.cache_dir == "/cache/rglcd"
    assert cfg.train.output_dir == "runs/latest", "the caller's config is not modified"


def test_launcher_refuses_bad_input_at_the_edge():
    with pytest.raises(kl.LaunchError, match="job name 'Bad_Name'"):
        kl.build_job(_cfg(), "Bad_Name")
    with pytest.raises(kl.LaunchError, match="at most 45"):
        kl.build_job(_cfg(), "a" * 46)
    with pytest.raises(kl.LaunchError, match="pipeline.distributed: 'none' launches no job"):
        kl.build_job(_cfg("pipeline.distributed=none"), "ok")


def test_launcher_dry_run_prints_the_objects():
    out = subprocess.run([sys.executable, "-m", "components.k8s_launcher", "--name", "rglcd-dry", "--dry-run",
                          "--set", "pipeline.distributed=pytorchjob", "--set", "pipeline.num_nodes=2"],
                         capture_output=True, text=True, cwd=checks.REPO, check=True)
    docs = list(yaml.safe_load_all(out.stdout))
    assert [d["kind"] for d in docs] == ["PyTorchJob", "ConfigMap"]
    assert docs[0]["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    bad = subprocess.run([sys.executable, "-m", "components.k8s_launcher", "--name", "x", "--dry-run"],
                         capture_output=True, text=True, cwd=checks.REPO)
    assert bad.returncode == 1 and "pipeline.distributed: 'none'" in bad.stderr


@pytest.mark.parametrize("ci", ["false", "true"])
def test_cluster_tier_without_binaries_names_make_k8s_bins(tmp_path, ci):
    """No control-plane binaries: the cluster tests skip (developer) or fail (CI=true), naming the fix."""
    env = {**os.environ, "RGLCD_K8S_BIN": str(tmp_path / "none"), "CI": ci}
    out = subprocess.run([sys.executable, "-m", "pytest", "tests/test_cluster.py", "-q", "-rsE", "--noconftest",
                          "-p", "no:cacheprovider", "-k", "pvcs_bind or rbac"], cwd=checks.REPO, env=env,
                         capture_output=True, text=True)
    assert "make k8s-bins" in out.stdout
    if ci == "true":
        assert out.returncode == 1 and " error" in out.stdout
    else:
        assert out.returncode == 0 and "2 skipped" in out.stdout


def test_launcher_reads_job_conditions_and_explains_scheduler_messages():
    done = {"status": {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "False"},
                                      {"type": "Succeeded", "status": "True"}]}}
    assert kl.job_state(kl.PYTORCHJOB, done) == "Succeeded"
    assert kl.job_state(kl.TRAINJOB, {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == "Complete"
    assert kl.job_state(kl.PYTORCHJOB, {"status": {"conditions": [{"type": "Failed", "status": "False"}]}}) is None
    assert kl.job_state(kl.PYTORCHJOB, {}) is None
    cfg = _cfg("pipeline.gpus=9", "pipeline.node_selector={pool: a100}")
    err = kl._unschedulable_error(cfg, {"j-worker-0": "0/3 nodes are available: 1 Insufficient cpu, "
                                                      "2 node(s) didn't match node selector."}, 612.4)
    assert str(err) == ("training pods unschedulable for 612 s: j-worker-0: 0/3 nodes are available: "
                        "1 Insufficient cpu, 2 node(s) didn't match node selector. -> no node matches "
                        "pipeline.node_selector {'pool': 'a100'}")
    err = kl._unschedulable_error(cfg, {"j-master-0": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}, 0)
    assert str(err).endswith("-> no node of the pool has 9 free nvidia.com/gpu (pipeline.gpus) - lower it, or add nodes")
