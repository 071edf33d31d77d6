"""Contrastive pretraining of the LRM on (latent, caption) pairs (docs/method.md 4.2).

Symmetric InfoNCE (open_clip's `ClipLoss`) between L2-normalised latent and text features scaled by
exp(logit_scale), clamped to <= ln 100 after every step, as open_clip's training. Optimiser: open_clip's
training defaults for ViTs (AdamW, betas (0.9, 0.98), eps 1e-6, weight decay 0.2 on matrices only),
constant lr cfg.lrm.pretrain_lr; everything used is recorded in the checkpoint's lrm_config.json.

Batches are (x, captions) tuples or `rglcd.data` batch dicts, with x one of: unscaled latents
(B, 4, h, w), VAE posterior moments (B, 8, h, w) (sampled), or images in [-1, 1] (B, 3, H, W),
encoded with the teacher's VAE (`latent_dist.sample()`, unscaled).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable

import torch

from rglcd.lrm.model import LatentRewardModel, latent_size_for, new_lrm, save_lrm
from rglcd.models import vae_scale_factor

log = logging.getLogger(__name__)
BETAS, EPS, WEIGHT_DECAY = (0.9, 0.98), 1e-6, 0.2
MAX_LOGIT_SCALE = math.log(100.0)
BATCH_KEYS = ("latents", "latent_moments", "pixel_values")


def load_vae(ref: str, cache_dir: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Only the teacher's VAE (not its UNet), frozen."""
    from diffusers import AutoencoderKL

    from rglcd.models.sources import resolve

    path = resolve(ref, cache_dir, allow_patterns=["vae/*.json", "vae/*.safetensors"])
    if not (path / "vae").is_dir():
        raise FileNotFoundError(f"{ref}: no vae/ folder (a diffusers Stable Diffusion directory is expected)")
    vae = AutoencoderKL.from_pretrained(str(path), subfolder="vae", torch_dtype=dtype)
    return vae.requires_grad_(False).eval().to(device)


def split_batch(batch: Any) -> tuple[torch.Tensor, list[str]]:
    """(x, captions) from a tuple or an `rglcd.data` batch dict; empty captions are refused."""
    if isinstance(batch, dict):
        keys = [k for k in BATCH_KEYS if k in batch]
        if len(keys) != 1:
            raise ValueError(f"batch must hold exactly one of {', '.join(BATCH_KEYS)}; got keys {sorted(batch)}")
        x, captions = batch[keys[0]], list(batch["captions"])
    else:
        x, captions = batch
        captions = list(captions)
    empty = [i for i, c in enumerate(captions) if not c or not c.strip()]
    if empty:
        where = batch["index"][empty[0]].item() if isinstance(batch, dict) and "index" in batch else empty[0]
        raise ValueError(f"example {where} has an empty caption; captions are required for contrastive pretraining")
    if x.ndim != 4 or x.shape[0] != len(captions):
        raise ValueError(f"batch of shape {tuple(x.shape)} with {len(captions)} captions: "
                         "need (B, C, H, W) and B captions")
    return x, captions


@torch.no_grad()
def to_latents(x: torch.Tensor, vae, latent_size: int, chunk: int = 32) -> torch.Tensor:
    """Unscaled latents (B, 4, s, s) from latents, VAE moments or images in [-1, 1] (s = latent_size)."""
    px = latent_size * vae_scale_factor(vae)
    if x.shape[1] == 3:
        if tuple(x.shape[-2:]) != (px, px):
            raise ValueError(f"images of shape {tuple(x.shape)}: need {px}x{px} px (model.resolution)")
        x = torch.cat([vae.encode(part.to(vae.device, vae.dtype)).latent_dist.sample() for part in x.split(chunk)])
    elif x.shape[1] == 8:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
        x = DiagonalGaussianDistribution(x.float()).sample()
    elif x.shape[1] != 4:
        raise ValueError(f"batch of shape {tuple(x.shape)}: need images (B, 3, H, W), VAE moments (B, 8, h, w) "
                         "or latents (B, 4, h, w)")
    if tuple(x.shape[-2:]) != (latent_size, latent_size):
        raise ValueError(f"latents of shape {tuple(x.shape)}: need {latent_size}x{latent_size} ({px} px images)")
    return x.float()


def make_pretrain_optimizer(lrm: LatentRewardModel, lr: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not gains, biases, embeddings' 1-d params, logit_scale)."""
    lrm.requires_grad_(True)
    decay = [p for p in lrm.parameters() if p.ndim >= 2]
    no_decay = [p for p in lrm.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=EPS)


def contrastive_step(lrm: LatentRewardModel, optimizer: torch.optim.Optimizer, latents: torch.Tensor,
                     captions: list[str], loss_fn: torch.nn.Module) -> float:
    """One symmetric InfoNCE step on (B, 4, h, w) latents and B captions; returns the loss."""
    m = lrm.model
    img = m.encode_image(latents.to(lrm.device, lrm.dtype), normalize=True)                 # (B, D)
    txt = m.encode_text(lrm.tokenizer(captions).to(lrm.device), normalize=True)             # (B, D)
    loss = loss_fn(img, txt, m.logit_scale.exp())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        m.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss.item()


def _batches(batches: Iterable, steps: int):
    """Up to `steps` batches; a re-iterable (list, DataLoader) is repeated, a one-pass iterator is not."""
    done = 0
    while done < steps:
        seen = 0
        for batch in batches:
            yield batch
            seen, done = seen + 1, done + 1
            if done == steps:
                return
        if seen == 0 or iter(batches) is batches:
            return


def pretrain_lrm(cfg, batches: Iterable, out_dir: str | Path, *, vae=None,
                 device: str | torch.device | None = None) -> dict[str, Any]:
    """Contrastively pretrain a new LRM for cfg.lrm.pretrain_steps steps and save it to `out_dir`."""
    from open_clip import ClipLoss

    from rglcd.config import to_dict

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae = vae if vae is not None else load_vae(cfg.model.teacher, cfg.model.cache_dir, device)
    size = latent_size_for(cfg.model.resolution, vae_scale_factor(vae))
    torch.manual_seed(cfg.train.seed)
    meta = {"teacher": cfg.model.teacher, "resolution": cfg.model.resolution,
            "vae_scale_factor": vae_scale_factor(vae), "scaling_factor": vae.config.scaling_factor}
    lrm = new_lrm(cfg.lrm, size, meta).to(device)
    optimizer, loss_fn, losses = make_pretrain_optimizer(lrm, cfg.lrm.pretrain_lr), ClipLoss(), []
    for step, batch in enumerate(_batches(batches, cfg.lrm.pretrain_steps)):
        x, captions = split_batch(batch)
        losses.append(contrastive_step(lrm, optimizer, to_latents(x, vae, size), captions, loss_fn))
        if step % 10 == 0:
            log.info("pretrain-lrm step %d loss %.4f", step, losses[-1])
    if not losses:
        raise ValueError("pretrain-lrm: the data gave no batches")
    summary = {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1],
               "lr": cfg.lrm.pretrain_lr, "betas": list(BETAS), "eps": EPS, "weight_decay": WEIGHT_DECAY,
               "loss": "symmetric InfoNCE (open_clip ClipLoss)", "seed": cfg.train.seed}
    path = save_lrm(lrm, out_dir, extra={"pretrain": summary, "rglcd_config": to_dict(cfg)})
    return {**summary, "losses": losses, "out_dir": str(path)}


def pretrain_lrm_from_data(cfg, data: str | Path, out_dir: str | Path, *,
                           device: str | torch.device | None = None) -> dict[str, Any]:
    """`pretrain_lrm` on any source `rglcd.data.open_source` reads (an `rglcd prep` output, shards, a table,
    an image folder, builtin:photos), streamed as training streams it: cfg.lrm.pretrain_batch_size,
    model.resolution, train.seed, data.shuffle_buffer and data.num_workers. What `rglcd pretrain-lrm` and
    the pipeline's LRM step both run."""
    from rglcd.data import StreamSpec, make_loader, open_source

    spec = StreamSpec(batch_size=cfg.lrm.pretrain_batch_size, resolution=cfg.model.resolution, seed=cfg.train.seed,
                      shuffle_buffer=cfg.data.shuffle_buffer, max_pixels=cfg.data.max_image_pixels,
                      read_ahead=cfg.data.read_ahead)
    loader = make_loader(open_source(str(data), cfg.data.remote_images), spec, num_workers=cfg.data.num_workers)
    return pretrain_lrm(cfg, loader, out_dir, device=device)
