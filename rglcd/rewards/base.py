"""The one interface every reward model follows (docs/method.md 3 and 4; docs/architecture.md 2.4).

    rm.input_kind                 "image": (B, 3, H, W) in [0, 1];  "latent": unscaled VAE latents (B, 4, h, w)
    rm.score(x, prompts)  -> (B,)  differentiable w.r.t. x only (text features under no_grad, RM frozen)
    rm.logits(x, prompts) -> (B,)  score * exp(logit_scale), the expert targets of LRM fine-tuning

Subclasses implement `encode_inputs` (x -> (B, D) features, with graph to x) and `encode_prompts`
(prompts -> (N, D) features), and expose `logit_scale`. Text features are computed once per distinct
prompt within a call (LRM fine-tuning scores 3 latents per caption).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

INPUT_CHANNELS = {"image": 3, "latent": 4}


def freeze(module: nn.Module) -> nn.Module:
    """requires_grad False everywhere and eval mode: how every expert RM is used."""
    return module.requires_grad_(False).eval()


@contextlib.contextmanager
def params_frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Build graphs that reach the inputs but none of the `modules`' parameters (None entries are
    skipped), then restore requires_grad.

    Gradients flow *through* these modules to their inputs but never *into* them: the LRM keeps
    trainable parameters for its own fine-tuning, and the student's reward gradient must land neither
    there nor in the VAE (docs/method.md 4.4: the student's gradient goes *through* the LRM, not into it).
    """
    trainable = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


class RewardModel(nn.Module):
    """Base class: cosine of L2-normalised input and text features (HPS, CLIPScore, PickScore, LRM)."""

    input_kind: str = "image"
    name: str = "reward"
    # False where the RM has no temperature of its own (ImageReward): LRM fine-tuning then scales the
    # expert's score by the LRM's exp(logit_scale), as the reference implementation does.
    has_logit_scale: bool = True

    def encode_inputs(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_inputs(self, x: torch.Tensor, prompts: list[str]) -> None:
        channels = INPUT_CHANNELS[self.input_kind]
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != channels:
            what = "images in [0, 1]" if self.input_kind == "image" else "unscaled VAE latents"
            raise ValueError(f"{self.name}: expected {what} of shape (B, {channels}, H, W), "
                             f"got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if isinstance(prompts, str) or len(prompts) != x.shape[0]:
            raise ValueError(f"{self.name}: need one prompt per input ({x.shape[0]}), got "
                             f"{'a string' if isinstance(prompts, str) else len(prompts)}")

    def text_features(self, prompts: list[str], grad: bool = False) -> torch.Tensor:
        """(B, D) float32 L2-normalised text features; each distinct prompt is encoded once."""
        position = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        unique = list(position)
        index = torch.tensor([position[p] for p in prompts], device=self.device)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            feats = self.encode_prompts(unique)                     # (N, D)
        return F.normalize(feats.float(), dim=-1)[index]            # (B, D)

    def similarity(self, x: torch.Tensor, prompts: list[str], text_grad: bool = False) -> torch.Tensor:
        """(B,) cosine of L2-normalised features (docs/method.md 3.3)."""
        self.check_inputs(x, prompts)
        img = F.normalize(self.encode_inputs(x).float(), dim=-1)   # (B, D)
        txt = self.text_features(prompts, grad=text_grad)          # (B, D)
        return (img * txt).sum(-1)

    def score(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B,) reward R(x, prompt); gradients reach x, never the text."""
        return self.similarity(x, prompts)

    def logits(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B,) score * exp(logit_scale): the expert's Bradley-Terry logits (docs/method.md 4.3)."""
        return self.score(x, prompts) * self.logit_scale.exp().float()
