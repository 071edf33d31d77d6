"""Reward models chosen by name, with one interface (docs/architecture.md 2.4; docs/method.md 3 and 4).

    rm = load_reward("hpsv2.1", weights=None, antialias=False, device="cuda", dtype=torch.bfloat16)
    r = rm.score(images, prompts)      # (B,), images (B, 3, H, W) in [0, 1]; differentiable w.r.t. images
    l = rm.logits(images, prompts)     # (B,) score * exp(logit_scale)

Every model is a frozen `torch.nn.Module` with `input_kind` ("image" or "latent"), `score` and
`logits` (see `rglcd.rewards.base`). Names are registered in `rglcd.plugins`; factories import their heavy packages only when chosen, so
choosing one reward never imports another's (open_clip, transformers, ImageReward).
`weights`: None (the RM's default hub source), a local file/dir, an s3:// URI, a hub id, or "tiny"
(tiny random models of the same code paths, for tests and the CPU preset).
"""
from __future__ import annotations

import torch

from rglcd.plugins import REWARDS, register_reward, reward_factory, reward_names
from rglcd.rewards.base import RewardModel, freeze, params_frozen
from rglcd.rewards.weights import MissingRewardWeights, RewardWeightsError


def available_rewards() -> list[str]:
    """Every registered reward name (`rglcd.plugins`)."""
    return reward_names()


def load_reward(name: str, weights: str | None = None, *, antialias: bool = False,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                cache_dir: str = "~/.cache/rglcd") -> RewardModel:
    """The frozen reward model registered as `name` (requires_grad False, eval) on `device` in `dtype`."""
    return reward_factory(name)(weights, antialias=antialias, device=device, dtype=dtype, cache_dir=cache_dir)


__all__ = ["REWARDS", "MissingRewardWeights", "RewardModel", "RewardWeightsError", "available_rewards", "freeze",
           "load_reward", "params_frozen", "register_reward"]
