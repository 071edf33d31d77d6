"""Offline tier of the Kubernetes checks: every overlay (deployment mode) builds with kustomize, every object
validates strictly against the Kubernetes schemas (kubernetes-validate) or our CRDs' schemas, names come from
the overlay's pipeline.yaml, RBAC gives each identity exactly its calls, and every pod spec the project
produces meets Pod Security `restricted` (tests/k8s/podsecurity.py). The launcher's generated objects go
through the same checks. No cluster needed."""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import pytest
import yaml

from components import podspec
from components.launcher import api as la
from components.launcher import objects as lo
from k8s import checks, podsecurity
from rglcd.config import ConfigError, list_presets, load_config

OVERLAYS = checks.OVERLAYS
NAMESPACES = {"standalone": "kubeflow", "multi-user": "rglcd"}


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    return {o: checks.kustomize(checks.MANIFESTS / "overlays" / o) for o in OVERLAYS}


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_there_is_an_overlay_per_deployment_mode():
    assert set(OVERLAYS) == {"standalone", "multi-user"}


@pytest.mark.parametrize("version", checks.TARGET_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(built, overlay, version):
    errors = [e for d in built[overlay] for e in checks.validate(d, version)]
    assert errors == []


def test_validation_catches_broken_objects(built):
    cron = copy.deepcopy(by_kind(built["standalone"], "CronJob")[0])
    cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] = "two"
    assert "'two' is not of type 'integer'" in "".join(checks.validate(cron, "1.30.0"))
    pvc = copy.deepcopy(by_kind(built["standalone"], "PersistentVolumeClaim")[0])
    pvc["spec"]["storageClass"] = "typo"
    assert "storageClass" in "".join(checks.validate(pvc, "1.30.0"))
    profile = copy.deepcopy(by_kind(built["multi-user"], "Profile")[0])
    del profile["spec"]["owner"]["kind"]
    assert "'kind' is a required property" in "".join(checks.validate(profile, "1.30.0"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_names_come_from_the_overlays_pipeline_yaml(built, overlay):
    """One place: every name the config uses is an object of the overlay, in the config's namespace."""
    p = checks.overlay_config(overlay).pipeline
    docs = built[overlay]
    assert p.namespace == NAMESPACES[overlay]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("ServiceAccount", p.service_account), ("ServiceAccount", p.training_service_account),
            ("Secret", p.launcher_token_secret), ("PersistentVolumeClaim", p.checkpoint_pvc),
            ("PersistentVolumeClaim", p.model_cache_pvc)} <= names
    assert all(d["metadata"].get("namespace") == p.namespace for d in docs if d["kind"] != "Profile")
    (cm,) = by_kind(docs, "ConfigMap")
    assert yaml.safe_load(cm["data"]["pipeline.yaml"]) == yaml.safe_load(checks.pipeline_file(overlay).read_text())
    images = {c["image"] for d in docs for _, t in checks.pod_templates(d) for c in checks.containers(t)}
    assert images == {p.cpu_image}
    if overlay == "multi-user":
        (profile,) = by_kind(docs, "Profile")
        assert profile["metadata"] == {"name": p.namespace} and "namespace" not in profile["metadata"]


def test_bad_names_and_quantities_fail_at_load_naming_key_and_value(tmp_path):
    for override, needle in [("pipeline.namespace=Team_A", "pipeline.namespace: 'Team_A' is not allowed"),
                             ("pipeline.train_memory=64GB", "pipeline.train_memory: '64GB' is not allowed; "
                                                            "allowed: a Kubernetes quantity"),
                             ("pipeline.gpu_taints=[gpu:Sometimes]", "pipeline.gpu_taints"),
                             ("pipeline.node_selector={'a b': c}", "pipeline.node_selector"),
                             ("pipeline.s3_secret=Bad/Name", "pipeline.s3_secret: 'Bad/Name'")]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            load_config(overrides=[override])
    assert load_config(overrides=["pipeline.train_memory=1.5Gi", "pipeline.train_cpu=500m"]).pipeline.train_cpu == "500m"


def test_toleration_semantics():
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    assert checks.tolerates({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, taint)
    assert checks.tolerates({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}, taint)
    assert checks.tolerates({"operator": "Exists"}, taint)
    assert not checks.tolerates({"key": "nvidia.com/gpu", "operator": "Equal", "value": "true"}, taint)
    assert not checks.tolerates({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, taint)
    assert not checks.tolerates({"key": "gpu", "operator": "Exists"}, taint)


def test_gpu_tolerations_come_from_the_pool_taints():
    cfg = load_config(overrides=['pipeline.gpu_taints=["nvidia.com/gpu=present:NoSchedule", "pool:NoExecute"]'])
    tols = podspec.gpu_tolerations(cfg)
    assert tols == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
                    {"key": "pool", "operator": "Exists", "effect": "NoExecute"}]
    assert all(any(checks.tolerates(t, taint) for t in tols) for taint in checks.pool_taints(cfg))
    assert not checks.tolerates(tols[0], {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"})


# --- Pod Security ----------------------------------------------------------------------------------------

def _known_bad() -> dict:
    return {"hostNetwork": True, "securityContext": {"runAsUser": 0},
            "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "hostPort": 80}],
                            "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}}]}


def test_pod_security_checker_rejects_a_known_bad_spec():
    problems = podsecurity.violations(_known_bad())
    for needle in ("hostNetwork", "volume host of type hostPath", "pod runAsUser 0", "runAsNonRoot",
                   "seccompProfile", "privileged", "allowPrivilegeEscalation", "drop ALL", "SYS_ADMIN", "hostPort"):
        assert any(needle in p for p in problems), needle
    fixed = {"securityContext": podspec.pod_security_context(),
             "containers": [{"name": "c", "image": "x", "securityContext": podspec.container_security_context()}]}
    assert podsecurity.violations(fixed) == []
    fixed["containers"][0]["securityContext"]["seccompProfile"] = {"type": "Unconfined"}   # container overrides pod
    assert podsecurity.violations(fixed) == ["pod: seccompProfile not RuntimeDefault/Localhost for every container"]


def _project_pod_specs(built) -> list[tuple[str, dict]]:
    """Every pod spec the project itself produces: the overlays' and the launcher's, both kinds, 1 and 4 nodes."""
    out = [(f"{o}/{d['kind']}/{w}", t["spec"]) for o, docs in built.items() for d in docs
           for w, t in checks.pod_templates(d)]
    for kind in ("pytorchjob", "trainjob"):
        for nodes in (1, 4):
            job = lo.build_job(_cfg(f"pipeline.distributed={kind}", f"pipeline.num_nodes={nodes}"), "rglcd-ps")
            out += [(f"launcher/{kind}/{nodes}/{w}", t["spec"]) for w, t in checks.pod_templates(job)]
    return out


def test_every_pod_the_project_produces_meets_restricted_with_a_read_only_root(built):
    specs = _project_pod_specs(built)
    assert len(specs) >= 6
    for where, spec in specs:
        assert podsecurity.violations(spec, where) == []
        assert podsecurity.read_only_root_gaps(spec, where) == []
        writable = {m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in writable, where


def test_launched_training_pods_carry_no_api_token():
    for kind in ("pytorchjob", "trainjob"):
        job = lo.build_job(_cfg(f"pipeline.distributed={kind}"), "rglcd-t")
        for _, t in checks.pod_templates(job):
            assert t["spec"]["serviceAccountName"] == "rglcd-training"
    pj = lo.build_job(_cfg(), "rglcd-t")
    assert all(t["spec"]["automountServiceAccountToken"] is False for _, t in checks.pod_templates(pj))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_labels_enforce_what_every_pod_meets_and_warn_restricted(overlay):
    labels = yaml.safe_load((checks.MANIFESTS / "overlays" / overlay / "namespace-labels.yaml").read_text())
    labels = labels["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce"] in ("baseline", "restricted")


# --- jobs, CronJob, RBAC ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_jobs_restart_policies_volumes_and_resources(built, overlay):
    docs = built[overlay]
    claims = {d["metadata"]["name"] for d in by_kind(docs, "PersistentVolumeClaim")}
    for doc in docs:
        for where, t in checks.pod_templates(doc):
            assert t["spec"]["restartPolicy"] in ("OnFailure", "Never"), where
            used = {v["persistentVolumeClaim"]["claimName"] for v in t["spec"].get("volumes", [])
                    if "persistentVolumeClaim" in v}
            assert used <= claims, (where, used - claims)
            for c in checks.containers(t):
                res = c["resources"]
                assert res["requests"]["cpu"] and res["requests"]["memory"] == res["limits"]["memory"], where
    assert all("ReadWriteMany" in d["spec"]["accessModes"] for d in by_kind(docs, "PersistentVolumeClaim"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cronjob_submits_with_kfps_projected_token(built, overlay):
    docs = built[overlay]
    (cron,) = by_kind(docs, "CronJob")
    assert checks.cron_errors(cron["spec"]["schedule"]) == []
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "rglcd-submitter" and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["command"] == ["rglcd", "pipeline", "submit"] and "--no-wait" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    token_dir = os.path.dirname(env["KF_PIPELINES_SA_TOKEN_PATH"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == token_dir]
    (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (source,) = vol["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    assert env["KF_PIPELINES_SA_TOKEN_PATH"] == f"{token_dir}/{source['serviceAccountToken']['path']}"
    settings = {d["metadata"]["name"]: d["data"] for d in by_kind(docs, "ConfigMap")}
    refs = [e["configMapRef"]["name"] for e in container["envFrom"]]
    needed = set(re.findall(r"\$\((\w+)\)", " ".join(container["args"])))
    assert needed == {"RGLCD_PRESET", "KFP_HOST"} and needed <= set(settings[refs[0]])
    assert settings[refs[0]]["RGLCD_PRESET"] in list_presets()
    assert "--config" in container["args"] and not any("secretRef" in e for e in container["envFrom"])


def test_cron_syntax_checker():
    assert checks.cron_errors("0 3 * * 0") == [] and checks.cron_errors("@weekly") == []
    assert checks.cron_errors("*/15 1-5 1,15 JAN-MAR MON-FRI") == []
    assert "6 fields" in checks.cron_errors("0 0 3 * * *")[0]      # KFP's 6-field form is not a CronJob's
    assert checks.cron_errors("61 * * * *") == ["'61' is outside 0-59"]
    assert checks.cron_errors("0 5-1 * * *") == ["'5-1' is an empty range"]
    assert checks.cron_errors("0 0 * * 7") == ["'7' is outside 0-6"]


def grants(docs: list[dict], account: str) -> set[tuple]:
    """(group, resource, verb, resourceName or '*') the Roles bound to `account` give."""
    bound = {b["roleRef"]["name"] for b in by_kind(docs, "RoleBinding")
             if any(s["name"] == account for s in b["subjects"])}
    return {(g, r, v, n) for role in by_kind(docs, "Role") if role["metadata"]["name"] in bound
            for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
            for n in rule.get("resourceNames", ["*"])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_gives_each_identity_exactly_its_calls(built, overlay):
    docs = built[overlay]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    assert not any("*" in x[:3] for a in ("rglcd-submitter", "rglcd-pipeline", "rglcd-launcher")
                   for x in grants(docs, a))
    assert {x[:3] for x in grants(docs, "rglcd-launcher")} == set(la.PERMISSIONS)
    assert grants(docs, "rglcd-pipeline") == {
        ("", "secrets", "get", "mlpipeline-minio-artifact"), ("", "configmaps", "get", "kfp-launcher"),
        ("", "pods", "get", "*"), ("argoproj.io", "workflowtaskresults", "create", "*"),
        ("argoproj.io", "workflowtaskresults", "patch", "*")}
    assert {x[:3] for x in grants(docs, "rglcd-submitter")} == {
        ("pipelines.kubeflow.org", r, v, ) for r in ("experiments", "runs", "jobs") for v in ("create", "get", "list")}
    assert grants(docs, "rglcd-training") == set()
    (token,) = [d for d in by_kind(docs, "Secret") if d["type"] == "kubernetes.io/service-account-token"]
    assert token["metadata"]["annotations"]["kubernetes.io/service-account.name"] == "rglcd-launcher"


def test_credential_secrets_are_templates_outside_the_build(built):
    for name, keys in (("secret-s3", podspec.S3_KEYS), ("secret-mlflow", podspec.MLFLOW_KEYS)):
        text = (checks.MANIFESTS / "base" / f"{name}.template.yaml").read_text()
        secret = yaml.safe_load(text)
        assert tuple(secret["stringData"]) == keys
        assert all(v == "" for v in secret["stringData"].values()), "no real values in the template"
        assert checks.validate(secret, "1.30.0") == []
        assert f"create secret generic {secret['metadata']['name']}" in text
    assert not [d for docs in built.values() for d in by_kind(docs, "Secret") if d["type"] == "Opaque"]


# --- the launcher's objects ------------------------------------------------------------------------------

def _cfg(*overrides: str):
    return load_config(overrides=["pipeline.distributed=pytorchjob", *overrides])   # defaults = docs/method.md 8


@pytest.mark.parametrize("nodes,gpus", [(1, 8), (4, 8), (2, 0)])
def test_launcher_pytorchjob_validates_and_follows_the_config(nodes, gpus):
    cfg = checks.overlay_config("multi-user", "pipeline.distributed=pytorchjob", f"pipeline.num_nodes={nodes}",
                                f"pipeline.gpus={gpus}", "pipeline.queue_name=team-gpu", "pipeline.priority_class=train")
    job = lo.build_job(cfg, "rglcd-train-1", ("--resume=auto",), {"a": "b"})
    for version in checks.TARGET_VERSIONS:
        assert checks.validate(job, version) == []
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert sum(s["replicas"] for s in specs.values()) == nodes and specs["Master"]["replicas"] == 1
    run_policy = job["spec"]["runPolicy"]
    assert job["spec"]["nprocPerNode"] == str(max(gpus, 1)) and run_policy["backoffLimit"] == 3
    assert run_policy["activeDeadlineSeconds"] == cfg.pipeline.train_timeout
    assert run_policy["cleanPodPolicy"] == "Running"        # a failed job's still-running ranks free their GPUs
    assert run_policy["schedulingPolicy"] == {"minAvailable": nodes, "priorityClass": "train"}   # gang
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpu"
    for _, t in checks.pod_templates(job):
        assert checks.gpus_requested(t) == gpus
        assert t["metadata"]["annotations"] == {"a": "b"}
        assert all(any(checks.tolerates(x, taint) for x in t["spec"]["tolerations"])
                   for taint in checks.pool_taints(cfg))
        assert t["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert t["spec"]["priorityClassName"] == "train"
        res = checks.containers(t)[0]["resources"]
        assert res["requests"] == {"cpu": "32", "memory": "256Gi"} and res["limits"]["memory"] == "256Gi"
        (c,) = checks.containers(t)
        assert c["command"][:3] == ["torchrun", "--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)"]
        assert c["command"][-4:] == ["train", "--config", "/etc/rglcd/config.yaml", "--resume=auto"]
        s3 = [e for e in c["env"] if "valueFrom" in e]
        assert [e["name"] for e in s3] == list(podspec.S3_KEYS)
        assert {e["valueFrom"]["secretKeyRef"]["name"] for e in s3} == {"rglcd-s3"}
        assert [e["valueFrom"]["secretKeyRef"]["optional"] for e in s3] == [False, False, True, True, True]


def test_launcher_trainjob_validates_against_its_crd():
    cfg = _cfg("pipeline.distributed=trainjob", "pipeline.num_nodes=3", "pipeline.gpus=4",
               "pipeline.node_selector={cloud.google.com/gke-accelerator: nvidia-h100-80gb}")
    job = lo.build_job(cfg, "rglcd-tj")
    assert checks.validate(job, "1.30.0") == []
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 4)
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "32", "memory": "256Gi"},
                                           "limits": {"memory": "256Gi", "nvidia.com/gpu": "4"}}
    assert job["spec"]["activeDeadlineSeconds"] == cfg.pipeline.train_timeout
    assert [e["name"] for e in trainer["env"] if "valueFrom" in e] == list(podspec.S3_KEYS)   # the same key list
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
    cm = lo.build_config_map(cfg, "rglcd-x")
    assert checks.validate(cm, "1.30.0") == []
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    back = load_config(path=path)
    assert back.train.max_steps == 77 and back.pipeline.num_nodes == 2
    assert back.train.output_dir == "/checkpoints/rglcd-x" and back.model.cache_dir == "/cache/rglcd"
    assert cfg.train.output_dir == "runs/latest", "the caller's config is not modified"


def test_launcher_refuses_bad_input_at_the_edge():
    with pytest.raises(lo.LaunchError, match="job name 'Bad_Name'"):
        lo.build_job(_cfg(), "Bad_Name")
    with pytest.raises(lo.LaunchError, match="at most 45"):
        lo.build_job(_cfg(), "a" * 46)
    with pytest.raises(lo.LaunchError, match="pipeline.distributed: 'none' launches no job"):
        lo.build_job(_cfg("pipeline.distributed=none"), "ok")


def test_launcher_dry_run_prints_the_objects():
    out = subprocess.run([sys.executable, "-m", "components.launcher", "--name", "rglcd-dry", "--dry-run",
                          "--set", "pipeline.distributed=pytorchjob", "--set", "pipeline.num_nodes=2"],
                         capture_output=True, text=True, cwd=checks.REPO, check=True)
    docs = list(yaml.safe_load_all(out.stdout))
    assert [d["kind"] for d in docs] == ["PyTorchJob", "ConfigMap"]
    assert docs[0]["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    bad = subprocess.run([sys.executable, "-m", "components.launcher", "--name", "x", "--dry-run"],
                         capture_output=True, text=True, cwd=checks.REPO)
    assert bad.returncode == 1 and "pipeline.distributed: 'none'" in bad.stderr


@pytest.mark.parametrize("ci", ["false", "true"])
def test_cluster_tier_without_binaries_names_make_k8s_bins(tmp_path, ci):
    """No control-plane binaries: the cluster tests skip (developer) or fail (CI=true), naming the fix."""
    env = {**os.environ, "RGLCD_K8S_BIN": str(tmp_path / "none"), "CI": ci}
    out = subprocess.run([sys.executable, "-m", "pytest", "tests/test_cluster.py", "-q", "-rsE", "--noconftest",
                          "-p", "no:cacheprovider", "-k", "pvcs_bind or enforced_on_real"], cwd=checks.REPO, env=env,
                         capture_output=True, text=True)
    assert "make k8s-bins" in out.stdout
    if ci == "true":
        assert out.returncode == 1 and " error" in out.stdout
    else:
        assert out.returncode == 0 and "2 skipped" in out.stdout


def test_launcher_reads_job_conditions_and_explains_scheduler_messages():
    done = {"status": {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "False"},
                                      {"type": "Succeeded", "status": "True"}]}}
    assert la.job_state(lo.PYTORCHJOB, done) == "Succeeded"
    assert la.job_state(lo.TRAINJOB, {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == "Complete"
    assert la.job_state(lo.PYTORCHJOB, {"status": {"conditions": [{"type": "Failed", "status": "False"}]}}) is None
    assert la.job_state(lo.PYTORCHJOB, {}) is None
    cfg = _cfg("pipeline.gpus=9", "pipeline.node_selector={pool: a100}")
    err = la._unschedulable_error(cfg, {"j-worker-0": "0/3 nodes are available: 1 Insufficient cpu, "
                                                      "2 node(s) didn't match node selector."}, 612.4)
    assert str(err) == ("training pods unschedulable for 612 s: j-worker-0: 0/3 nodes are available: "
                        "1 Insufficient cpu, 2 node(s) didn't match node selector. -> no node matches "
                        "pipeline.node_selector {'pool': 'a100'}")
    err = la._unschedulable_error(cfg, {"j-master-0": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}, 0)
    assert str(err).endswith("-> no node of the pool has 9 free nvidia.com/gpu (pipeline.gpus) - lower it, or add nodes")
