"""Measuring a row of the toy table: expert reward, FID-like distance, judge accuracy, HF energy, latency.

Every image set is drawn with the same per-image seeds (`rglcd.evaluate.generate.seeded_generators`) for
the same prompts and rounded to 8 bits first, so rows differ only by the model and the sampler.
- reward: the expert RM (`ToyReward`, the one RG-LCD optimises), mean over images.
- accuracy: the held-out judge classifier reads colour, shape and position as the prompt says.
- fd: Frechet distance between the judge's penultimate features (128-d) of the images and of held-out
  real images (clean-fid's `frechet_distance`, via `rglcd.evaluate.fid.frechet`); an FID with the toy
  judge in place of Inception.
- hf_ratio: `rglcd.evaluate.spectrum.high_frequency_ratio` against the teacher's 50-step images of the
  same prompts and seeds (> 1: more energy above the cutoff than the teacher).
"""
from __future__ import annotations

import numpy as np
import torch

from rglcd.evaluate.fid import frechet, gaussian
from rglcd.evaluate.generate import quantize, seeded_generators
from rglcd.evaluate.spectrum import high_frequency_ratio
from rglcd.toy.classifier import ToyClassifier, features
from rglcd.toy.reward import ToyReward
from rglcd.toy.data import labels_of
from rglcd.toy.world import judge_accuracy


def sample_images(sampler, prompts: list[str], seed: int, batch_size: int = 96) -> torch.Tensor:
    """(N, 3, H, W) 8-bit-rounded images; `sampler(prompts, generators) -> images in [0, 1]`."""
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        out.append(quantize(sampler(batch, seeded_generators(seed, start, len(batch)))))
    return torch.cat(out)


def gaussian_stats(feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of (N, D) features, as `rglcd.evaluate.fid.gaussian` computes them for FID."""
    return gaussian(feats.double().cpu().numpy())


def frechet_to(feats: torch.Tensor, reference: tuple[np.ndarray, np.ndarray]) -> float:
    mu, sigma = gaussian_stats(feats)
    return frechet(mu, sigma, *reference)


@torch.no_grad()
def measure(images: torch.Tensor, prompts: list[str], reward: ToyReward, judge: ToyClassifier,
            reference: tuple[np.ndarray, np.ndarray], teacher_images: torch.Tensor, cutoff: float) -> dict:
    """The table's quality columns for one image set (latency is measured separately)."""
    device = next(judge.parameters()).device
    scores = torch.cat([reward.score(x.to(device), list(p)) for x, p in _chunks(images, prompts)]).cpu()
    hf = high_frequency_ratio(images, teacher_images, cutoff)
    return {"reward": scores.mean().item(), "reward_std": scores.std().item(),
            "accuracy": judge_accuracy(judge, images, prompts),
            "fd": frechet_to(features(judge, images.to(device)), reference),
            "hf_ratio": hf["ratio"], "hf_share": hf["student_share"], "num_images": int(images.shape[0])}


def data_images(world, prompts: list[str], seed: int = 0) -> torch.Tensor:
    """One real training image per prompt, with the prompt's attributes, picked with `seed`: the "data" row,
    the ceiling the models aim at (its FD is the distance between two samples of real images)."""
    labels, want = world.train.labels, labels_of(prompts)
    g = torch.Generator().manual_seed(world.config.seed + 7 + seed)
    picks = []
    for row in want:
        match = torch.nonzero((labels == row).all(1))[:, 0]
        picks.append(int(match[torch.randint(len(match), (1,), generator=g)]))
    return quantize(world.train.images[picks])


def _chunks(images: torch.Tensor, prompts: list[str], size: int = 256):
    for start in range(0, len(prompts), size):
        yield images[start:start + size], prompts[start:start + size]

