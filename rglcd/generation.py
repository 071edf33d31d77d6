"""Image requests and their batched generation: the core of the pyfunc model and `rglcd serve`.

docs/serving.md 3.

One `ImageRequest` is one image: a prompt, LCM steps, guidance scale, seed and size. Its noise comes from
its own `torch.Generator` seeded with `seed`, so an image does not depend on what it was batched with, and a
request equals `rglcd sample --prompt P --seed S --steps N --guidance G` for one prompt. `generate` groups
requests that share steps, guidance and size into one call of `rglcd.sample.lcm_sample` (the public
sampler: its fast path, when configured, reaches serving unchanged).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Iterable

import torch

from rglcd.sample import SamplingModel, lcm_sample, to_pil

SIZE_MULTIPLE = 8


class BadRequest(ValueError):
    """A request the server refuses (HTTP 400); the message names the field, the value and what is allowed."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (from `serve.*`)."""
    max_steps: int = 8
    max_size: int = 1024
    max_images: int = 8
    default_steps: int = 4
    default_guidance: float = 7.5

    @classmethod
    def from_config(cls, cfg: Any) -> Limits:
        s = cfg.serve
        return cls(s.max_steps, s.max_size, s.max_images, s.default_steps, cfg.eval.guidance)


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    steps: int
    guidance: float
    seed: int
    height: int
    width: int

    @property
    def group(self) -> tuple[int, float, int, int]:
        """Requests with the same group run in one sampler call."""
        return self.steps, self.guidance, self.height, self.width


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{name}: {value!r} is not a finite number")
    return float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or int(value) != value:
        raise BadRequest(f"{name}: {value!r} is not an integer")
    return int(value)


def _in_range(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise BadRequest(f"{name}: {value} is out of range; allowed: {low}..{high}")
    return value


def _size(name: str, value: Any, limits: Limits) -> int:
    size = _in_range(name, _integer(name, value), SIZE_MULTIPLE, limits.max_size)
    if size % SIZE_MULTIPLE:
        raise BadRequest(f"{name}: {size} is not a multiple of {SIZE_MULTIPLE}; allowed: multiples of "
                         f"{SIZE_MULTIPLE} up to {limits.max_size}")
    return size


def parse_request(fields: dict[str, Any], limits: Limits, default_size: int) -> list[ImageRequest]:
    """One request's fields -> its images (`num_images` of them, seeds seed, seed+1, ...); raises BadRequest.

    fields: prompt (required, non-empty), steps, guidance, seed, height, width, num_images.
    """
    known = {"prompt", "steps", "guidance", "seed", "height", "width", "num_images"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; allowed: {sorted(known)}")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest(f"prompt: {prompt!r} is not allowed; allowed: a non-empty string")
    steps = _in_range("steps", _integer("steps", fields.get("steps", limits.default_steps)), 1, limits.max_steps)
    guidance = _number("guidance", fields.get("guidance", limits.default_guidance))
    if guidance < 1.0:
        raise BadRequest(f"guidance: {guidance} is below 1; allowed: >= 1 (embedded as w = guidance - 1)")
    seed = _in_range("seed", _integer("seed", fields.get("seed", 0)), 0, 2**63 - 1 - limits.max_images)
    height = _size("height", fields.get("height", default_size), limits)
    width = _size("width", fields.get("width", default_size), limits)
    count = _in_range("num_images", _integer("num_images", fields.get("num_images", 1)), 1, limits.max_images)
    return [ImageRequest(prompt, steps, guidance, seed + i, height, width) for i in range(count)]


def check_total(requests: list[ImageRequest], limits: Limits) -> None:
    """A whole call (several instances) may ask for at most `limits.max_images` images."""
    if len(requests) > limits.max_images:
        raise BadRequest(f"{len(requests)} images requested in one call; allowed: at most {limits.max_images}")


def default_size(model: SamplingModel) -> int:
    """The model's native size in px (the UNet's sample size times the VAE factor)."""
    return model.unet.config.sample_size * model.vae_scale_factor


def _run_group(model: SamplingModel, group: list[ImageRequest]) -> torch.Tensor:
    first = group[0]
    generators = [torch.Generator("cpu").manual_seed(r.seed) for r in group]
    out = lcm_sample(model, [r.prompt for r in group], first.steps, first.guidance, generators,
                     height=first.height, width=first.width)
    return out.images                                          # (B, 3, H, W) in [0, 1]


def generate(model: SamplingModel, requests: Iterable[ImageRequest]) -> list[torch.Tensor]:
    """Images (3, H, W) in [0, 1], one per request and in request order; one sampler call per group."""
    requests = list(requests)
    order = sorted(range(len(requests)), key=lambda i: requests[i].group)
    images: list[torch.Tensor | None] = [None] * len(requests)
    for _, members in groupby(order, key=lambda i: requests[i].group):
        members = list(members)
        batch = _run_group(model, [requests[i] for i in members])
        for i, image in zip(members, batch):
            images[i] = image.cpu()
    return images


def png_bytes(image: torch.Tensor) -> bytes:
    """(3, H, W) in [0, 1] -> PNG bytes, rounded as `rglcd sample` writes its files."""
    buffer = io.BytesIO()
    to_pil(image[None])[0].save(buffer, format="PNG")
    return buffer.getvalue()
