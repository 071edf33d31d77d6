"""Build, cache and load the toy world: data, VAE, teacher, reward and judge classifiers, pretrained LRM.

    world = load_or_build_world(WorldConfig(), cache_dir="~/.cache/rglcd/toy", device="cpu")

Build order: render the data -> train the tiny VAE (its scaling factor set to 1 / std of the latents,
as SD's 0.18215 was chosen) -> train both classifiers on real images and their VAE reconstructions ->
train the teacher (UNet + CLIP text encoder, DDPM eps-prediction, caption dropout) until its 50-step
DDIM+CFG samples satisfy the judge -> contrastively pretrain the LRM with `rglcd.lrm.pretrain_lrm`.
Colour and shape are learnt easily; "on the left" needed two choices: a third UNet level (`toy_unet`)
and token embeddings initialised at std 1 (`toy_text_encoder`). With the third level and CLIP's init
(std 0.02), position stayed at chance (0.33) after 1500 steps; with both, the judge accuracy (all three
attributes) was 0.979 after 1000 steps (benchmarks/toy/RESULTS.md). The v-style weighting of the eps
loss (`loss_weight`) was on in both runs; its own effect, and std 1 without the third level, were not
measured in a recorded run.
The world is saved as one directory keyed by `WorldConfig.key()`: `teacher/` (a stock diffusers
Stable Diffusion directory), `classifiers.safetensors`, `moments.safetensors`, `lrm/`, `world.json`.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rglcd import solver
from rglcd.fsutil import build_once
from rglcd.lrm import pretrain_lrm
from rglcd.models import ema_update, load_teacher, write_clip_tokenizer
from rglcd.models.tiny import sd_scheduler, tiny_text_encoder, tiny_vae
from rglcd.sample import SamplingModel, ddim_sample
from rglcd.toy.classifier import ToyClassifier, predict, train_classifier
from rglcd.toy.config import WORLD_FORMAT, WorldConfig
from rglcd.toy.data import ToyData, all_labels, caption, labels_of, make_dataset, prompt_set

log = logging.getLogger(__name__)


@dataclass
class World:
    path: Path
    config: WorldConfig
    teacher: Any                    # rglcd.models.Teacher, frozen
    train: ToyData
    reference: ToyData
    moments: torch.Tensor           # (N, 8, 16, 16) VAE posterior moments of `train`
    reward_classifier: ToyClassifier
    judge: ToyClassifier
    lrm_dir: Path
    info: dict[str, Any]


# ---------------------------------------------------------------- VAE

def train_vae(vae, images: torch.Tensor, cfg: WorldConfig, device: torch.device) -> list[float]:
    """MSE reconstruction of images in [-1, 1] + kl_weight * KL per latent dimension."""
    g = torch.Generator().manual_seed(cfg.seed + 10)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    losses = []
    for _ in range(cfg.vae_steps):
        x = images[torch.randint(images.shape[0], (cfg.vae_batch_size,), generator=g)].to(device) * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        rec = vae.decode(z).sample
        kl = post.kl() / post.mean[0].numel()                                    # (B,) per dimension
        loss = F.mse_loss(rec, x) + cfg.vae_kl_weight * kl.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def encode_moments(vae, images: torch.Tensor, device: torch.device, chunk: int = 256) -> torch.Tensor:
    """(N, 8, h, w) posterior moments (mean, logvar) of images in [0, 1]."""
    return torch.cat([vae.encode(part.to(device) * 2 - 1).latent_dist.parameters.cpu() for part in images.split(chunk)])


@torch.no_grad()
def decode_posterior_means(vae, moments: torch.Tensor, device: torch.device, chunk: int = 256) -> torch.Tensor:
    """Images in [0, 1] decoded from the posterior means (the VAE's reconstructions)."""
    out = [vae.decode(part[:, :4].to(device)).sample.cpu() for part in moments.split(chunk)]
    return (torch.cat(out) / 2 + 0.5).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    return float(10 * torch.log10(1.0 / F.mse_loss(a, b)))


# ---------------------------------------------------------------- teacher

def toy_text_encoder(embedding_std: float):
    """The tiny factory's CLIP text encoder with its token embeddings drawn with std `embedding_std`.

    At CLIP's init (std 0.02) the hidden states of "on the left" and "on the right" differ 5x less than
    those of "red" and "blue"; the UNet then never starts to use the position words, so they never get a
    gradient that would separate them, and the teacher places shapes wherever the noise suggests."""
    encoder = tiny_text_encoder()
    torch.nn.init.normal_(encoder.get_input_embeddings().weight, std=embedding_std)
    return encoder


def toy_unet(cross_attention_dim: int = 32):
    """The teacher UNet: the tiny factory's blocks plus a third level (16 -> 8 -> 4 latent px, cross-attention
    at 8 and 4). The tiny factory's two levels see too little of the image to place a shape "on the left":
    the third level's receptive field covers the whole latent, and zero padding there tells where the edges are."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32)


def teacher_sampling_model(unet, vae, text_encoder, tokenizer, prediction_type: str):
    return SamplingModel(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                         scheduler_config=dict(sd_scheduler(prediction_type).config))


@torch.no_grad()
def judge_correct(judge: ToyClassifier, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """(N, 3) bool: the judge reads colour, shape, position as the prompt says."""
    return predict(judge, images.to(next(judge.parameters()).device)).cpu() == labels_of(prompts)


def judge_accuracy(judge: ToyClassifier, images: torch.Tensor, prompts: list[str]) -> float:
    """Share of images whose colour, shape and position the judge reads as the prompt says."""
    return float(judge_correct(judge, images, prompts).all(1).float().mean())


def teacher_check(model, judge: ToyClassifier, guidance: float, seed: int) -> dict[str, float]:
    """Judge accuracy (all three attributes, and each) of 50-step DDIM+CFG samples, one per caption (48)."""
    prompts = prompt_set(1)
    out = ddim_sample(model, prompts, 50, guidance, torch.Generator().manual_seed(seed))
    correct = judge_correct(judge, out.images, prompts).float()
    return {"accuracy": float(correct.all(1).float().mean()),
            **{f"{name}_accuracy": float(correct[:, i].mean()) for i, name in enumerate(("colour", "shape", "position"))}}


def loss_weight(abar: torch.Tensor, max_weight: float) -> torch.Tensor:
    """Per-example weight of the eps-prediction MSE: (1 + snr) / snr, capped at `max_weight`.

    eps error e means an x0 error e / sqrt(snr), so plain eps MSE weighs the x0 error by snr: at the
    high noise levels where the layout of a sample is decided (SD's schedule: snr 0.005 at t = 999) the
    teacher is barely asked to get it right, and then places shapes wherever the noise suggests, ignoring
    "on the left". This weight makes the loss the v-prediction loss (x0 error weighted by 1 + snr;
    Salimans & Ho 2022) while the network still predicts eps. abar: (B,) -> (B,)."""
    snr = abar / (1 - abar)
    return ((1 + snr) / snr).clamp(max=max_weight)


def teacher_loss(out: torch.Tensor, z0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor, t: torch.Tensor,
                 cfg: WorldConfig) -> torch.Tensor:
    """eps-prediction: MSE to eps weighted by `loss_weight`; v-prediction: MSE to v = a eps - s z0."""
    if cfg.teacher_prediction_type == "epsilon":
        per_example = (out - eps).square().mean(dim=(1, 2, 3))                  # (B,)
        return (loss_weight(abar[t], cfg.teacher_max_weight) * per_example).mean()
    a, s = solver.alpha_sigma(abar, t, z0)
    return F.mse_loss(out, (a * eps - s * z0).float())


def _ema_decay(step: int, decay: float) -> float:
    return min(decay, (1 + step) / (10 + step))   # warm-up as diffusers' EMAModel


def train_teacher(parts: dict, moments: torch.Tensor, captions: list[str], judge: ToyClassifier,
                  cfg: WorldConfig, device: torch.device) -> dict[str, Any]:
    """DDPM eps-prediction on scaled latents z = sf * sample(moments), UNet and text encoder together.

    Returns the EMA models in `parts` (replacing the trained ones) and the training record.
    """
    unet, text_encoder, tokenizer, vae = parts["unet"], parts["text_encoder"], parts["tokenizer"], parts["vae"]
    sf, abar = vae.config.scaling_factor, sd_scheduler(cfg.teacher_prediction_type).alphas_cumprod.to(device)
    table = sorted(set(captions)) + [""]                                        # K captions + the empty one
    ids = tokenizer(table, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)                   # (K + 1, 77)
    which = torch.tensor([table.index(c) for c in captions])
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.teacher_lr, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200))
    ema_unet, ema_text = (copy.deepcopy(m).requires_grad_(False).eval() for m in (unet, text_encoder))
    g = torch.Generator().manual_seed(cfg.seed + 20)
    losses, checks, step = [], [], 0
    unet.train(), text_encoder.train()
    while step < cfg.teacher_max_steps:
        step += 1
        idx = torch.randint(moments.shape[0], (cfg.teacher_batch_size,), generator=g)
        mean, logvar = moments[idx].chunk(2, dim=1)                             # (B, 4, h, w) each
        z = sf * (mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g)).to(device)
        t = torch.randint(abar.shape[0], (z.shape[0],), generator=g).to(device)
        eps = torch.randn(z.shape, generator=g).to(device)
        cap = torch.where(torch.rand(z.shape[0], generator=g) < cfg.caption_dropout, len(table) - 1, which[idx])
        out = unet(solver.add_noise(z, eps, abar, t), t, encoder_hidden_states=text_encoder(ids[cap.to(device)])[0]).sample
        loss = teacher_loss(out, z, eps, abar, t, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        warmup.step()
        ema_update(ema_unet, unet, _ema_decay(step, cfg.teacher_ema_decay))
        ema_update(ema_text, text_encoder, _ema_decay(step, cfg.teacher_ema_decay))
        losses.append(loss.item())
        if step % cfg.teacher_check_every == 0 or step == cfg.teacher_max_steps:
            model = teacher_sampling_model(ema_unet, vae, ema_text, tokenizer, cfg.teacher_prediction_type)
            checks.append({"step": step, **teacher_check(model, judge, cfg.teacher_guidance, cfg.seed),
                           "loss_recent": sum(losses[-100:]) / len(losses[-100:])})
            log.info("toy teacher step %d: %s", step, checks[-1])
            if checks[-1]["accuracy"] >= cfg.teacher_target_accuracy:
                break
    parts["unet"], parts["text_encoder"] = ema_unet, ema_text
    return {"steps": step, "checks": checks, "first_loss": losses[0], "last_loss_mean100": checks[-1]["loss_recent"],
            "reached_target": checks[-1]["accuracy"] >= cfg.teacher_target_accuracy}


def save_teacher(parts: dict, out: Path, prediction_type: str) -> Path:
    """A stock diffusers Stable Diffusion directory (loads with `rglcd.models.load_teacher`)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                                   unet=parts["unet"], scheduler=sd_scheduler(prediction_type), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    device = pipe.device
    pipe.to("cpu").save_pretrained(str(out), safe_serialization=True)
    pipe.to(device)
    return out


# ---------------------------------------------------------------- LRM

def lrm_batches(moments: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int, seed: int):
    """Contrastive batches (moments (B, 8, h, w), captions) whose B captions are all different
    (48 combinations; a repeated caption would be a false negative of the InfoNCE loss)."""
    combos = all_labels()
    if batch_size > len(combos):
        raise ValueError(f"lrm_pretrain_batch_size: {batch_size} exceeds the {len(combos)} distinct toy captions")
    key = (labels * torch.tensor([100, 10, 1])).sum(1)
    members = [torch.nonzero(key == 100 * c + 10 * s + p)[:, 0] for c, s, p in combos]
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        chosen = torch.randperm(len(combos), generator=g)[:batch_size].tolist()
        idx = [int(members[k][torch.randint(len(members[k]), (1,), generator=g)]) for k in chosen if len(members[k])]
        yield moments[idx], [caption(combos[k]) for k in chosen if len(members[k])]


# ---------------------------------------------------------------- build / load

def _classifier_state(reward: ToyClassifier, judge: ToyClassifier) -> dict[str, torch.Tensor]:
    state = {f"reward.{k}": v for k, v in reward.state_dict().items()}
    state.update({f"judge.{k}": v for k, v in judge.state_dict().items()})
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def build_world(cfg: WorldConfig, out: Path, device: torch.device, method_cfg) -> dict[str, Any]:
    """Train everything and write the world directory `out` (see the module docstring)."""
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    timings, t0 = {}, time.perf_counter()
    data, ref = make_dataset(cfg.train_images, cfg.seed), make_dataset(cfg.reference_images, cfg.seed + 1)
    torch.manual_seed(cfg.seed)
    vae = tiny_vae().to(device)
    vae_losses = train_vae(vae, data.images, cfg, device)
    vae.eval().requires_grad_(False)
    moments = encode_moments(vae, data.images, device)                          # (N, 8, h, w)
    vae.register_to_config(scaling_factor=float(1.0 / moments[:, :4].std()))
    recon_ref = decode_posterior_means(vae, encode_moments(vae, ref.images, device), device)
    timings["vae_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    x = torch.cat([data.images, decode_posterior_means(vae, moments, device)])            # real + reconstructions
    y = torch.cat([data.labels, data.labels])
    reward_cls, reward_losses = train_classifier(x, y, cfg.classifier_steps, cfg.seed + 2, cfg.reward_width,
                                                 device=device)
    judge, judge_losses = train_classifier(x, y, cfg.classifier_steps, cfg.seed + 3, cfg.judge_width,
                                           noise=cfg.judge_noise, device=device)
    timings["classifiers_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed + 4)
    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(out / "tokenizer-src")))
    parts = {"unet": toy_unet().to(device), "text_encoder": toy_text_encoder(cfg.text_embedding_std).to(device), "tokenizer": tokenizer,
             "vae": vae}
    teacher_record = train_teacher(parts, moments, data.captions, judge, cfg, device)
    save_teacher(parts, out / "teacher", cfg.teacher_prediction_type)
    shutil.rmtree(out / "tokenizer-src")
    timings["teacher_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    batches = lrm_batches(moments, data.labels, cfg.lrm_pretrain_steps, cfg.lrm_pretrain_batch_size, cfg.seed + 5)
    lrm_record = pretrain_lrm(method_cfg, batches, out / "lrm", vae=vae, device=device)
    timings["lrm_s"] = time.perf_counter() - t0

    save_file(_classifier_state(reward_cls, judge), str(out / "classifiers.safetensors"))
    save_file({"moments": moments.contiguous()}, str(out / "moments.safetensors"))
    ref_acc = {name: judge_accuracy(m, ref.images, ref.captions) for name, m in (("reward", reward_cls), ("judge", judge))}
    recon_acc = judge_accuracy(judge, recon_ref, ref.captions)
    return {
        "format": WORLD_FORMAT, "config": asdict(cfg), "key": cfg.key(), "device": str(device), "timings_s": timings,
        "vae": {"steps": cfg.vae_steps, "last_loss": vae_losses[-1], "scaling_factor": vae.config.scaling_factor,
                "reference_psnr_db": psnr(recon_ref, ref.images)},
        "classifiers": {"reward_last_loss": reward_losses[-1], "judge_last_loss": judge_losses[-1],
                        "reference_accuracy": ref_acc, "judge_accuracy_on_vae_reconstructions": recon_acc},
        "teacher": teacher_record,
        "lrm": {k: v for k, v in lrm_record.items() if k != "losses"},
    }


def _load(path: Path, cfg: WorldConfig, info: dict[str, Any], device: torch.device) -> World:
    from safetensors.torch import load_file

    teacher = load_teacher(str(path / "teacher"), device=device)
    state = load_file(str(path / "classifiers.safetensors"))
    classifiers = {}
    for name, width in (("reward", cfg.reward_width), ("judge", cfg.judge_width)):
        model = ToyClassifier(width)
        model.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(name + ".")})
        classifiers[name] = model.to(device).eval().requires_grad_(False)
    moments = load_file(str(path / "moments.safetensors"))["moments"]
    return World(path, cfg, teacher, make_dataset(cfg.train_images, cfg.seed),
                 make_dataset(cfg.reference_images, cfg.seed + 1), moments, classifiers["reward"],
                 classifiers["judge"], path / "lrm", info)


def world_path(cfg: WorldConfig, cache_dir: str | Path) -> Path:
    """Where the world of `cfg` lives (or will) under `cache_dir`: world-<key>."""
    return Path(os.path.expanduser(str(cache_dir))) / f"world-{cfg.key()}"


def ensure_world(cfg: WorldConfig, cache_dir: str | Path, device: str | torch.device, method_cfg) -> Path:
    """The world directory of `cfg`, built once (`rglcd.fsutil.build_once`: one build per key, even when
    several processes ask at the same time)."""
    final = world_path(cfg, cache_dir)
    # the teacher is recorded at its published path, not the temporary build folder
    method_cfg = replace(method_cfg, model=replace(method_cfg.model, teacher=str(final / "teacher")))

    def build(tmp: Path) -> None:
        info = build_world(cfg, tmp, torch.device(device), method_cfg)
        (tmp / "world.json").write_text(json.dumps(info, indent=2))

    return build_once(final.parent, final.name, build, ready=lambda path: (path / "world.json").is_file())


def load_or_build_world(cfg: WorldConfig, cache_dir: str | Path, device: str | torch.device, method_cfg) -> World:
    """The cached world for `cfg`, loaded onto `device` (built first if missing)."""
    path = ensure_world(cfg, cache_dir, device, method_cfg)
    return _load(path, cfg, json.loads((path / "world.json").read_text()), torch.device(device))
