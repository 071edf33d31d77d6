"""The LCD solver: DDIM grid, boundary scalings, guidance embedding, x0/eps conversions (docs/method.md 2, 5).

Pure tensor functions, no models and no I/O. They follow the LCM paper (Luo et al. 2023, eqs. 5-9),
diffusers' `LCMScheduler` and its LCD training example, so that what the student learns here is
exactly what stock diffusers samples from it.

Conventions: `t` are integer DDPM timesteps in [0, T-1]; `alphas_cumprod` is the teacher's DDPM
table abar_t of shape (T,); a = sqrt(abar_t), s = sqrt(1 - abar_t).
"""
from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def ddim_timesteps(num_train_timesteps: int = 1000, num_ddim_timesteps: int = 50) -> torch.Tensor:
    """The DDIM solver grid tau_i = k*(i+1) - 1, i = 0..N-1, k = T // N (docs/method.md 2.2): {19, 39, ..., 999}."""
    if not 0 < num_ddim_timesteps <= num_train_timesteps:
        raise ValueError(f"num_ddim_timesteps: {num_ddim_timesteps} must be in [1, {num_train_timesteps}]")
    k = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.long) * k - 1  # (N,)


def skip_size(num_train_timesteps: int = 1000, num_ddim_timesteps: int = 50) -> int:
    """The skipping step k = T // N of one DDIM grid step (20 for SD with N = 50)."""
    return num_train_timesteps // num_ddim_timesteps


def previous_timesteps(t: torch.Tensor, k: int) -> torch.Tensor:
    """t_end = max(tau - k, 0): the previous grid point, clamped at 0 for the first one (docs/method.md 2.2)."""
    return (t - k).clamp(min=0)


def boundary_scalings(t: torch.Tensor | float, sigma_data: float = 0.5,
                      timestep_scaling: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the consistency boundary condition (docs/method.md 2.5).

    u = timestep_scaling * t;  c_skip = sigma_data^2 / (u^2 + sigma_data^2);  c_out = u / sqrt(u^2 + sigma_data^2).
    c_skip(0) = 1, c_out(0) = 0, so f(z, 0) = z. Same as `LCMScheduler.get_scalings_for_boundary_condition_discrete`.
    """
    u = torch.as_tensor(t, dtype=torch.float64) * timestep_scaling
    denom = u.square() + sigma_data ** 2
    return (sigma_data ** 2 / denom).float(), (u / denom.sqrt()).float()


def guidance_embedding(w: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """Sinusoidal embedding of 1000*w, (B,) -> (B, dim), fed to the student as `timestep_cond` (docs/method.md 2.4).

    Frequencies exp(-ln(1e4) * j / (dim/2 - 1)), j = 0..dim/2-1, then [sin, cos] (VDM; identical to
    `LatentConsistencyModelPipeline.get_guidance_scale_embedding`). Odd `dim` is zero-padded.
    """
    if w.ndim != 1:
        raise ValueError(f"w must have shape (B,), got {tuple(w.shape)}")
    half = dim // 2
    step = torch.log(torch.tensor(10000.0)) / (half - 1)  # float32, op for op as diffusers computes it
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -step)  # (half,)
    angles = (w * 1000.0).float()[:, None] * freqs.to(w.device)[None, :]  # (B, half)
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)  # (B, 2*half)
    return torch.nn.functional.pad(emb, (0, dim % 2))  # (B, dim)


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) (as many trailing 1s as `like` has extra dims), in `like`'s dtype and device."""
    return values.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def alpha_sigma(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a = sqrt(abar_t), s = sqrt(1 - abar_t) for per-example timesteps t (B,), shaped to broadcast with `like`."""
    abar = alphas_cumprod.to(t.device)[t].double()  # (B,)
    return _per_example(abar.sqrt(), like), _per_example((1 - abar).sqrt(), like)


def add_noise(z0: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Forward diffusion z_t = a z0 + s eps (DDPM q(z_t | z0); docs/method.md 2.3). Shapes (B, C, h, w)."""
    a, s = alpha_sigma(alphas_cumprod, t, z0)
    return a * z0 + s * eps


def x0_eps_from_output(output: torch.Tensor, z_t: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor,
                       prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from a UNet output under its parameterisation (docs/method.md 2.6-2.7, 7.1).

    epsilon:      x0 = (z - s*out) / a,   eps = out
    v_prediction: x0 = a*z - s*v,         eps = a*v + s*z
    sample:       x0 = out,               eps = (z - a*x0) / s
    """
    a, s = alpha_sigma(alphas_cumprod, t, z_t)
    if prediction_type == "epsilon":
        return (z_t - s * output) / a, output
    if prediction_type == "v_prediction":
        return a * z_t - s * output, a * output + s * z_t
    if prediction_type == "sample":
        return output, (z_t - a * output) / s
    raise ValueError(f"prediction_type: {prediction_type!r} is not allowed; allowed: {', '.join(PREDICTION_TYPES)}")


def guided(cond: torch.Tensor, uncond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """LCM-form classifier-free guidance x_c + w (x_c - x_u) with per-example w (B,) (docs/method.md 2.4)."""
    w = _per_example(w, cond)
    return cond + w * (cond - uncond)


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step to t_prev: z_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps (docs/method.md 2.7)."""
    a_prev, s_prev = alpha_sigma(alphas_cumprod, t_prev, x0)
    return a_prev * x0 + s_prev * eps


def consistency_output(z_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, sigma_data: float = 0.5,
                       timestep_scaling: float = 10.0) -> torch.Tensor:
    """f(z_t, t) = c_skip(t) z_t + c_out(t) x0_hat (docs/method.md 2.6 and 2.8; LCM paper eq. 9)."""
    c_skip, c_out = boundary_scalings(t, sigma_data, timestep_scaling)
    return _per_example(c_skip, z_t) * z_t + _per_example(c_out, z_t) * x0
