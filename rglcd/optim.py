"""The optimizer side of the method (docs/method.md 2.10 and 3): AdamW over the trainable parameters, its LR
schedule, and the update after backward (clip, step or skip a non-finite step, schedule, EMA target).

    optimizer = make_optimizer(trainable(student), cfg.train)
    out.loss.backward()
    norm, bad = optimizer_update(student, target, optimizer, cfg)

The training loop (`rglcd.train.loop`) and the toy runner (`rglcd.toy.runner`) both call these, so the
rule for a non-finite step is written once, here.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Iterable

import torch

from rglcd.models import ema_update

ClipFn = Callable[[Iterable[torch.nn.Parameter], float], torch.Tensor]


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters of `module` that require a gradient (all of a full student; LoRA + w-projection with LoRA)."""
    return [p for p in module.parameters() if p.requires_grad]


def make_optimizer(params: list[torch.nn.Parameter], train_cfg, lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW (docs/method.md 3): 8-bit when asked and bitsandbytes is installed, fused on CUDA, else the default."""
    kwargs = dict(lr=train_cfg.lr if lr is None else lr, betas=(train_cfg.adam_beta1, train_cfg.adam_beta2),
                  eps=train_cfg.adam_eps, weight_decay=train_cfg.weight_decay)
    if train_cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb  # optional and heavy (CUDA kernels): imported only when asked for

            return bnb.optim.AdamW8bit(params, **kwargs)
        except ImportError:
            warnings.warn("train.use_8bit_adam: bitsandbytes is not installed; using torch AdamW "
                          "(pip install bitsandbytes)")
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


def make_scheduler(optimizer: torch.optim.Optimizer, train_cfg):
    """diffusers' constant / constant_with_warmup schedule, stepped once per optimizer step."""
    from diffusers.optimization import get_scheduler  # diffusers is slow to import; only runs that train need it

    return get_scheduler(train_cfg.lr_scheduler, optimizer, num_warmup_steps=train_cfg.warmup_steps)


def is_bad_step(loss_finite: bool, grad_norm: float, mixed_precision: str) -> bool:
    """The one non-finite rule: a step is bad when its loss is not finite, or (outside fp16) its grad norm is not.

    Under fp16 an infinite norm is the grad scaler's overflow signal: the scaler skips that step itself.
    """
    return not loss_finite or (mixed_precision != "fp16" and not math.isfinite(grad_norm))


def optimizer_update(student: torch.nn.Module, target: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg, *,
                     loss_finite: bool = True, clip_grad_norm: ClipFn = torch.nn.utils.clip_grad_norm_,
                     scheduler=None) -> tuple[float, bool]:
    """After backward: clip the grad norm, then step the optimizer (or skip a bad step, `is_bad_step`), zero the
    grads, step the LR schedule and EMA-update the target (docs/method.md 2.10, 3). Returns (pre-clip norm, bad).

    student: the unwrapped student (no DDP wrapper); target: its EMA copy. A loop on accelerate passes
    `clip_grad_norm=accelerator.clip_grad_norm_` (it unscales fp16 gradients first) and `loss_finite` agreed
    across processes. A step the fp16 grad scaler skipped moves neither the schedule nor the target.
    """
    norm = float(clip_grad_norm(trainable(student), cfg.train.max_grad_norm))
    bad = is_bad_step(loss_finite, norm, cfg.train.mixed_precision)
    if bad and cfg.train.mixed_precision != "fp16":
        optimizer.zero_grad(set_to_none=True)
        return norm, True
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if not getattr(optimizer, "step_was_skipped", False):  # accelerate's AcceleratedOptimizer under fp16
        if scheduler is not None:
            scheduler.step()
        ema_update(target, student, cfg.distill.ema_decay)
    return norm, bad
