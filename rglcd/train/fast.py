"""How the training UNets execute: gradient checkpointing only when memory requires it, and torch.compile.

    execution = prepare_unets(cfg, teacher, student, target, device)   # before accelerate wraps the student

`train.gradient_checkpointing: auto` measures, on CUDA, the activation memory of one example's student
forward and backward without checkpointing, and turns checkpointing on only when the batch's activations,
gradients and AdamW moments would not fit in the measured free memory (with a margin). The decision and
the numbers behind it are returned and recorded in the run's run.json. The direct-reward path's VAE decode
with gradients is not part of the estimate (it is bounded by `reward.batch_size`).

`train.compile` compiles the student, its EMA target and the teacher UNet in place (`nn.Module.compile`):
parameters, state_dict keys, checkpoints and the EMA update are those of the eager modules.
"""
from __future__ import annotations

from typing import Any

import torch

MEMORY_MARGIN = 0.85        # fraction of the measured free memory a batch may plan to use
ADAMW_STATE_FACTOR = 3      # gradient + two AdamW moments, each the size of the trainable parameters


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def activation_bytes_per_example(student: torch.nn.Module, teacher, cfg, device: torch.device) -> int:
    """Peak CUDA memory growth of one example's student forward + backward (no checkpointing), minus its gradients."""
    config = student.config
    size = cfg.model.resolution // teacher.vae_scale_factor
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.mixed_precision, torch.float32)
    z = torch.randn(1, config.in_channels, size, size, device=device)
    text = torch.randn(1, teacher.tokenizer.model_max_length, config.cross_attention_dim, device=device)
    w = torch.randn(1, config.time_cond_proj_dim, device=device)
    t = torch.tensor([500], device=device)
    params = [p for p in student.parameters() if p.requires_grad]
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = student(z, t, encoder_hidden_states=text, timestep_cond=w).sample
    out.float().square().mean().backward()
    peak = torch.cuda.max_memory_allocated(device) - base
    student.zero_grad(set_to_none=True)
    del out
    torch.cuda.empty_cache()
    return max(peak - _bytes(params), 0)


def choose_checkpointing(cfg, teacher, student: torch.nn.Module, device: torch.device) -> dict[str, Any]:
    """Resolve train.gradient_checkpointing ('auto' from measured memory); returns the decision and its numbers."""
    setting = cfg.train.gradient_checkpointing
    if setting != "auto":
        return {"gradient_checkpointing": bool(setting), "reason": "set in train.gradient_checkpointing"}
    if device.type != "cuda":
        return {"gradient_checkpointing": False, "reason": "auto on CPU: no device memory limit to plan for"}
    per_example = activation_bytes_per_example(student, teacher, cfg, device)
    states = ADAMW_STATE_FACTOR * _bytes(p for p in student.parameters() if p.requires_grad)
    need = per_example * cfg.train.batch_size + states
    free = torch.cuda.mem_get_info(device)[0]
    on = need > MEMORY_MARGIN * free
    return {"gradient_checkpointing": on, "reason": "auto: measured", "activation_bytes_per_example": per_example,
            "optimizer_state_bytes": states, "planned_bytes": need, "free_bytes": free, "margin": MEMORY_MARGIN}


def compile_unets(teacher, student: torch.nn.Module, target: torch.nn.Module) -> None:
    """torch.compile (inductor, static shapes) of the student, the EMA target and the teacher UNet, in place."""
    for module in (student, target, teacher.unet):
        if getattr(module, "_compiled_call_impl", None) is None:
            module.compile(dynamic=False)


def prepare_unets(cfg, teacher, student: torch.nn.Module, target: torch.nn.Module,
                  device: torch.device) -> dict[str, Any]:
    """Checkpointing as resolved by `choose_checkpointing`, then compilation when train.compile; the record."""
    record = choose_checkpointing(cfg, teacher, student, device)
    if record["gradient_checkpointing"]:
        student.enable_gradient_checkpointing()
    if cfg.train.compile:
        compile_unets(teacher, student, target)
    return {**record, "compile": cfg.train.compile, "batch_size": cfg.train.batch_size}
