"""The serving cost: what a server batch costs with the student next to the teacher (docs/serving.md).

At batch 1 and at `serve.max_batch_size`, one timed call is what one batch of `rglcd serve` does: the
student's `serve.default_steps`-step LCM generation of that many one-image requests, each with its own
seeded noise, plus PNG encoding (rglcd.generation). The teacher's call is its `eval.teacher_steps`-step
DDIM with CFG (docs/method.md 6) on the same batch, device and dtype. Reported: batch latency, images/s and
the speed-up in images/s; one warm-up call, then the median of `eval.latency_repeats` calls.
"""
from __future__ import annotations

import torch

from rglcd.evaluate.latency import LATENCY_PROMPT, seconds_per_image
from rglcd.generation import ImageRequest, default_size, generate, png_bytes
from rglcd.sample import SamplingModel, ddim_sample


def serving_cost(student: SamplingModel, teacher: SamplingModel, cfg) -> dict:
    """{"batches": {B: {student_*, teacher_*, speedup}}, ...} for B in (1, serve.max_batch_size)."""
    e, s = cfg.eval, cfg.serve
    device, size = student.unet.device, default_size(student)
    rows = {}
    for batch in sorted({1, s.max_batch_size}):
        requests = [ImageRequest(LATENCY_PROMPT, s.default_steps, e.guidance, i, size, size) for i in range(batch)]
        served = seconds_per_image(lambda r=requests: [png_bytes(im) for im in generate(student, r)], batch, device,
                                   1, e.latency_repeats)["seconds_per_image"]
        prompts = [LATENCY_PROMPT] * batch
        taught = seconds_per_image(lambda p=prompts: ddim_sample(teacher, p, e.teacher_steps, e.teacher_guidance,
                                                                 torch.Generator("cpu").manual_seed(0),
                                                                 height=size, width=size),
                                   batch, device, 1, e.latency_repeats)["seconds_per_image"]
        rows[str(batch)] = {"student_latency_s": served * batch, "student_images_per_s": 1 / served,
                            "teacher_latency_s": taught * batch, "teacher_images_per_s": 1 / taught,
                            "speedup": taught / served}
    return {"batches": rows, "student_steps": s.default_steps, "teacher_steps": e.teacher_steps,
            "resolution": size, "device": str(device), "includes": "text encoding + UNet steps + VAE decode "
            "(+ PNG encoding for the student, as served)"}


def serving_summary(cost: dict) -> dict[str, float]:
    """The plain numbers for the registry: served_{latency_s,images_per_s,speedup}_b<B>, teacher_images_per_s_b<B>."""
    out = {}
    for batch, row in cost["batches"].items():
        out[f"served_latency_b{batch}_s"] = row["student_latency_s"]
        out[f"served_images_per_s_b{batch}"] = row["student_images_per_s"]
        out[f"teacher_images_per_s_b{batch}"] = row["teacher_images_per_s"]
        out[f"served_speedup_b{batch}"] = row["speedup"]
    return out
