"""Sampling: the student's LCM multi-step sampler and the teacher's DDIM with CFG (docs/method.md 5).

Both are plain functions with one signature, `fn(model, prompts, num_steps, guidance, generator) ->
SampleOutput`, and include text encoding, the UNet steps and the VAE decode (the latency benchmark times
them whole). They use diffusers' `LCMScheduler` / `DDIMScheduler` built from the model's scheduler
config and draw noise exactly as the stock pipelines do, so a seed gives the same images here and in
`LatentConsistencyModelPipeline` / `StableDiffusionPipeline`.

`prepare_sampling(model, mode)` is the one switch for compiled execution (config `eval.compile`, used by
`rglcd sample`, evaluation and its latency report): channels-last UNet and VAE, `torch.compile` of the
UNet (with CUDA graphs under mode "reduce-overhead"), of the VAE decoder and of the text encoder, and
reuse of the empty-prompt embedding CFG needs. The samplers keep the scheduler's timesteps on the CPU
so that no step reads a device value back to the host.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from rglcd import solver
from rglcd.models import vae_scale_factor


@dataclass
class SamplingModel:
    """What sampling needs from a Stable Diffusion directory (teacher or exported student)."""
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict       # the directory's scheduler config as saved (any SD scheduler class)
    path: Path | None = None
    compile_mode: str = "none"   # what `prepare_sampling` applied ("none": eager)
    embedding_cache: dict = field(default_factory=dict)  # prompt -> (1, 77, D) embedding reused across calls

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae)

    @property
    def is_lcm(self) -> bool:
        """True when the UNet takes a guidance embedding (`time_cond_proj_dim`), i.e. it is an LCM student."""
        return self.unet.config.time_cond_proj_dim is not None


@dataclass
class SampleOutput:
    images: torch.Tensor     # (B, 3, H, W) in [0, 1], float32
    latents: torch.Tensor    # (B, 4, h, w) final scaled latents (what the VAE decodes, times scaling_factor)
    timesteps: list[int]     # the UNet evaluation timesteps, in order


# ---------------------------------------------------------------- loading

def _scheduler_config(path: Path) -> dict:
    """The raw scheduler config of a diffusers directory (keys of every scheduler class kept)."""
    file = Path(path) / "scheduler" / "scheduler_config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{str(file)!r} not found: {str(path)!r} is not a diffusers pipeline directory")
    return json.loads(file.read_text())


def from_teacher(teacher, unet: torch.nn.Module | None = None) -> SamplingModel:
    """A SamplingModel from a loaded `rglcd.models.Teacher`, optionally with a student UNet in its place."""
    saved = teacher.path is not None and (Path(teacher.path) / "scheduler" / "scheduler_config.json").is_file()
    config = _scheduler_config(teacher.path) if saved else dict(teacher.noise_scheduler.config)  # in-memory teacher
    return SamplingModel(unet=teacher.unet if unet is None else unet, vae=teacher.vae,
                         text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer,
                         scheduler_config=config, path=teacher.path)


def load_sampling_model(ref: str, cache_dir: str = "~/.cache/rglcd", device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> SamplingModel:
    """Load an exported student directory or any teacher reference (path, tiny:<type>, s3://, hub id)."""
    from rglcd.models import load_teacher

    return from_teacher(load_teacher(ref, cache_dir, dtype=dtype, device=device))


# ---------------------------------------------------------------- shared pieces

def encode_prompts(tokenizer, text_encoder: torch.nn.Module, prompts: list[str]) -> torch.Tensor:
    """Prompts -> CLIP hidden states (B, 77, D), padded to max_length as StableDiffusionPipeline.encode_prompt does."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    device = next(text_encoder.parameters()).device
    mask = ids.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    return text_encoder(ids.input_ids.to(device), attention_mask=mask)[0]


def empty_prompt_embedding(model: SamplingModel, batch: int) -> torch.Tensor:
    """The empty prompt's CLIP hidden states (B, 77, D) for CFG's unconditional pass, encoded once per model."""
    if "" not in model.embedding_cache:
        model.embedding_cache[""] = encode_prompts(model.tokenizer, model.text_encoder, [""]).clone()
    return model.embedding_cache[""].expand(batch, -1, -1)


def decode_unscaled(vae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Unscaled latents (B, 4, h, w) -> images in [0, 1] (B, 3, H, W), float32 (graph kept, if any)."""
    images = vae.decode(x.to(vae.dtype)).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, 4, h, w) -> images in [0, 1] (B, 3, H, W), float32."""
    return decode_unscaled(vae, latents / vae.config.scaling_factor)


def lcm_scheduler(scheduler_config: dict, original_inference_steps: int | None = None,
                  timestep_scaling: float | None = None):
    """diffusers' `LCMScheduler` from any SD scheduler config (docs/method.md 5.1).

    From a teacher's config (PNDM/DDIM/DDPM) it sets what the training assumed: no x0 clipping or
    thresholding, the DDIM grid size (default 50) and the timestep scaling (default 10). An exported
    student's LCMScheduler config is taken as saved, with only the given arguments overriding it.
    """
    from diffusers import LCMScheduler

    overrides = {k: v for k, v in (("original_inference_steps", original_inference_steps),
                                   ("timestep_scaling", timestep_scaling)) if v is not None}
    if scheduler_config.get("_class_name") != "LCMScheduler":
        overrides = {"original_inference_steps": 50, "timestep_scaling": 10.0, "clip_sample": False,
                     "thresholding": False, **overrides}
    return LCMScheduler.from_config(scheduler_config, **overrides)


def _initial_latents(model: SamplingModel, batch: int, height: int | None, width: int | None,
                     dtype: torch.dtype, generator) -> torch.Tensor:
    """Gaussian latents (B, C, H/f, W/f) drawn as the stock pipelines' `prepare_latents` draws them."""
    from diffusers.utils.torch_utils import randn_tensor

    f = model.vae_scale_factor
    height = height or model.unet.config.sample_size * f
    width = width or model.unet.config.sample_size * f
    if height % f or width % f:
        raise ValueError(f"height/width {height}x{width} must be multiples of the VAE factor {f}")
    shape = (batch, model.unet.config.in_channels, height // f, width // f)
    return randn_tensor(shape, generator=generator, device=model.unet.device, dtype=dtype)


# ---------------------------------------------------------------- compiled execution

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs")


def resolve_compile_mode(mode: str, device: torch.device) -> str:
    """'auto' -> 'reduce-overhead' (torch.compile with CUDA graphs) on CUDA, 'none' (eager) elsewhere."""
    if mode == "auto":
        return "reduce-overhead" if torch.device(device).type == "cuda" else "none"
    if mode not in COMPILE_MODES:
        raise ValueError(f"eval.compile: {mode!r} is not allowed; allowed: auto, {', '.join(COMPILE_MODES)}")
    return mode


def _compile_once(module: torch.nn.Module, mode: str) -> None:
    """`nn.Module.compile` in place (state_dict keys unchanged); a module shared by two models compiles once."""
    if getattr(module, "_compiled_call_impl", None) is None:
        module.compile(mode=mode, dynamic=False)


def prepare_sampling(model: SamplingModel, mode: str = "auto") -> SamplingModel:
    """The model set up for fast sampling under `mode` (`eval.compile`); 'none' gives it back unchanged.

    UNet and VAE go channels-last; the UNet is compiled with `mode` (CUDA graphs under 'reduce-overhead':
    its inputs have static shapes per batch size); the VAE decoder and the text encoder are compiled
    without CUDA graphs (one large call each, and the text embedding lives across all UNet calls, which a
    graph replay would overwrite). Same weights: outputs equal eager ones within float tolerance.
    """
    mode = resolve_compile_mode(mode, model.unet.device)
    if mode == "none":
        return model
    plain = "default" if mode == "reduce-overhead" else mode
    for module in (model.unet, model.vae):
        module.to(memory_format=torch.channels_last)
    _compile_once(model.unet, mode)
    _compile_once(model.vae.decoder, plain)
    _compile_once(model.text_encoder, plain)
    return replace(model, compile_mode=mode, embedding_cache={})


def _unet_call(model: SamplingModel):
    """The UNet, preceded by a CUDA-graph step mark when compiled with graphs (its last output is consumed)."""
    if model.compile_mode != "reduce-overhead":
        return model.unet

    def call(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return model.unet(*args, **kwargs)
    return call


# ---------------------------------------------------------------- samplers

@torch.no_grad()
def lcm_sample(model: SamplingModel, prompts: list[str], num_steps: int = 4, guidance: float = 7.5,
               generator: torch.Generator | list[torch.Generator] | None = None, height: int | None = None,
               width: int | None = None, original_inference_steps: int | None = None,
               timestep_scaling: float | None = None) -> SampleOutput:
    """LCM multi-step sampling (LCM paper Algorithm 3; docs/method.md 5.1): no CFG pass, w = guidance - 1 embedded.

    Each step: denoised = c_out x0_hat + c_skip x_t, then fresh noise to the next timestep
    (`LCMScheduler.step`); 4 steps run at [999, 759, 499, 259].
    """
    if not model.is_lcm:
        raise ValueError("this UNet has no guidance embedding (time_cond_proj_dim is None): it is not an LCM "
                         "student; sample it with the teacher's DDIM sampler instead")
    scheduler = lcm_scheduler(model.scheduler_config, original_inference_steps, timestep_scaling)
    scheduler.set_timesteps(num_steps, device="cpu")  # the scheduler's table lookups stay on the host
    device, unet = model.unet.device, _unet_call(model)
    text = encode_prompts(model.tokenizer, model.text_encoder, prompts)  # (B, 77, D)
    latents = _initial_latents(model, len(prompts), height, width, text.dtype, generator) * scheduler.init_noise_sigma
    w = torch.tensor(guidance - 1.0).repeat(len(prompts))  # (B,)
    w_emb = solver.guidance_embedding(w, model.unet.config.time_cond_proj_dim).to(latents.device, latents.dtype)
    denoised = latents
    for t, t_dev in zip(scheduler.timesteps, scheduler.timesteps.to(device)):
        latents = latents.to(text.dtype)
        out = unet(latents, t_dev, timestep_cond=w_emb, encoder_hidden_states=text).sample
        latents, denoised = scheduler.step(out, t, latents, generator=generator, return_dict=False)
    return SampleOutput(decode_latents(model.vae, denoised.to(text.dtype)), denoised.float(),
                        [int(t) for t in scheduler.timesteps])


@torch.no_grad()
def ddim_sample(model: SamplingModel, prompts: list[str], num_steps: int = 50, guidance: float = 7.5,
                generator: torch.Generator | list[torch.Generator] | None = None, height: int | None = None,
                width: int | None = None) -> SampleOutput:
    """The teacher baseline: DDIM (eta 0) with classifier-free guidance u + g (c - u) (docs/method.md 5.3).

    The uncond and cond passes share one forward over the doubled batch, as in StableDiffusionPipeline.
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(num_steps, device="cpu")  # the scheduler's table lookups stay on the host
    device, unet = model.unet.device, _unet_call(model)
    text = encode_prompts(model.tokenizer, model.text_encoder, list(prompts))
    embeds = torch.cat([empty_prompt_embedding(model, len(prompts)).to(text.dtype), text])  # (2B, 77, D)
    latents = _initial_latents(model, len(prompts), height, width, embeds.dtype, generator) * scheduler.init_noise_sigma
    for t, t_dev in zip(scheduler.timesteps, scheduler.timesteps.to(device)):
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        uncond, cond = unet(x, t_dev, encoder_hidden_states=embeds).sample.chunk(2)
        latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents, eta=0.0,
                                 generator=generator).prev_sample
    return SampleOutput(decode_latents(model.vae, latents), latents.float(), [int(t) for t in scheduler.timesteps])


# ---------------------------------------------------------------- files

def to_pil(images: torch.Tensor) -> list:
    """(B, 3, H, W) in [0, 1] -> PIL images, by diffusers' `numpy_to_pil` (x * 255, rounded)."""
    from diffusers.utils import numpy_to_pil

    return numpy_to_pil(images.detach().cpu().permute(0, 2, 3, 1).numpy())


def save_grid(images: torch.Tensor, path: str | Path, ncols: int) -> Path:
    """Save images (N, 3, H, W) in [0, 1] as one PNG grid with `ncols` columns (row-major)."""
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().cpu(), nrow=ncols, padding=2, pad_value=1.0)  # (3, H', W')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(grid[None])[0].save(path)
    return path
