"""Losses of RG-LCD (docs/method.md 2.9 and 3)."""
from __future__ import annotations

from typing import Literal

import torch


def lcd_loss_elementwise(pred: torch.Tensor, target: torch.Tensor, kind: Literal["huber", "l2"] = "huber",
                         huber_c: float = 0.001) -> torch.Tensor:
    """The LCD loss per element, float32, shaped like `pred` (docs/method.md 2.9); `lcd_loss` is its mean.

    huber: sqrt((pred - target)^2 + c^2) - c   (pseudo-Huber, c = 0.001)
    l2:    (pred - target)^2
    """
    diff = pred.float() - target.float()
    if kind == "huber":
        return torch.sqrt(diff.square() + huber_c ** 2) - huber_c
    if kind == "l2":
        return diff.square()
    raise ValueError(f"kind: {kind!r} is not allowed; allowed: huber, l2")


def lcd_loss(pred: torch.Tensor, target: torch.Tensor, kind: Literal["huber", "l2"] = "huber",
             huber_c: float = 0.001) -> torch.Tensor:
    """Latent consistency distillation loss, a mean over all elements (docs/method.md 2.9).

    huber: mean(sqrt((pred - target)^2 + c^2) - c)   (pseudo-Huber, c = 0.001)
    l2:    mean((pred - target)^2)
    """
    return lcd_loss_elementwise(pred, target, kind, huber_c).mean()


def reward_loss(rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """-beta * mean(R) over the batch (docs/method.md 3.1). Negative by construction: that is not a bug."""
    return -beta * rewards.float().mean()


def imagereward_hinge(r: torch.Tensor) -> torch.Tensor:
    """ImageReward's hinged reward min(r - 2, 0) = -ReLU(2 - r): no gradient once r >= 2 (docs/method.md 3.3)."""
    return -torch.relu(2.0 - r)
