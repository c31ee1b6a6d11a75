"""Does an expert use its condition? ε-MSE with the true condition against a mismatched one.

A conditional expert that has learned its condition predicts the noise better when it is given the image's own
condition than when it is given another image's. For each band of timesteps this measures, on the same latents,
t and ε, the expert's ε-MSE with the true conditions and with the batch's conditions rolled by one (every image
gets its neighbour's), and reports ``gain = 1 − true / mismatched``: about 0 for an expert that ignores its
condition, larger the more the condition explains.

:func:`eps_error_profile` is the second diagnostic: the expert's ε-MSE at single timesteps beside that of the
*trivial* predictor ε̂ = x_t / sqrt(1 − ᾱ_t) (x_0 guessed as 0), which is nearly exact at large t (its error is
ᾱ_t/(1 − ᾱ_t)·E[x_0²]). An expert worse than it there adds error that DDIM multiplies by 1/sqrt(ᾱ_t) in its x_0
estimate: samples come out with residual noise. Both are quick checks for undertrained experts (used in the
FaceWorld recipe's report), not paper metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ldm.errors import UserError

DEFAULT_BANDS = ((0, 300), (300, 700), (700, 1000))
PROFILE_TIMESTEPS = (999, 900, 800, 600, 400, 200, 50)


def clean_latents(model: Any, images: torch.Tensor) -> torch.Tensor:
    """x0 = E(images)·scale_factor, the VAE posterior mean (no sampling noise in the diagnostics)."""
    return model.vae.encode(images).mean * model.scale_factor


def roll_conditions(conditions: Any) -> Any:
    """Give every row the next row's condition (a list of captions or a tensor with a batch dimension)."""
    if isinstance(conditions, torch.Tensor):
        return torch.roll(conditions, shifts=1, dims=0)
    return list(conditions[-1:]) + list(conditions[:-1])


@torch.no_grad()
def condition_usage(
    model: Any,
    images: torch.Tensor,
    conditions: Any,
    generator: torch.Generator,
    bands: Sequence[tuple[int, int]] = DEFAULT_BANDS,
) -> list[dict[str, float]]:
    """ε-MSE of ``model.expert`` (a :class:`~ldm.models.latent_diffusion.LatentDiffusion`) with the true and the
    rolled conditions, per band ``[lo, hi)`` of timesteps. ``images`` [B, 3, H, W] in [-1, 1], B ≥ 2.

    Returns one row per band: ``{"t_lo", "t_hi", "true", "mismatched", "gain"}``.
    """
    if images.shape[0] < 2:
        raise UserError("condition_usage needs at least 2 images: each is compared with another image's condition")
    num_t = model.schedule.num_timesteps
    for lo, hi in bands:
        if not 0 <= lo < hi <= num_t:
            raise UserError(f"timestep band [{lo}, {hi}) is not inside [0, {num_t}); give bands with 0 <= lo < hi <= {num_t}")
    expert = model.expert
    x0 = clean_latents(model, images)
    true_ctx = expert.encode(conditions)
    rolled_ctx = expert.encode(roll_conditions(conditions))
    rows = []
    for lo, hi in bands:
        t = torch.randint(lo, hi, (x0.shape[0],), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = model.schedule.q_sample(x0, t, noise)
        true = F.mse_loss(expert(x_t, t, true_ctx).float(), noise.float()).item()
        mismatched = F.mse_loss(expert(x_t, t, rolled_ctx).float(), noise.float()).item()
        rows.append({"t_lo": lo, "t_hi": hi, "true": true, "mismatched": mismatched, "gain": 1.0 - true / mismatched})
    return rows


@torch.no_grad()
def eps_error_profile(
    model: Any,
    images: torch.Tensor,
    conditions: Any,
    generator: torch.Generator,
    timesteps: Sequence[int] = PROFILE_TIMESTEPS,
) -> list[dict[str, float]]:
    """ε-MSE of ``model.expert`` with the true conditions at each timestep, beside the trivial predictor's.

    Returns one row per timestep: ``{"t", "alpha_bar", "model", "trivial"}``.
    """
    num_t = model.schedule.num_timesteps
    bad = [t for t in timesteps if not 0 <= int(t) < num_t]
    if bad:
        raise UserError(f"timesteps {bad} are not in [0, {num_t}); give timesteps of the model's schedule")
    expert = model.expert
    x0 = clean_latents(model, images)
    context = expert.encode(conditions)
    rows = []
    for step in timesteps:
        t = torch.full((x0.shape[0],), int(step), dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = model.schedule.q_sample(x0, t, noise)
        trivial = model.schedule.predict_eps(x_t, t, torch.zeros_like(x0))  # x_0 guessed as 0
        rows.append({
            "t": int(step), "alpha_bar": float(model.schedule.alphas_cumprod[int(step)]),
            "model": F.mse_loss(expert(x_t, t, context).float(), noise.float()).item(),
            "trivial": F.mse_loss(trivial.float(), noise.float()).item(),
        })
    return rows
