"""The toy world's expert reward (`reward.name: toy`, registered in `rglcd.plugins`).

R(x, c) = mean over colour, shape and position of softmax(logits / T)[the caption's attribute], T the
temperature `TEMPERATURE` (docs/method.md 11.7). The classifier is the world's *reward* classifier (not
the held-out judge, `rglcd.toy.classifier`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from rglcd.models.sources import checkpoint_dir
from rglcd.rewards.base import RewardModel, freeze
from rglcd.toy.classifier import ToyClassifier, classifier_from_state
from rglcd.toy.data import labels_of


# The classifier's logits are divided by this before the softmax. Trained to near-zero loss, the classifier
# gives clean data p ~ 0.99 for every attribute, so a reward of raw probabilities sits at its ceiling for
# any student that draws the right shape (the LCD-only student scored 0.965 of 1) and RG-LCD could only
# add +0.01. Tempered, R keeps rising as the drawing becomes more unambiguous, which leaves RG-LCD room.
TEMPERATURE = 8.0


class ToyReward(RewardModel):
    """The expert RM of the toy world (reward interface of `rglcd.rewards`): R = mean over colour, shape
    and position of softmax(logits / temperature)[the caption's value], in [0, 1]; the reward's logits
    (`RewardModel.logits`) are R * exp(logit_scale).

    Differentiable w.r.t. the images; the classifier is frozen. A prompt must be a toy caption.
    """

    input_kind, name = "image", "toy-classifier"

    def __init__(self, classifier: ToyClassifier, temperature: float = TEMPERATURE, logit_scale: float = 20.0):
        super().__init__()
        self.classifier, self.temperature = classifier, temperature
        self.register_buffer("logit_scale", torch.tensor(math.log(logit_scale)))
        freeze(self)

    def score(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B,) mean tempered attribute probability; x: (B, 3, 32, 32) images in [0, 1]."""
        self.check_inputs(x, prompts)
        labels = labels_of(list(prompts)).to(x.device)
        logits = [lg / self.temperature for lg in self.classifier(x.to(self.dtype))]
        picked = [F.log_softmax(lg, 1).gather(1, labels[:, i:i + 1])[:, 0] for i, lg in enumerate(logits)]
        return torch.stack(picked, 1).exp().mean(1).float()                      # (B, 3) -> (B,)


def load_toy_reward(weights: str | None, *, antialias: bool = False, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, cache_dir: str | None = None) -> ToyReward:
    """The toy expert as a registered reward (`reward.name: toy`, see `rglcd.plugins`).

    weights: a toy world directory (`rglcd toy run` caches them as <cache-dir>/world-<key>) or its
    classifiers.safetensors, or `toy:world` (the default world under <cache_dir>/toy, built if missing;
    `rglcd.toy.sources`). antialias does not apply (32 px images).
    """
    if weights is None:
        raise ValueError("reward 'toy' needs reward.weights: a toy world directory (built by `rglcd toy run` "
                         "under its --cache-dir) or its classifiers.safetensors")
    path = checkpoint_dir(weights, cache_dir or "~/.cache/rglcd")      # toy:world resolves as any model scheme
    file = path / "classifiers.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"reward 'toy': {str(file)!r} does not exist; allowed: a toy world directory "
                                f"or its classifiers.safetensors")
    state = {k.removeprefix("reward."): v for k, v in load_file(str(file)).items() if k.startswith("reward.")}
    return ToyReward(classifier_from_state(state)).to(device, dtype)
