"""One device convention for every command, config field and benchmark.

    auto     CUDA when a GPU is visible, else the CPU (the default everywhere it is not stated otherwise)
    cpu      the CPU
    cuda     the current GPU;  cuda:N  GPU number N

A CUDA device asked for on a machine without one is refused with a message, never silently replaced.
"""
from __future__ import annotations

import torch

ALLOWED = "auto, cpu, cuda, cuda:N"
DEVICE_HELP = ("torch device: auto (cuda if a GPU is visible, else cpu), cpu, cuda or cuda:N "
               "(default: %(default)s)")


def resolve_device(name: str | torch.device | None = "auto", what: str = "--device") -> torch.device:
    """`name` -> torch.device by the convention above; `what` (a flag or config key) names it in errors."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{what}: {str(name)!r} is not a device; allowed: {ALLOWED}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{what}: {str(name)!r} is not allowed; allowed: {ALLOWED}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what}: {str(name)!r} but no CUDA device is visible; allowed here: auto, cpu")
    return device
