"""The toy world's judges: a small CNN giving p(colour, shape, position | image), and the reward built on it.

Two classifiers are trained on the same data with different seeds and widths: the *reward* one is the
expert RM that RG-LCD optimises (wrapped in the project's reward interface, `rglcd.rewards.base`), the
*judge* one is held out and only measures (prompt-alignment accuracy and the features of the FID-like
distance), so a student that fools the reward classifier is not graded by the classifier it fooled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rglcd.toy.data import NUM_CLASSES


class ToyClassifier(nn.Module):
    """Conv net 32x32 -> 4x4, then a `feature_dim` penultimate layer and one linear head per attribute."""

    def __init__(self, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.width, self.feature_dim = width, feature_dim
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.SiLU(),                        # (B, w, 32, 32)
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),          # (B, 2w, 16, 16)
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),      # (B, 2w, 8, 8)
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),      # (B, 2w, 4, 4)
            nn.Flatten(), nn.Linear(2 * w * 16, feature_dim), nn.SiLU())     # (B, feature_dim)
        self.head = nn.Linear(feature_dim, sum(NUM_CLASSES))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [0, 1] -> (B, feature_dim) penultimate features."""
        return self.body(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per-attribute logits [(B, 4), (B, 3), (B, 4)]."""
        return list(self.head(self.features(images)).split(NUM_CLASSES, dim=1))


def attribute_log_probs(model: ToyClassifier, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, 3) log p(true attribute | image) for colour, shape, position."""
    logits = model(images)
    return torch.stack([F.log_softmax(lg, 1).gather(1, labels[:, i:i + 1].to(lg.device))[:, 0]
                        for i, lg in enumerate(logits)], dim=1)


@torch.no_grad()
def predict(model: ToyClassifier, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(B, 3) argmax attribute indices."""
    out = [torch.stack([lg.argmax(1) for lg in model(part)], 1) for part in images.split(chunk)]
    return torch.cat(out)


@torch.no_grad()
def features(model: ToyClassifier, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(B, feature_dim) penultimate features, in chunks."""
    return torch.cat([model.features(part) for part in images.split(chunk)])


def train_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int, width: int,
                     batch_size: int = 128, lr: float = 2e-3, noise: float = 0.0,
                     device: str | torch.device = "cpu") -> tuple[ToyClassifier, list[float]]:
    """Cross-entropy on the three attributes; `noise` adds Gaussian pixel noise of random strength in [0, noise]."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ToyClassifier(width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    for _ in range(steps):
        idx = torch.randint(images.shape[0], (batch_size,), generator=g)
        x = images[idx]
        if noise > 0:
            sigma = noise * torch.rand((batch_size, 1, 1, 1), generator=g)
            x = (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)
        loss = -attribute_log_probs(model, x.to(device), labels[idx]).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model.eval(), losses


def classifier_from_state(state: dict[str, torch.Tensor]) -> ToyClassifier:
    """A ToyClassifier holding `state`, its width and feature size read from the weights (no random init drawn)."""
    with torch.device("meta"):
        model = ToyClassifier(width=state["body.0.weight"].shape[0], feature_dim=state["head.weight"].shape[1])
    model.load_state_dict(state, assign=True)
    return model
