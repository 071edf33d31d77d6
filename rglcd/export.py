"""Export the student as a complete, stock diffusers pipeline directory (docs/method.md 5.4).

The directory holds the teacher's VAE, text encoder and tokenizer, the student UNet and an
`LCMScheduler` config derived from the teacher's scheduler, saved as a `LatentConsistencyModelPipeline`
in safetensors only, so `diffusers.DiffusionPipeline.from_pretrained(dir)` samples it with no rglcd code.
`rglcd.json` beside it records the config, library versions and provenance (self-describing artifact).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from rglcd.fsutil import replace_dir
from rglcd.provenance import provenance
from rglcd.safeio import read_mapping
from rglcd.sample import from_teacher, lcm_scheduler

MANIFEST = "rglcd.json"
FORMAT = "rglcd-student/1"


def load_student_unet(source: str | Path, teacher=None, time_cond_proj_dim: int = 256) -> torch.nn.Module:
    """Read a student UNet from a diffusers UNet dir, a dir with a `unet/` subfolder, or a .safetensors state dict.

    A bare state dict needs the `teacher` (its UNet config, plus `time_cond_proj_dim`) to build the model.
    """
    from diffusers import UNet2DConditionModel

    path = Path(source).expanduser()
    if (path / "config.json").is_file():
        return UNet2DConditionModel.from_pretrained(path)
    if (path / "unet" / "config.json").is_file():
        return UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    if path.is_file() and path.suffix == ".safetensors":
        return _from_state_dict(path, teacher, time_cond_proj_dim)
    raise FileNotFoundError(f"student {str(path)!r}: expected a diffusers UNet directory (config.json + "
                            "safetensors), a directory with a unet/ subfolder, or a .safetensors state dict")


def _from_state_dict(path: Path, teacher, time_cond_proj_dim: int) -> torch.nn.Module:
    from safetensors.torch import load_file

    from rglcd.models import make_student

    if teacher is None:
        raise ValueError(f"student {str(path)!r} is a bare state dict: the teacher is needed for the UNet config")
    unet = make_student(teacher.unet, time_cond_proj_dim)
    missing, unexpected = unet.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise ValueError(f"student {str(path)!r} does not fit the teacher's UNet + time_cond_proj_dim="
                         f"{time_cond_proj_dim}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return unet.requires_grad_(False).eval()


def _manifest(teacher, teacher_ref: str | None, cfg, device: torch.device) -> dict:
    """rglcd.json: the format, the teacher it was distilled from, and the provenance block (`rglcd.provenance`)."""
    return {"format": FORMAT, "pipeline": "LatentConsistencyModelPipeline", "teacher": teacher_ref,
            "teacher_path": str(teacher.path), "prediction_type": teacher.prediction_type,
            **provenance(cfg, device)}


def export_student(student: torch.nn.Module | str | Path, teacher, out_dir: str | Path, cfg=None,
                   teacher_ref: str | None = None, overwrite: bool = False) -> Path:
    """Write `out_dir` as a stock LatentConsistencyModelPipeline directory; return its path.

    student: the UNet module (unwrapped) or anything `load_student_unet` reads. teacher: a loaded
    `rglcd.models.Teacher`. cfg: the run's Config (recorded, and its DDIM grid size and timestep scaling
    set the LCMScheduler). Written to a temporary sibling and renamed, so a failure leaves no half directory.
    """
    from diffusers import LatentConsistencyModelPipeline

    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"export: {str(out)!r} already exists (pass overwrite=True / --overwrite)")
    dim = 256 if cfg is None else cfg.model.time_cond_proj_dim
    unet = student if isinstance(student, torch.nn.Module) else load_student_unet(student, teacher, dim)
    if unet.config.time_cond_proj_dim is None:
        raise ValueError("export: the student UNet has no time_cond_proj_dim (guidance embedding); is it the teacher?")
    grid, scaling = (None, None) if cfg is None else (cfg.distill.num_ddim_timesteps, cfg.distill.timestep_scaling)
    scheduler = lcm_scheduler(from_teacher(teacher).scheduler_config, grid, scaling)
    pipe = LatentConsistencyModelPipeline(vae=teacher.vae, text_encoder=teacher.text_encoder,
                                          tokenizer=teacher.tokenizer, unet=unet, scheduler=scheduler,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / MANIFEST).write_text(json.dumps(_manifest(teacher, teacher_ref, cfg, unet.device), indent=2,
                                                default=str))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(model_dir: str | Path) -> dict:
    """The `rglcd.json` of an exported directory."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: {str(model_dir)!r} is not an rglcd export")
    return read_mapping(path, "export manifest")
