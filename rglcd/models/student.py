"""Build the LCM student from the teacher (docs/method.md 1.2).

The student has the teacher's UNet config plus `time_cond_proj_dim`, i.e. diffusers'
`TimestepEmbedding.cond_proj` = Linear(time_cond_proj_dim -> C, no bias), added to the sinusoidal
timestep features before `linear_1`. All other weights are the teacher's; only that projection is new.
"""
from __future__ import annotations

import copy

import torch


def make_student(teacher_unet: torch.nn.Module, time_cond_proj_dim: int = 256) -> torch.nn.Module:
    """A trainable copy of the teacher UNet with a fresh guidance-embedding projection."""
    from diffusers import UNet2DConditionModel

    # A keyword argument overrides the config even where diffusers marked the key a default (real SD
    # unet/config.json files have no time_cond_proj_dim; it is then listed in `_use_default_values`).
    student = UNet2DConditionModel.from_config(teacher_unet.config, time_cond_proj_dim=time_cond_proj_dim)
    # nn.Module.to, not diffusers' override: that one warns on every dtype cast ("modules that should be kept
    # in float32: []") although this UNet has none, on every training run.
    student = torch.nn.Module.to(student, teacher_unet.device, teacher_unet.dtype)
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    new = [k for k in missing if "cond_proj" not in k]
    if new or unexpected:
        raise RuntimeError(f"teacher weights do not fit the student: missing {new}, unexpected {unexpected}")
    return student.train().requires_grad_(True)


def make_target(student: torch.nn.Module) -> torch.nn.Module:
    """The EMA target: a frozen copy of the student, updated only by `ema_update`."""
    return copy.deepcopy(student).requires_grad_(False).eval()


@torch.no_grad()
def ema_update(target: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * student (docs/method.md 2.10), as one multi-tensor update.

    `torch._foreach_lerp_` runs the same lerp as a per-parameter `Tensor.lerp_` loop (bit-exact), in a few
    fused launches per (device, dtype) group instead of one launch per parameter (~700 for SD's UNet).
    """
    targets = list(target.parameters())
    sources = list(student.parameters())
    if len(targets) != len(sources):
        raise ValueError(f"ema_update: the target has {len(targets)} parameters, the student {len(sources)}")
    sources = [s.detach().to(t.dtype) for t, s in zip(targets, sources)]
    torch._foreach_lerp_(targets, sources, 1.0 - decay)
