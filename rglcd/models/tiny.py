"""The tiny factory: a complete, small, random-init Stable Diffusion with no network (docs/architecture.md 2.2).

Same layout and classes as a real SD checkpoint (UNet2DConditionModel, AutoencoderKL, CLIPTextModel,
the real CLIP tokenizer, a DDIM scheduler with SD's scaled-linear betas), so everything that loads a
real teacher loads this one, and stock `StableDiffusionPipeline.from_pretrained(dir)` samples from it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from rglcd.models.tokenizer import CLIP_VOCAB_SIZE, write_clip_tokenizer

PREDICTION_TYPES = ("epsilon", "v_prediction")
TINY_RESOLUTION = 32  # px; the tiny VAE downsamples 2x, so latents are 16x16


def tiny_unet(cross_attention_dim: int = 32, time_cond_proj_dim: int | None = None, sample_size: int = 16):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=32, time_cond_proj_dim=time_cond_proj_dim)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=32, sample_size=TINY_RESOLUTION, scaling_factor=0.18215)


def tiny_text_encoder(hidden_size: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407))


def sd_scheduler(prediction_type: str = "epsilon"):
    """SD's DDIM scheduler: 1000 steps, scaled-linear betas 0.00085 -> 0.012."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1, prediction_type=prediction_type)


def build_tiny_pipeline(prediction_type: str = "epsilon", seed: int = 0, tokenizer_dir: str | Path | None = None):
    """A random-init tiny `StableDiffusionPipeline` (deterministic for a given seed)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type: {prediction_type!r} is not allowed; allowed: {', '.join(PREDICTION_TYPES)}")
    torch.manual_seed(seed)
    unet, vae, text_encoder = tiny_unet(), tiny_vae(), tiny_text_encoder()
    if tokenizer_dir is None:
        import tempfile
        tokenizer_dir = write_clip_tokenizer(tempfile.mkdtemp(prefix="rglcd-tok-"))
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=sd_scheduler(prediction_type), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def save_tiny_teacher(out_dir: str | Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Build the tiny teacher and save it in diffusers layout (safetensors) at `out_dir`."""
    out = Path(out_dir)
    pipe = build_tiny_pipeline(prediction_type, seed, tokenizer_dir=write_clip_tokenizer(out / "tokenizer"))
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out
