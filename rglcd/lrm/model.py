"""The latent reward model (LRM): a CLIP whose image tower reads VAE latents (docs/method.md 4.1).

Architecture (RG-LCD's `latent_ViT`, docs/method.md 4.1): a ViT over unscaled 4-channel latents
(patch 4, width 512, 12 layers, 8 heads for 64x64 latents) and a CLIP text tower (ViT-H-14's shape by
default), embed dim 1024; score = cosine, logits = score * exp(logit_scale). The config is registered
with open_clip's model registry and built by `open_clip.create_model`; the only change is the patch
embedding, re-made for 4 input channels (open_clip's VisionTransformer fixes 3). Positional embeddings
are sized from the latent resolution = model.resolution / vae_scale_factor (512 px -> 64, 768 px -> 96).

A checkpoint is a self-describing directory: `lrm_config.json` (open_clip config, latent size, the
teacher/VAE it reads, how it was trained) + `model.safetensors` (+ `optimizer.pt`, the LRM's own
fine-tuning optimizer state, when saved with one).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from rglcd.fsutil import replace_dir
from rglcd.rewards.base import RewardModel, freeze, params_frozen
from rglcd.rewards.openclip import create_model

LATENT_CHANNELS = 4
FORMAT, VERSION = "rglcd-lrm", 1
CONFIG_FILE, WEIGHTS_FILE, OPTIMIZER_FILE = "lrm_config.json", "model.safetensors", "optimizer.pt"
CONTEXT_LENGTH, VOCAB_SIZE = 77, 49408   # open_clip's CLIP BPE tokenizer


def latent_size_for(resolution: int, vae_scale_factor: int) -> int:
    """Latent side length the LRM reads for images of `resolution` px (512 / 8 = 64)."""
    if resolution % vae_scale_factor:
        raise ValueError(f"model.resolution: {resolution} is not a multiple of the VAE factor {vae_scale_factor}")
    return resolution // vae_scale_factor


def open_clip_config(lrm_cfg, latent_size: int) -> dict[str, Any]:
    """The open_clip model config of the LRM from `cfg.lrm` (an LRMConfig) and the latent side length."""
    c = lrm_cfg
    for field, width, heads in (("heads", c.width, c.heads), ("text_heads", c.text_width, c.text_heads)):
        if width % heads:
            raise ValueError(f"lrm.{field}: {heads} does not divide the width {width}; allowed: a divisor of it")
    if latent_size % c.patch_size:
        raise ValueError(f"lrm.patch_size: {c.patch_size} does not divide the latent size {latent_size}")
    return {
        "embed_dim": c.embed_dim,
        "vision_cfg": {"image_size": latent_size, "patch_size": c.patch_size, "width": c.width,
                       "layers": c.layers, "head_width": c.width // c.heads},
        "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": VOCAB_SIZE, "width": c.text_width,
                     "heads": c.text_heads, "layers": c.text_layers},
    }


def register_config(model_cfg: dict[str, Any]) -> str:
    """Register `model_cfg` with open_clip under a name derived from its content; returns the name."""
    digest = hashlib.sha1(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:10]
    name = f"rglcd-latent-vit-{digest}"
    open_clip.factory._MODEL_CONFIGS.setdefault(name, json.loads(json.dumps(model_cfg)))
    return name


def build_latent_clip(model_cfg: dict[str, Any]) -> nn.Module:
    """open_clip CLIP from the registered config, patch embedding re-made for 4-channel latents."""
    model = create_model(register_config(model_cfg))
    conv = model.visual.conv1
    model.visual.conv1 = nn.Conv2d(LATENT_CHANNELS, conv.out_channels, conv.kernel_size, conv.stride, bias=False)
    return model


class LatentRewardModel(RewardModel):
    """The LRM as a reward: `score(latents, prompts)` on unscaled VAE latents (B, 4, h, w)."""

    input_kind, name = "latent", "lrm"

    def __init__(self, model: nn.Module, meta: dict[str, Any]):
        super().__init__()
        self.model, self.meta = model, meta
        self.tokenizer = open_clip.get_tokenizer(meta["open_clip_name"])

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    @property
    def latent_size(self) -> int:
        return int(self.model.visual.image_size[0])

    def check_inputs(self, x: torch.Tensor, prompts: list[str]) -> None:
        super().check_inputs(x, prompts)
        if tuple(x.shape[-2:]) != (self.latent_size,) * 2:
            raise ValueError(f"lrm: expects latents of {self.latent_size}x{self.latent_size} (images of "
                             f"{self.meta.get('resolution')} px), got {tuple(x.shape)}; "
                             "pretrain an LRM for this resolution")

    def encode_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x.to(self.device, self.dtype))                 # (B, D)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))       # (N, D)

    def score(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B,) cosine; the graph reaches the latents only, never the LRM's (trainable) parameters."""
        with params_frozen(self):
            return self.similarity(x, prompts)

    def train_logits(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B,) cosine * exp(logit_scale) with gradients into every trainable LRM parameter (text included)."""
        return self.similarity(x, prompts, text_grad=True) * self.logit_scale.exp().float()


def new_lrm(lrm_cfg, latent_size: int, meta: dict[str, Any] | None = None) -> LatentRewardModel:
    """A randomly initialised LRM for latents of `latent_size` (seed the global RNG first for repeatability)."""
    model_cfg = open_clip_config(lrm_cfg, latent_size)
    info = {"open_clip_config": model_cfg, "open_clip_name": register_config(model_cfg),
            "latent_size": latent_size, "in_chans": LATENT_CHANNELS, **(meta or {})}
    return LatentRewardModel(build_latent_clip(model_cfg), info).eval()   # no dropout/BN: eval throughout


# ---------------------------------------------------------------- trainable parts (docs/method.md 4.3)

def unlock_for_finetune(lrm: LatentRewardModel, visual_blocks: int, text_blocks: int) -> list[str]:
    """Train only the last `visual_blocks` ViT blocks + ln_post + proj and the last `text_blocks` text
    blocks + ln_final + text_projection, and logit_scale. For n >= 1 this equals open_clip's
    lock_image_tower(n + 1) + lock_text_tower(n + 1). Returns the trainable parameter names."""
    m = lrm.model
    vis, txt = m.visual.transformer.resblocks, m.transformer.resblocks
    for field, n, blocks in (("unlocked_visual_blocks", visual_blocks, vis), ("unlocked_text_blocks", text_blocks, txt)):
        if not 0 <= n <= len(blocks):
            raise ValueError(f"lrm.{field}: {n} is out of range for this LRM; allowed: 0..{len(blocks)}")
    m.requires_grad_(False)
    for block in list(vis)[len(vis) - visual_blocks:] + list(txt)[len(txt) - text_blocks:]:
        block.requires_grad_(True)
    for part in (m.visual.ln_post, m.visual.proj, m.ln_final, m.text_projection, m.logit_scale):
        part.requires_grad_(True)
    return [n for n, p in lrm.named_parameters() if p.requires_grad]


# ---------------------------------------------------------------- checkpoints

def save_lrm(lrm: LatentRewardModel, out_dir: str | Path, optimizer: torch.optim.Optimizer | None = None,
             extra: dict[str, Any] | None = None) -> Path:
    """Write `lrm_config.json` + `model.safetensors` (+ the LRM's own optimizer state) atomically."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, **lrm.meta, **(extra or {})}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    save_file({k: v.detach().contiguous().cpu() for k, v in lrm.model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
    meta.pop("optimizer", None)  # a loaded checkpoint's entry: its optimizer.pt is not in this directory
    if optimizer is not None:
        names = [n for n, p in lrm.named_parameters() if p.requires_grad]
        if sum(len(g["params"]) for g in optimizer.param_groups) != len(names):
            raise ValueError("optimizer does not hold the LRM's trainable parameters (was it made by make_lrm_optimizer?)")
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        meta["optimizer"] = {"file": OPTIMIZER_FILE, "params": names}
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=str))
    replace_dir(tmp, out)
    return out


def read_lrm_config(path: str | Path) -> dict[str, Any]:
    cfg_file = Path(path) / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: not an LRM checkpoint ({CONFIG_FILE} missing; make one with `rglcd pretrain-lrm`)")
    meta = json.loads(cfg_file.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{cfg_file}: format {meta.get('format')!r} v{meta.get('version')} is not {FORMAT!r} v{VERSION}")
    return meta


def load_lrm(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             cache_dir: str = "~/.cache/rglcd") -> LatentRewardModel:
    """An LRM from a checkpoint directory (local or s3://), strictly loaded, in eval mode (not frozen)."""
    from safetensors.torch import load_file

    from rglcd.models.sources import checkpoint_dir

    folder = checkpoint_dir(path, cache_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"LRM checkpoint {str(path)!r}: no such directory (make one with `rglcd pretrain-lrm`)")
    meta = read_lrm_config(folder)
    meta["open_clip_name"] = register_config(meta["open_clip_config"])
    lrm = LatentRewardModel(build_latent_clip(meta["open_clip_config"]), meta)
    lrm.model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    return lrm.to(device=device, dtype=dtype).eval()


def load_lrm_optimizer(optimizer: torch.optim.Optimizer, lrm: LatentRewardModel, path: str | Path,
                       cache_dir: str = "~/.cache/rglcd") -> None:
    """Restore the LRM optimizer state saved by `save_lrm`, checking it is for the same parameters."""
    from rglcd.models.sources import checkpoint_dir

    path = checkpoint_dir(path, cache_dir)
    meta = read_lrm_config(path)
    saved = meta.get("optimizer")
    if saved is None:
        raise FileNotFoundError(f"{path}: saved without an optimizer state")
    names = [n for n, p in lrm.named_parameters() if p.requires_grad]
    if saved["params"] != names:
        raise ValueError(f"{path}: optimizer state is for other parameters ({len(saved['params'])} saved, "
                         f"{len(names)} trainable now); use the same lrm.unlocked_* settings")
    optimizer.load_state_dict(torch.load(path / saved["file"], map_location="cpu", weights_only=True))


def load_lrm_reward(weights: str | None = None, *, antialias: bool = False, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, cache_dir: str = "~/.cache/rglcd") -> LatentRewardModel:
    """Registry factory for `load_reward("lrm", weights=DIR)`: a frozen LRM (antialias does not apply)."""
    if not weights:
        raise FileNotFoundError("reward 'lrm' needs a checkpoint directory (lrm.checkpoint); make one with `rglcd pretrain-lrm`")
    return freeze(load_lrm(weights, device=device, dtype=dtype, cache_dir=cache_dir))
