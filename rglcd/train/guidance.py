"""The reward side of a run (docs/method.md 3 and 4): which model scores the student, and the LRM's online fine-tuning.

- reward.name == "none": plain LCD.
- reward.guidance == "direct": the expert RGB reward scores the decoded student prediction.
- reward.guidance == "lrm": the latent reward model scores the student's latents (no VAE decode); with
  lrm.finetune it is trained after every student update to agree with the expert's preferences.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rglcd.lrm import load_lrm, lrm_finetune_step, make_lrm_optimizer
from rglcd.rewards import freeze, load_reward
from rglcd.step import example_seed


@dataclass
class Guidance:
    student_reward: torch.nn.Module | None = None   # what `lcd_step` scores the prediction with
    expert: torch.nn.Module | None = None           # the RGB expert that supervises LRM fine-tuning
    lrm: torch.nn.Module | None = None              # the fine-tuned LRM (a plain module on every process)
    lrm_optimizer: Any = None

    @property
    def finetunes(self) -> bool:
        return self.lrm_optimizer is not None



def _expert(cfg, device, dtype):
    return load_reward(cfg.reward.name, cfg.reward.weights, antialias=cfg.reward.antialias, device=device,
                       dtype=dtype, cache_dir=cfg.model.cache_dir)


def build_guidance(cfg, lrm_checkpoint: str | None, device: torch.device, dtype: torch.dtype) -> Guidance:
    """Load the reward models the config asks for (nothing for reward.name 'none' with direct guidance)."""
    if cfg.reward.guidance == "direct":
        return Guidance() if cfg.reward.name == "none" else Guidance(student_reward=_expert(cfg, device, dtype))
    ref = lrm_checkpoint or cfg.lrm.checkpoint
    if ref is None:
        raise ValueError("reward.guidance='lrm' needs a pretrained latent reward model: run `rglcd pretrain-lrm` "
                         "and pass --lrm-checkpoint DIR (or set lrm.checkpoint)")
    lrm = load_lrm(ref, device=device, cache_dir=cfg.model.cache_dir)   # float32: it is trained
    if not cfg.lrm.finetune:
        return Guidance(student_reward=freeze(lrm))
    optimizer = make_lrm_optimizer(lrm, cfg)  # unlocks the fine-tuned parts (docs/method.md 4)
    return Guidance(student_reward=lrm, expert=_expert(cfg, device, dtype), lrm=lrm, lrm_optimizer=optimizer)


def finetune_lrm(guidance: Guidance, teacher, out, batch: dict, cfg, step: int, rank: int) -> dict[str, float]:
    """One LRM update after the student's (docs/method.md 4) on the last micro-batch's P, T, G latents.

    The sub-batch draw is seeded by (train.seed, step, rank), so a resumed run repeats it exactly.
    """
    sf = teacher.vae.config.scaling_factor
    pred, target, real = (x.detach().float() / sf for x in (out.pred, out.target, out.z0))  # unscaled (B, 4, h, w)
    generator = torch.Generator().manual_seed(example_seed(cfg.train.seed, step, -1 - rank))
    return lrm_finetune_step(guidance.lrm, guidance.lrm_optimizer, guidance.expert, teacher.vae, pred, target, real,
                             list(batch["captions"]), cfg, generator=generator)
