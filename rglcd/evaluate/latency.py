"""Latency per image: the student at 1/2/4/8 LCM steps against the teacher's 50-step DDIM with CFG (docs/method.md 6.4).

Each timed call is a whole generation (text encoding + UNet steps + VAE decode), at the same resolution,
device, dtype, batch and compile mode for both models (`rglcd.sample.prepare_sampling`). The warm-up
calls are timed apart (`warmup_s`: compilation, CUDA-graph recording, cuDNN autotuning, allocator, lazy
init) and discarded; the median of the timed calls is reported, divided by the batch. On CUDA the clock is
read after `torch.cuda.synchronize`. Speedup = teacher seconds per image / student seconds per image.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

LATENCY_PROMPT = "a photograph of an astronaut riding a horse"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_image(fn: Callable[[], object], batch: int, device: torch.device, warmup: int = 1,
                      repeats: int = 3) -> dict:
    """Median wall-clock seconds of `fn()` divided by `batch`, after `warmup` discarded (but timed) calls."""
    warm = []
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        _sync(device)
        warm.append(time.perf_counter() - start)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        runs.append(time.perf_counter() - start)
    return {"seconds_per_image": statistics.median(runs) / batch, "runs_s": runs, "warmup_s": warm}


def latency_report(student, teacher, steps: list[int], teacher_steps: int = 50, guidance: float = 7.5,
                   teacher_guidance: float = 7.5, batch: int = 1, resolution: int | None = None,
                   warmup: int | None = None, repeats: int = 3) -> dict:
    """Seconds per image of `rglcd.sample.lcm_sample(student, ...)` per step count and of
    `ddim_sample(teacher, ...)`, and the speedup of each student step count over the teacher.

    warmup: discarded calls per model; default 1 eager, 2 compiled (compilation, then CUDA-graph recording).
    """
    from rglcd.sample import ddim_sample, lcm_sample

    if warmup is None:
        warmup = 1 if student.compile_mode == teacher.compile_mode == "none" else 2

    device = student.unet.device
    prompts = [LATENCY_PROMPT] * batch
    size = dict(height=resolution, width=resolution)

    def gen():
        return torch.Generator("cpu").manual_seed(0)

    teacher_t = seconds_per_image(lambda: ddim_sample(teacher, prompts, teacher_steps, teacher_guidance, gen(), **size),
                                  batch, device, warmup, repeats)
    students = {}
    for s in steps:
        students[s] = seconds_per_image(lambda s=s: lcm_sample(student, prompts, s, guidance, gen(), **size),
                                        batch, device, warmup, repeats)
    res = resolution or student.unet.config.sample_size * student.vae_scale_factor
    return {
        "teacher": {"steps": teacher_steps, "sampler": "DDIM eta=0 + CFG", "guidance": teacher_guidance, **teacher_t},
        "student": {str(s): {"steps": s, "sampler": "LCM", "guidance": guidance, **t} for s, t in students.items()},
        "speedup": {str(s): teacher_t["seconds_per_image"] / t["seconds_per_image"] for s, t in students.items()},
        "batch": batch, "resolution": res, "device": str(device), "dtype": str(student.unet.dtype).replace("torch.", ""),
        "warmup_calls": warmup, "timed_calls": repeats, "statistic": "median",
        "includes": "text encoding + UNet steps + VAE decode",
        "compile": {"student": student.compile_mode, "teacher": teacher.compile_mode},
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }
