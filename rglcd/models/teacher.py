"""Load a frozen Stable Diffusion teacher (docs/method.md 1.1) from any reference `rglcd.models.sources` resolves."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rglcd.models.sources import ModelSourceError, resolve
from rglcd.models.tokenizer import check_tokenizer

_SD_FILES = ["model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/*.json", "text_encoder/*.safetensors",
             "unet/*.json", "unet/diffusion_pytorch_model.safetensors", "vae/*.json",
             "vae/diffusion_pytorch_model.safetensors"]


def vae_scale_factor(vae: torch.nn.Module) -> int:
    """Pixels per latent along each side: 2 ** (number of VAE blocks - 1), 8 for Stable Diffusion."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@dataclass
class Teacher:
    """The frozen parts of a Stable Diffusion checkpoint, as rglcd uses them."""
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    noise_scheduler: object      # DDPMScheduler with the teacher's betas
    prediction_type: str         # "epsilon" | "v_prediction" | "sample"
    path: Path                   # local diffusers directory it came from

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae)


def _check_layout(path: Path) -> None:
    missing = [p for p in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")
               if not (path / p).exists()]
    if missing:
        raise ModelSourceError(f"{path} is not a diffusers Stable Diffusion directory: missing {', '.join(missing)}")


def load_teacher(ref: str, cache_dir: str = "~/.cache/rglcd", revision: str | None = None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Teacher:
    """Load and freeze the teacher's UNet, VAE and text encoder; the DDPM schedule comes from its scheduler config."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = resolve(ref, cache_dir, revision, allow_patterns=_SD_FILES)
    _check_layout(path)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    check_tokenizer(tokenizer, str(path / "tokenizer"))
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    parts = {
        "unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype),
        "vae": AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype),
        "text_encoder": CLIPTextModel.from_pretrained(path / "text_encoder", torch_dtype=dtype),
    }
    for module in parts.values():
        module.requires_grad_(False).eval().to(device)
    return Teacher(**parts, tokenizer=tokenizer, noise_scheduler=scheduler,
                   prediction_type=scheduler.config.prediction_type, path=path)
