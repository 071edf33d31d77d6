"""Building what the loop trains: the student (full or LoRA), and turning it back into a plain UNet or a
LoRA adapter at the end. The optimizer and LR schedule are the method's (`rglcd.optim`)."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import save_file

from rglcd.models import make_student
from rglcd.train.warm import load_into

# LoRA targets of diffusers' LCM-LoRA distillation script (attention, feed-forward, resnet convs, time proj).
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
GUIDANCE_PROJ = "time_embedding.cond_proj"  # the student's only new weights (docs/method.md 1.2)
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def weight_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """dtype of the frozen teacher parts: the run's precision on GPU, float32 on CPU."""
    return DTYPES[mixed_precision] if device.type == "cuda" else torch.float32


def build_student(teacher_unet: torch.nn.Module, train_cfg, time_cond_proj_dim: int,
                  initial: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """Student from the teacher (docs/method.md 1.2), or with the weights `initial` (a warm start from the
    production student, rglcd.train.warm) in the same architecture; with lora_rank > 0 only LoRA weights
    and the w-projection train."""
    student = make_student(teacher_unet, time_cond_proj_dim).float()
    if initial is not None:
        load_into(student, initial)
    if train_cfg.lora_rank > 0:
        from peft import LoraConfig  # optional heavy dependency: imported only for LoRA runs

        student.requires_grad_(False)
        student.add_adapter(LoraConfig(r=train_cfg.lora_rank, lora_alpha=train_cfg.lora_rank,
                                       target_modules=LORA_TARGETS, init_lora_weights=True))
        for name, p in student.named_parameters():  # the guidance projection is new: it trains in full
            if name.startswith(GUIDANCE_PROJ):
                p.requires_grad_(True)
    if train_cfg.gradient_checkpointing is True:  # "auto" is resolved later (rglcd.train.fast.prepare_unets)
        student.enable_gradient_checkpointing()
    return student.train()


def merged_unet(student: torch.nn.Module) -> torch.nn.Module:
    """A plain UNet2DConditionModel: LoRA fused into a copy of the weights (the student itself is untouched)."""
    unet = copy.deepcopy(student)
    if getattr(unet, "peft_config", None):
        unet.fuse_lora()
        unet.unload_lora()
    if hasattr(unet, "disable_gradient_checkpointing"):
        unet.disable_gradient_checkpointing()
    return unet.requires_grad_(False).eval()


def save_lora_adapter(student: torch.nn.Module, out_dir) -> None:
    """The LoRA adapter (diffusers format) plus the fully trained guidance projection it needs."""
    out = Path(out_dir)
    student.save_lora_adapter(str(out), upcast_before_saving=True)
    proj = {k: v.detach().float().contiguous().cpu() for k, v in student.state_dict().items()
            if k.startswith(GUIDANCE_PROJ)}
    save_file(proj, str(out / "guidance_projection.safetensors"))
