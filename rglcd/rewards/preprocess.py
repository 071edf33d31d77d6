"""Differentiable reward-model preprocessing on image tensors (docs/method.md 3.2).

Input: images (B, 3, H, W) in [0, 1], any size. Output: (B, 3, S, S) normalised with the OpenAI CLIP
mean/std, S = the RM's input size (224). Two geometries, each the tensor twin of the RM's own PIL pipeline:

- `letterbox` (HPSv2's ResizeMaxSize): resize the longest side to S, zero-pad (before normalising)
  to a square, pad split as left/top = pad // 2.
- `shorter_crop` (open_clip, CLIPImageProcessor of PickScore, ImageReward's BLIP transform): resize the
  shorter side to S (longer side int(S * long / short), as torchvision computes it), center crop S x S.

Resize, crop and normalisation are torchvision's tensor functionals (`transforms.v2.functional`; on
float32 tensors: `F.interpolate`, slicing and plain arithmetic, all differentiable). Resizes are bicubic
(align_corners=False). `antialias=True` matches PIL's bicubic (Keys a = -0.5 with a widened support when
downsampling); `antialias=False` is the reference stack's behaviour
(torchvision < 0.17 on tensors: a = -0.75, no low-pass), which aliases 512 -> 224 downsamples.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ResizeMode = Literal["letterbox", "shorter_crop"]
RESIZE_MODES = ("letterbox", "shorter_crop")


def _resize(x: torch.Tensor, size: int | tuple[int, int], antialias: bool) -> torch.Tensor:
    """Bicubic resize to (h, w), or of the shorter side to an int `size` (a no-op when already that size)."""
    size = [size] if isinstance(size, int) else list(size)
    return TF.resize(x, size, interpolation=InterpolationMode.BICUBIC, antialias=antialias)


def letterbox(x: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """Longest side -> `size` (round(dim * scale) as hpsv2), then zero-pad to size x size."""
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    x = _resize(x, (new_h, new_w), antialias)           # (B, 3, new_h, new_w)
    pad_h, pad_w = size - new_h, size - new_w
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)


def shorter_side_center_crop(x: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """Shorter side -> `size` (longer: int(size * long / short)), then center crop size x size."""
    return TF.center_crop(_resize(x, size, antialias), [size, size])


def normalize(x: torch.Tensor, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> torch.Tensor:
    """(x - mean) / std per channel; float input."""
    return TF.normalize(x, list(mean), list(std))


def clip_preprocess(images: torch.Tensor, size: int, mode: ResizeMode, antialias: bool) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, size, size) float32, resized as `mode`, CLIP-normalised."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is not allowed; allowed: {', '.join(RESIZE_MODES)}")
    x = images.float()
    x = letterbox(x, size, antialias) if mode == "letterbox" else shorter_side_center_crop(x, size, antialias)
    return normalize(x)
