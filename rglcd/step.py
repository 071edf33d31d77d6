"""One RG-LCD training step: latent consistency distillation plus the reward term (docs/method.md 2 and 3).

    out = lcd_step(student, target, teacher, batch, cfg, step, reward=rm)
    accelerator.backward(out.loss)              # or out.loss.backward(): backward is the loop's job
    rglcd.optim.optimizer_update(student, target, optimizer, cfg)   # clip, step, zero_grad, EMA target

Per-example randomness (grid index, noise, w, VAE sample) comes from a generator seeded by
(cfg.train.seed, step, batch["index"][j]) (`example_generators`), so the same examples give the same
terms whatever the batch split or the number of processes. References: LCM paper (Luo et al. 2023)
Algorithm 1, RG-LCD (Li et al. 2024) Sec. 4, diffusers' `train_lcm_distill_sd_wds.py`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from rglcd import solver
from rglcd.losses import lcd_loss_elementwise, reward_loss
from rglcd.models import vae_scale_factor
from rglcd.rewards.base import params_frozen
from rglcd.sample import decode_unscaled, encode_prompts

LATENT_KEYS = ("pixel_values", "latent_moments", "latents")
ENCODE_CHUNK = 8  # images per VAE encoder call


@dataclass
class StepOutput:
    """Loss terms and tensors of one step. Latents are scaled (z = scaling_factor * latent)."""
    loss: torch.Tensor                  # () lcd_loss + reward_loss, with graph
    lcd_loss: torch.Tensor              # () with graph
    reward_loss: torch.Tensor           # () with graph; 0 without a reward
    reward: torch.Tensor | None         # () mean R over the scored examples, detached; None without a reward
    pred: torch.Tensor                  # (B, 4, h, w) student consistency output at t_start, with graph
    target: torch.Tensor                # (B, 4, h, w) EMA-target output at t_end, detached
    z0: torch.Tensor                    # (B, 4, h, w) clean latents
    z_start: torch.Tensor               # (B, 4, h, w) noised latents the student saw
    t_start: torch.Tensor               # (B,) long
    t_end: torch.Tensor                 # (B,) long
    w: torch.Tensor                     # (B,) guidance (LCM form)
    lcd_per_example: torch.Tensor       # (B,) detached; mean = lcd_loss
    rewards: torch.Tensor | None        # (n,) detached R of the first n = reward.batch_size examples


# ---------------------------------------------------------------- per-example randomness

def example_seed(seed: int, step: int, index: int) -> int:
    """A 63-bit seed from (run seed, step, global example index); stable across processes and machines."""
    digest = hashlib.blake2b(f"rglcd:{seed}:{step}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def example_generators(seed: int, step: int, index: torch.Tensor) -> list[torch.Generator]:
    """One CPU generator per example, seeded by `example_seed` (index: LongTensor[B])."""
    return [torch.Generator().manual_seed(example_seed(seed, step, int(i))) for i in index.tolist()]


@dataclass
class Draws:
    grid_index: torch.Tensor   # (B,) long, uniform over the N grid points
    w: torch.Tensor            # (B,) float32, U[w_min, w_max]
    noise: torch.Tensor        # (B, C, h, w) float32, the forward-diffusion eps
    vae_noise: torch.Tensor    # (B, C, h, w) float32, the VAE posterior sample's noise


def draw(generators: list[torch.Generator], num_grid: int, w_min: float, w_max: float,
         latent_shape: tuple[int, ...]) -> Draws:
    """All random draws of a step, per example and always in this order: i, w, eps, VAE noise."""
    rows = []
    for g in generators:
        i = torch.randint(num_grid, (1,), generator=g)
        w = w_min + (w_max - w_min) * torch.rand((1,), generator=g, dtype=torch.float64)
        rows.append((i, w.float(), torch.randn((1, *latent_shape), generator=g),
                     torch.randn((1, *latent_shape), generator=g)))
    return Draws(*(torch.cat(col) for col in zip(*rows)))


# ---------------------------------------------------------------- inputs

def _batch_size(batch: dict) -> int:
    keys = [k for k in LATENT_KEYS if k in batch]
    if len(keys) != 1:
        raise ValueError(f"batch must hold exactly one of {', '.join(LATENT_KEYS)}; got keys {sorted(batch)}")
    size = batch[keys[0]].shape[0]
    captions, index = batch.get("captions"), batch.get("index")
    if not isinstance(captions, (list, tuple)) or len(captions) != size or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"batch['captions'] must be a list of {size} strings")
    if not isinstance(index, torch.Tensor) or index.shape != (size,) or index.dtype != torch.long:
        raise ValueError(f"batch['index'] must be a LongTensor of shape ({size},), got {index!r:.80}")
    return size


def posterior(batch: dict, vae: torch.nn.Module) -> torch.Tensor:
    """(B, 2C, h, w) VAE posterior moments (mean, logvar) of the batch, or (B, C, h, w) latents as given."""
    if "latents" in batch:
        return batch["latents"]
    if "latent_moments" in batch:
        return batch["latent_moments"]
    pixels = batch["pixel_values"]  # (B, 3, H, W) in [-1, 1]
    if pixels.min() < -1.001 or pixels.max() > 1.001:
        raise ValueError(f"batch['pixel_values'] must lie in [-1, 1], got [{pixels.min():.3f}, {pixels.max():.3f}]")
    with torch.no_grad():  # in chunks: the encoder's activations at 512-768 px are large
        chunks = pixels.to(vae.device, vae.dtype).split(ENCODE_CHUNK)
        return torch.cat([vae.encode(x).latent_dist.parameters for x in chunks])  # (B, 2C, h, w)


def clean_latents(moments: torch.Tensor, vae_noise: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """z0 = scaling_factor * (mean + std * noise) from moments, or scaling_factor * latents (docs/method.md 2.1)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    moments = moments.float()
    if moments.shape[1] == vae_noise.shape[1]:  # already latents
        return scaling_factor * moments
    dist = DiagonalGaussianDistribution(moments)
    return scaling_factor * (dist.mean + dist.std * vae_noise.to(moments.device))


def latent_shape(batch: dict, vae: torch.nn.Module) -> tuple[int, int, int]:
    """(C, h, w) of the batch's latents without encoding anything."""
    c = vae.config.latent_channels
    for key, channels in (("latents", c), ("latent_moments", 2 * c)):
        if key in batch:
            x = batch[key]
            if x.ndim != 4 or x.shape[1] != channels:
                raise ValueError(f"batch[{key!r}] must be (B, {channels}, h, w), got {tuple(x.shape)}")
            return (c, *x.shape[2:])
    f = vae_scale_factor(vae)
    pixels = batch["pixel_values"]
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"batch['pixel_values'] must be (B, 3, H, W), got {tuple(pixels.shape)}")
    h, w = pixels.shape[2:]
    if h % f or w % f:
        raise ValueError(f"batch['pixel_values'] size {h}x{w} must be a multiple of the VAE factor {f}")
    return (c, h // f, w // f)


# ---------------------------------------------------------------- models

def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)  # DDP / accelerate wrappers


def _dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def unet_output(unet: torch.nn.Module, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                w_emb: torch.Tensor | None = None) -> torch.Tensor:
    """UNet output (B, 4, h, w) in float32; inputs in the UNet's own dtype (the run's precision, never forced)."""
    dtype = _dtype(unet)
    cond = None if w_emb is None else w_emb.to(dtype)
    return unet(z.to(dtype), t, encoder_hidden_states=text.to(dtype), timestep_cond=cond).sample.float()


# ---------------------------------------------------------------- the reward term (docs/method.md 3)

def decode_through_frozen_vae(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, 4, h, w) -> images in [0, 1] (B, 3, H, W), differentiable w.r.t. z, not the VAE."""
    with params_frozen(vae):
        return decode_unscaled(vae, z / vae.config.scaling_factor)


def score_rewards(reward: torch.nn.Module, vae: torch.nn.Module, pred: torch.Tensor,
                  captions: list[str]) -> torch.Tensor:
    """R (n,) of the student's prediction: through the VAE decode for an image RM, on unscaled latents for an LRM."""
    kind = getattr(reward, "input_kind", None)
    with params_frozen(reward):
        if kind == "image":
            r = reward.score(decode_through_frozen_vae(vae, pred), captions)
        elif kind == "latent":
            r = reward.score(pred / vae.config.scaling_factor, captions)  # no VAE decode (docs/method.md 4)
        else:
            raise ValueError(f"reward model {type(reward).__name__}: input_kind {kind!r} is not allowed; allowed: image, latent")
    if r.shape != (pred.shape[0],):
        raise ValueError(f"reward model {type(reward).__name__}.score returned shape {tuple(r.shape)}, expected ({pred.shape[0]},)")
    return r.float()


def _check_student(student: torch.nn.Module, dim: int) -> None:
    config = getattr(_unwrap(student), "config", None)
    got = getattr(config, "time_cond_proj_dim", dim)
    if got != dim:
        raise ValueError(f"model.time_cond_proj_dim={dim} but the student UNet has time_cond_proj_dim={got}")


def _check_reward(reward: torch.nn.Module, guidance: str) -> None:
    expected = {"direct": "image", "lrm": "latent"}[guidance]
    if getattr(reward, "input_kind", None) != expected:
        raise ValueError(f"reward.guidance={guidance!r} needs a reward model with input_kind {expected!r}, "
                         f"got {type(reward).__name__} with input_kind {getattr(reward, 'input_kind', None)!r}")


# ---------------------------------------------------------------- the step

@dataclass
class Inputs:
    """Everything a step feeds the three UNets, for one batch."""
    z0: torch.Tensor              # (B, 4, h, w) clean scaled latents
    z_start: torch.Tensor         # (B, 4, h, w) z0 noised to t_start
    t_start: torch.Tensor         # (B,) long, on the grid
    t_end: torch.Tensor           # (B,) long, max(t_start - k, 0)
    w: torch.Tensor               # (B,) guidance, LCM form
    w_emb: torch.Tensor           # (B, time_cond_proj_dim)
    text: torch.Tensor            # (B, 77, D) caption embeddings
    uncond: torch.Tensor          # (B, 77, D) empty-prompt embeddings
    alphas_cumprod: torch.Tensor  # (T,) the teacher's DDPM table


def prepare(teacher, batch: dict, cfg, step: int) -> Inputs:
    """Latents, per-example draws, noising and text embeddings of a batch (docs/method.md 2.1-2.4)."""
    d, vae = cfg.distill, teacher.vae
    size, device = _batch_size(batch), vae.device
    num_train = teacher.noise_scheduler.config.num_train_timesteps
    grid = solver.ddim_timesteps(num_train, d.num_ddim_timesteps)  # (N,)
    r = draw(example_generators(cfg.train.seed, step, batch["index"]), len(grid), d.w_min, d.w_max,
             latent_shape(batch, vae))
    z0 = clean_latents(posterior(batch, vae).to(device), r.vae_noise, vae.config.scaling_factor)
    t_start = grid[r.grid_index].to(device)
    abar = teacher.noise_scheduler.alphas_cumprod.to(device)
    w = r.w.to(device)
    with torch.no_grad():  # captions and the empty prompt in one text-encoder call
        embeds = encode_prompts(teacher.tokenizer, teacher.text_encoder, list(batch["captions"]) + [""])
    return Inputs(z0=z0, z_start=solver.add_noise(z0, r.noise.to(device), abar, t_start), t_start=t_start,
                  t_end=solver.previous_timesteps(t_start, solver.skip_size(num_train, d.num_ddim_timesteps)),
                  w=w, w_emb=solver.guidance_embedding(w, cfg.model.time_cond_proj_dim), text=embeds[:size],
                  uncond=embeds[size:].expand(size, -1, -1), alphas_cumprod=abar)


def consistency_pred(unet: torch.nn.Module, z_t: torch.Tensor, t: torch.Tensor, x: Inputs, prediction_type: str,
                     distill_cfg) -> torch.Tensor:
    """f(z_t, w, c, t) = c_skip z_t + c_out x0_hat(unet output) (docs/method.md 2.6 and 2.8), (B, 4, h, w)."""
    out = unet_output(unet, z_t, t, x.text, x.w_emb)
    x0, _ = solver.x0_eps_from_output(out, z_t, x.alphas_cumprod, t, prediction_type)
    return solver.consistency_output(z_t, x0, t, distill_cfg.sigma_data, distill_cfg.timestep_scaling)


@torch.no_grad()
def teacher_prev(teacher, x: Inputs) -> torch.Tensor:
    """Teacher CFG in LCM form and one DDIM step from t_start to t_end (docs/method.md 2.7): z_prev (B, 4, h, w).

    The cond and uncond passes are one forward over the concatenated batch (2B).
    """
    z2, t2 = torch.cat([x.z_start, x.z_start]), torch.cat([x.t_start, x.t_start])
    out = unet_output(teacher.unet, z2, t2, torch.cat([x.text, x.uncond]))  # (2B, 4, h, w)
    x0, eps = solver.x0_eps_from_output(out, z2, x.alphas_cumprod, t2, teacher.prediction_type)
    (x0_c, x0_u), (eps_c, eps_u) = x0.chunk(2), eps.chunk(2)
    x0_w, eps_w = solver.guided(x0_c, x0_u, x.w), solver.guided(eps_c, eps_u, x.w)
    return solver.ddim_step(x0_w, eps_w, x.alphas_cumprod, x.t_end)


def lcd_step(student: torch.nn.Module, target: torch.nn.Module, teacher, batch: dict, cfg, step: int,
             reward: torch.nn.Module | None = None) -> StepOutput:
    """One RG-LCD step on `batch` (docs/method.md 2 and 3); returns the loss terms, nothing is updated.

    batch: exactly one of pixel_values (B, 3, H, W) in [-1, 1], latent_moments (B, 8, h, w) or latents
    (B, 4, h, w) (unscaled); captions list[str]; index LongTensor[B] (global example ids).
    reward: None (plain LCD) or a module with `input_kind` and `score(x, prompts) -> (B,)`; with
    cfg.reward.batch_size = n only the first n examples are scored (a per-process memory knob: set it
    to at least the per-process batch where 1-process and N-process runs must agree exactly).
    Runs in whatever precision the models and an enclosing autocast give; nothing is forced to fp16.
    """
    d = cfg.distill
    _check_student(student, cfg.model.time_cond_proj_dim)
    if reward is not None:
        _check_reward(reward, cfg.reward.guidance)
    x = prepare(teacher, batch, cfg, step)
    pred = consistency_pred(student, x.z_start, x.t_start, x, teacher.prediction_type, d)  # with graph
    z_prev = teacher_prev(teacher, x)
    with torch.no_grad():
        tgt = consistency_pred(target, z_prev, x.t_end, x, teacher.prediction_type, d)
    elem = lcd_loss_elementwise(pred, tgt, d.loss, d.huber_c)  # (B, 4, h, w), docs/method.md 2.9
    lcd = elem.mean()
    per_example = elem.detach().flatten(1).mean(1)  # (B,)
    rewards, r_loss = None, torch.zeros((), device=pred.device)
    if reward is not None:  # docs/method.md 3
        n = min(cfg.reward.batch_size or len(pred), len(pred))
        scores = score_rewards(reward, teacher.vae, pred[:n], list(batch["captions"][:n]))
        r_loss, rewards = reward_loss(scores, cfg.reward.beta), scores.detach()
    return StepOutput(loss=lcd + r_loss, lcd_loss=lcd, reward_loss=r_loss,
                      reward=None if rewards is None else rewards.mean(), pred=pred, target=tgt, z0=x.z0,
                      z_start=x.z_start, t_start=x.t_start, t_end=x.t_end, w=x.w, lcd_per_example=per_example,
                      rewards=rewards)
