"""The toy world's expert reward (`reward.name: toy`, registered in `rglcd.plugins`).

R(x, c) = mean over colour, shape and position of softmax(logits / T)[the caption's attribute], T the
temperature `TEMPERATURE` (docs/method.md 11.3). The classifier is the world's *reward* classifier (not
the held-out judge, `rglcd.toy.classifier`).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from rglcd.rewards.base import RewardModel, freeze
from rglcd.toy.classifier import ToyClassifier, attribute_log_probs, classifier_from_state
from rglcd.toy.data import labels_of


class ToyReward(RewardModel):
    """The expert RM of the toy world (reward interface of `rglcd.rewards`): R = mean over colour, shape
    and position of p(the caption's attribute | image), in [0, 1]; logits = R * exp(logit_scale).

    Differentiable w.r.t. the images; the classifier is frozen. A prompt must be a toy caption.
    """

    input_kind, name = "image", "toy-classifier"

    def __init__(self, classifier: ToyClassifier, temperature: float = 20.0):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("logit_scale", torch.tensor(math.log(temperature)))
        freeze(self)

    def score(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B,) mean attribute probability; x: (B, 3, 32, 32) images in [0, 1]."""
        self.check_inputs(x, prompts)
        labels = labels_of(list(prompts)).to(x.device)
        return attribute_log_probs(self.classifier, x.to(self.dtype), labels).exp().mean(1).float()


def load_toy_reward(weights: str | None, *, antialias: bool = False, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, cache_dir: str | None = None) -> ToyReward:
    """The toy expert as a registered reward (`reward.name: toy`, see `rglcd.plugins`).

    weights: a toy world directory (`rglcd toy run` caches them as <cache-dir>/world-<key>) or its
    classifiers.safetensors. antialias and cache_dir do not apply (32 px images, local weights only).
    """
    if weights is None:
        raise ValueError("reward 'toy' needs reward.weights: a toy world directory (built by `rglcd toy run` "
                         "under its --cache-dir) or its classifiers.safetensors")
    path = Path(weights).expanduser()
    file = path / "classifiers.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"reward 'toy': {str(file)!r} does not exist; allowed: a toy world directory "
                                f"or its classifiers.safetensors")
    state = {k.removeprefix("reward."): v for k, v in load_file(str(file)).items() if k.startswith("reward.")}
    return ToyReward(classifier_from_state(state)).to(device, dtype)
