"""Shared fixtures: offline hub, tiny teachers built once per session, tiny-random configs."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"          # a hub call must fail fast, never hang (docs/architecture.md 7.5)
# Every command without --preset (in this process, CLI subprocesses, kfp.local steps) runs on the random-init
# test preset, not on `tiny`, the toy world that takes minutes to build (docs/operations.md 4.8).
os.environ["RGLCD_PRESET"] = "tiny-random"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# OpenMP threads spin while waiting by default; with subprocesses (kfp.local, 2-process DDP) sharing
# 2 cores that made torch 15-25x slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Real local servers (moto S3, MLflow), one per test session, for every module that asks for them.
pytest_plugins = ["servers"]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> str:
    """One model cache for the whole session, so each tiny teacher is built once."""
    return str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(scope="session")
def tiny_teacher_dir(model_cache):
    """Factory: prediction type -> directory of a saved tiny teacher (diffusers layout)."""
    from rglcd.models.sources import resolve_tiny

    return lambda prediction_type="epsilon": resolve_tiny(f"tiny:{prediction_type}", model_cache)


@pytest.fixture
def tiny_cfg(model_cache, tmp_path):
    """Factory: the tiny-random preset with the session cache and a per-test output dir, plus overrides."""
    from rglcd.config import load_config

    def make(*overrides: str):
        base = [f"model.cache_dir={model_cache}", f"train.output_dir={tmp_path / 'run'}",
                f"storage.remote={tmp_path / 'remote'}", f"storage.cache_dir={tmp_path / 'dvc-cache'}",
                f"registry.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                "registry.track_training=false"]   # tests of tracking turn it on (and use the mlflow_db fixture)
        return load_config("tiny-random", overrides=base + list(overrides))
    return make


@pytest.fixture(scope="session")
def tiny_student_dir(model_cache, tmp_path_factory):
    """A tiny exported LCM student (random guidance projection, perturbed weights), built once per session."""
    from rglcd.export import export_student
    from rglcd.models import load_teacher, make_student

    teacher = load_teacher("tiny:epsilon", model_cache)
    torch.manual_seed(1)
    student = make_student(teacher.unet, 256)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return export_student(student.eval(), teacher, tmp_path_factory.mktemp("student") / "student",
                          teacher_ref="tiny:epsilon")
