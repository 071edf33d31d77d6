"""Reward-hacking monitor: the share of spectral energy above a cutoff frequency (docs/method.md 6.5; paper Sec. 1).

Direct reward optimisation through a pixel RM tends to add high-frequency noise; the LRM removes it.
The monitor measures, per image, the fraction of its (mean-removed, Hann-windowed) power spectrum at
radial frequencies above `cutoff` cycles per pixel (Nyquist = 0.5), and compares the student's images
with the teacher's images for the same prompts: ratio > 1 means more high-frequency energy than the teacher.
"""
from __future__ import annotations

import torch


def _radius(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Radial frequency (H, W) in cycles/pixel of each `fft2` bin."""
    fy = torch.fft.fftfreq(height, device=device)[:, None]
    fx = torch.fft.fftfreq(width, device=device)[None, :]
    return torch.sqrt(fy.square() + fx.square())


def high_frequency_share(images: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Share of spectral energy above `cutoff` (cycles/pixel), per image.

    images: (B, C, H, W), any range. Returns (B,) in [0, 1]; a constant image gives 0.
    """
    if images.ndim != 4:
        raise ValueError(f"images: expected (B, C, H, W), got shape {tuple(images.shape)}")
    if not 0 < cutoff < 0.5:
        raise ValueError(f"cutoff: {cutoff} is out of range; allowed: 0 < cutoff < 0.5 (cycles/pixel)")
    x = images.double()
    _, _, h, w = x.shape
    x = x - x.mean(dim=(-2, -1), keepdim=True)                                   # remove DC per channel
    window = torch.hann_window(h, periodic=False, dtype=x.dtype, device=x.device)[:, None] \
        * torch.hann_window(w, periodic=False, dtype=x.dtype, device=x.device)[None, :]  # (H, W): no edge leakage
    power = torch.fft.fft2(x * window).abs().square().sum(dim=1)                 # (B, H, W), channels summed
    radius = _radius(h, w, x.device)
    high = power[:, radius > cutoff].sum(dim=-1)                                 # (B,)
    total = power[:, radius > 0].sum(dim=-1)                                     # (B,) DC excluded
    return torch.where(total > 0, high / total.clamp_min(1e-30), torch.zeros_like(total)).float()


def high_frequency_ratio(student: torch.Tensor, teacher: torch.Tensor, cutoff: float = 0.25) -> dict:
    """Mean HF share of the student's images over the teacher's for the same prompts, with both means."""
    s = high_frequency_share(student, cutoff).mean().item()
    t = high_frequency_share(teacher, cutoff).mean().item()
    return {"ratio": s / t if t > 0 else float("inf"), "student_share": s, "teacher_share": t,
            "cutoff_cycles_per_pixel": cutoff, "num_images": int(student.shape[0])}
