"""Generate one image per prompt, save it, and measure it while it is in memory (streaming, batch by batch).

Image i of every set is drawn with seed `eval.seed + i`, so the teacher and each student step count
see the same noise for the same prompt, whatever the batch size. Images are rounded to 8 bits before
any measurement, so every number is computed on exactly the pixels saved as PNG.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

# (prompts, per-image generators) -> images (B, 3, H, W) in [0, 1]
Sampler = Callable[[list[str], list[torch.Generator]], torch.Tensor]
# (images (B, 3, H, W) in [0, 1], prompts) -> {measurement name: (B,) values}
Measure = Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]]


@dataclass
class ImageSet:
    """One sampler's images for one prompt list: on disk in `folder`, measured per image."""
    label: str
    folder: Path
    prompts: list[str]
    values: dict[str, torch.Tensor] = field(default_factory=dict)   # name -> (N,)
    preview: torch.Tensor | None = None                              # (K, 3, H, W) the first K images
    resolution: tuple[int, int] | None = None                        # (H, W)

    def mean(self, name: str) -> float:
        return self.values[name].float().mean().item()


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to the 8-bit values a PNG stores (as `rglcd.sample.to_pil`)."""
    return (images.detach().float().cpu().clamp(0, 1) * 255).round() / 255


def seeded_generators(seed: int, start: int, count: int) -> list[torch.Generator]:
    """One CPU generator per image, seeded `seed + index` (CPU: the same noise on any device)."""
    return [torch.Generator("cpu").manual_seed(seed + start + i) for i in range(count)]


def generate_set(label: str, sampler: Sampler, prompts: list[str], folder: str | Path, *, batch_size: int,
                 seed: int, measure: Measure | None = None, keep: int = 0, first: int = 0) -> ImageSet:
    """Sample every prompt once, save `folder/00000.png`..., measure each batch, keep the first `keep` images.

    first: index of the first image (its file name and seed), to continue a set already partly on disk."""
    from rglcd.sample import to_pil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = ImageSet(label, folder, list(prompts))
    values: dict[str, list[torch.Tensor]] = {}
    kept: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        images = quantize(sampler(batch, seeded_generators(seed, first + start, len(batch))))  # (B, 3, H, W)
        for i, pil in enumerate(to_pil(images)):
            pil.save(folder / f"{first + start + i:05d}.png")
        for name, v in (measure(images, batch) if measure else {}).items():
            values.setdefault(name, []).append(v.detach().float().cpu().reshape(-1))
        if sum(len(k) for k in kept) < keep:
            kept.append(images[:keep - sum(len(k) for k in kept)])
        out.resolution = tuple(images.shape[-2:])
    out.values = {name: torch.cat(parts) for name, parts in values.items()}
    out.preview = torch.cat(kept) if kept else None
    return out


def reuse_images(done: ImageSet, prompts: list[str], folder: str | Path) -> int:
    """Link the leading images of `done` whose prompts match `prompts` into `folder` (same names, so the
    same seeds); returns how many. Image i depends only on its prompt and seed `eval.seed + i`."""
    import os
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for have, want in zip(done.prompts, prompts):
        if have != want:
            break
        name = f"{count:05d}.png"
        (folder / name).unlink(missing_ok=True)
        try:
            os.link(done.folder / name, folder / name)
        except OSError:
            shutil.copy2(done.folder / name, folder / name)
        count += 1
    return count
