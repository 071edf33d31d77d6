"""Online fine-tuning of the LRM against the expert RM, every RG-LCD step (docs/method.md 4.3).

Per step, on a sub-batch of n = cfg.lrm.batch_size captions, three latents per caption (all unscaled,
detached): P = the student's consistency output, T = the EMA target's output, G = the real latent.
The expert scores their VAE decodes (no grad) and gives logits; the LRM learns to agree with the
expert's 2-way (Bradley-Terry) preference on each pair (P,T), (P,G), (T,G):

    L = sum over pairs (a, b) of KL( softmax([e_a, e_b]) || softmax([l_a, l_b]) )   (batchmean)

The 3n (latent, caption) rows are shuffled together (the reference shuffled latents but not captions
for non-HPS experts, docs/method.md 7.3). Works on a plain module (no DDP `.module`); with
torch.distributed initialised, gradients are averaged across processes so all LRM copies stay equal.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from rglcd.lrm.model import LatentRewardModel, unlock_for_finetune
from rglcd.sample import decode_unscaled

PAIRS = ((0, 1), (0, 2), (1, 2))           # (P, T), (P, G), (T, G)
MAX_LOGIT_SCALE = math.log(100.0)          # CLIP's clamp of the learned temperature


def make_lrm_optimizer(lrm: LatentRewardModel, cfg) -> torch.optim.AdamW:
    """Unlock the fine-tuned parts (`unlock_for_finetune`) and return the LRM's own AdamW (lr cfg.lrm.lr)."""
    unlock_for_finetune(lrm, cfg.lrm.unlocked_visual_blocks, cfg.lrm.unlocked_text_blocks)
    params = [p for p in lrm.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lrm.lr, betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
                             eps=cfg.train.adam_eps, weight_decay=cfg.train.weight_decay)


def permute_with_captions(latents: torch.Tensor, captions: list[str], generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Shuffle rows of (latents, captions) together. Returns (latents[perm], captions[perm], perm)."""
    perm = torch.randperm(latents.shape[0], generator=generator)
    return latents[perm.to(latents.device)], [captions[i] for i in perm.tolist()], perm


def unpermute(values: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inverse of `permute_with_captions` on per-row values: out[perm[k]] = values[k] (differentiable)."""
    return values[torch.argsort(perm).to(values.device)]


@torch.no_grad()
def decode_unscaled_chunked(vae: torch.nn.Module, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    """Unscaled latents (N, 4, h, w) -> images (N, 3, H, W) in [0, 1], `chunk` at a time, no grad."""
    return torch.cat([decode_unscaled(vae, part.to(vae.device)) for part in latents.split(chunk)])


@torch.no_grad()
def expert_logits(expert: torch.nn.Module, vae: torch.nn.Module | None, latents: torch.Tensor,
                  captions: list[str], lrm: LatentRewardModel, chunk: int) -> torch.Tensor:
    """(N,) expert logits of decoded latents. Experts without a temperature (ImageReward) are scaled by
    the LRM's exp(logit_scale), detached, as in the reference implementation."""
    x = latents if expert.input_kind == "latent" else decode_unscaled_chunked(vae, latents, chunk)
    if getattr(expert, "has_logit_scale", True):
        return torch.cat([expert.logits(a, list(c)) for a, c in _chunks(x, captions, chunk)]).float()
    scores = torch.cat([expert.score(a, list(c)) for a, c in _chunks(x, captions, chunk)]).float()
    return scores * lrm.logit_scale.detach().exp().float().to(scores.device)


def _chunks(x: torch.Tensor, captions: list[str], size: int):
    for start in range(0, x.shape[0], size):
        yield x[start:start + size], captions[start:start + size]


def pair_kl(expert: torch.Tensor, lrm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over the pairs of KL(expert || LRM) between 2-way softmaxes (batchmean), and pair accuracy.

    expert, lrm: (3, n) logits of rows P, T, G. Accuracy: how often both prefer the same member.
    """
    loss, agree = lrm.new_zeros(()), []
    for a, b in PAIRS:
        target = F.log_softmax(torch.stack([expert[a], expert[b]], -1), -1)          # (n, 2)
        pred = F.log_softmax(torch.stack([lrm[a], lrm[b]], -1), -1)                  # (n, 2)
        loss = loss + F.kl_div(pred, target, reduction="batchmean", log_target=True)
        agree.append((target.argmax(-1) == pred.argmax(-1)).float())
    return loss, torch.cat(agree).mean()


def _average_gradients(params: list[torch.Tensor]) -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(dist.get_world_size())


def lrm_finetune_step(lrm: LatentRewardModel, optimizer: torch.optim.Optimizer, expert: torch.nn.Module,
                      vae: torch.nn.Module | None, pred: torch.Tensor, target: torch.Tensor, real: torch.Tensor,
                      prompts: list[str], cfg, generator: torch.Generator | None = None,
                      backward: Callable[[torch.Tensor], None] | None = None) -> dict[str, float]:
    """One LRM update against the expert (docs/method.md 4.3). pred/target/real: (B, 4, h, w) UNSCALED latents
    (z / scaling_factor) of the student, the EMA target and the data; prompts: B captions.
    `backward`: e.g. `accelerator.backward` when the optimizer was prepared by accelerate (loss scaling);
    default `loss.backward()`. A wrapped LRM (DDP, accelerate) is unwrapped; gradients are averaged
    across processes here. Returns {"lrm_loss", "lrm_acc", "lrm_logit_scale"}."""
    if not isinstance(lrm, LatentRewardModel):
        lrm = getattr(lrm, "module", lrm)      # tolerate a wrapper; nothing here needs one
    if not (pred.shape == target.shape == real.shape) or len(prompts) != pred.shape[0]:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)}, real {tuple(real.shape)} and "
                         f"{len(prompts)} prompts must describe the same batch")
    n = min(cfg.lrm.batch_size, pred.shape[0])
    idx = torch.randperm(pred.shape[0], generator=generator)[:n].tolist()
    latents = torch.cat([pred[idx], target[idx], real[idx]]).detach().float()       # (3n, 4, h, w): P, T, G
    captions = [prompts[i] for i in idx] * 3
    latents, captions, perm = permute_with_captions(latents, captions, generator)

    e = unpermute(expert_logits(expert, vae, latents, captions, lrm, chunk=n), perm).view(3, n)
    lrm_logits = lrm.train_logits(latents.to(lrm.device), captions)                # (3n,) with graph
    loss, acc = pair_kl(e.to(lrm_logits.device), unpermute(lrm_logits, perm).view(3, n))

    params = [p for p in lrm.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)   # also drops anything the student's backward left behind
    (backward or torch.Tensor.backward)(loss)
    _average_gradients(params)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        lrm.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return {"lrm_loss": loss.item(), "lrm_acc": acc.item(), "lrm_logit_scale": lrm.logit_scale.item()}
