"""One device convention for every command, config field and benchmark.

    auto     CUDA when a GPU is visible, else the CPU (the default everywhere it is not stated otherwise)
    cpu      the CPU
    cuda     the current GPU;  cuda:N  GPU number N

A CUDA device asked for on a machine without one is refused with a message, never silently replaced.
torch is imported when a device is resolved, not with this module: the CLI imports it for --device's help,
and the clients-only CPU image (no torch) runs `rglcd pipeline submit`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ALLOWED = "auto, cpu, cuda, cuda:N"
DEVICE_HELP = ("torch device: auto (cuda if a GPU is visible, else cpu), cpu, cuda or cuda:N "
               "(default: %(default)s)")


def resolve_device(name: str | torch.device | None = "auto", what: str = "--device") -> torch.device:
    """`name` -> torch.device by the convention above; `what` (a flag or config key) names it in errors."""
    import torch

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


DTYPES = ("fp32", "fp16", "bf16")          # model dtypes by name (torch.float32, torch.float16, torch.bfloat16)


def device_and_dtype(device: str | None = "auto", precision: str = "auto",
                     what: str = "device") -> tuple[torch.device, torch.dtype]:
    """(device, model dtype) for inference (evaluation, serving): precision auto = fp16 on CUDA, fp32 on CPU.
    `what` names the settings in errors (e.g. "eval" for eval.device / eval.precision)."""
    resolved = resolve_device(device, f"{what}.device" if what != "device" else "device")
    if precision == "auto":
        precision = "fp16" if resolved.type == "cuda" else "fp32"
    if precision not in DTYPES:
        where = f"{what}.precision" if what != "device" else "precision"
        raise ValueError(f"{where}: {precision!r} is not allowed; allowed: auto, {', '.join(DTYPES)}")
    import torch

    return resolved, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
