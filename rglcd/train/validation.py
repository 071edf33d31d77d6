"""Validation grids during training: LCM 4-step samples of a fixed prompt set, student and EMA target.

The same prompts and seed at every validation step, so grids compare across steps. Sampling uses its
own generator and never touches the global RNG (resume stays bit-exact).
"""
from __future__ import annotations

from pathlib import Path

import torch

from rglcd.sample import from_teacher, lcm_sample, save_grid

VALIDATION_STEPS = 4
VALIDATION_GUIDANCE = 7.5  # w = 6.5, inside the trained range [5, 15]


def pick_prompts(prompts: list[str], count: int) -> list[str]:
    """`count` prompts spread evenly over the list (deterministic)."""
    if count >= len(prompts):
        return list(prompts)
    return [prompts[round(i * (len(prompts) - 1) / max(count - 1, 1))] for i in range(count)]


@torch.no_grad()
def validation_grid(teacher, student: torch.nn.Module, target: torch.nn.Module, prompts: list[str],
                    path: Path, seed: int = 0) -> Path:
    """Save a grid: row 1 the student, row 2 the EMA target, one column per prompt."""
    rows = []
    for unet in (student, target):
        was_training = unet.training
        unet.eval()
        model = from_teacher(teacher, unet)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        rows.append(lcm_sample(model, prompts, VALIDATION_STEPS, VALIDATION_GUIDANCE, generator=generator).images)
        unet.train(was_training)
    return save_grid(torch.cat(rows), path, ncols=len(prompts))
