"""DDIM sampling (Song et al. 2021) over any noise-prediction callable.

The sampler touches the network only through ``eps_fn(x_t, t) -> eps``, where ``t`` is a
LongTensor[B]; bind an expert and its condition (or the collaborative combination of several) into
such a callable at the boundary. Device and dtype come from ``x_T``.

Faithful to the released LDM sampler: "uniform" timestep spacing shifted by one, the first
(smallest) selected step's "previous" alpha_bar is alpha_bar[0] (not 1), and no x_0 clipping.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ldm.diffusion.schedule import NoiseSchedule

EpsFn = Callable[[Tensor, Tensor], Tensor]
# callback(step_index, t, x, x0_pred): x is the sample after the step that started at timestep t.
StepCallback = Callable[[int, int, Tensor, Tensor], None]


def ddim_timesteps(num_steps: int, num_timesteps: int = 1000) -> Tensor:
    """``num_steps`` DDIM timesteps, ascending, with the released "uniform" spacing c = T // num_steps:
    ``c * i + 1`` for i = 0 .. num_steps - 1.

    50 steps of a 1000-step schedule give 1, 21, ..., 981 (sampled descending), exactly as released.
    Unlike the released ``range(0, T, c) + 1``, the count is always ``num_steps`` (7 steps give 7, not 8)
    and never runs past T - 1 (333 or 1000 steps work; where ``c * (num_steps - 1) + 1`` would reach T,
    the steps shift down by one: 1000 steps are 0 .. 999).
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in 1..{num_timesteps} (the schedule's length), got {num_steps}")
    timesteps = torch.arange(num_steps, dtype=torch.long) * (num_timesteps // num_steps) + 1
    if int(timesteps[-1]) >= num_timesteps:
        timesteps = timesteps - 1
    return timesteps


class DDIMStep(NamedTuple):
    x_prev: Tensor  # the sample at the next (smaller) timestep
    x0_pred: Tensor  # the x_0 predicted at this step


def ddim_step(
    x_t: Tensor,
    eps: Tensor,
    alpha: float,
    alpha_prev: float,
    sigma: float,
    noise: Optional[Tensor] = None,
) -> DDIMStep:
    """One DDIM update from alpha_bar ``alpha`` to ``alpha_prev`` (coefficients as float64 scalars).

        x0     = (x_t - sqrt(1 - a) eps) / sqrt(a)
        x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z
    """
    x0_pred = (x_t - (1.0 - alpha) ** 0.5 * eps) / alpha**0.5
    x_prev = alpha_prev**0.5 * x0_pred + (1.0 - alpha_prev - sigma**2) ** 0.5 * eps
    if sigma > 0.0:
        if noise is None:
            raise ValueError("ddim_step with sigma > 0 needs noise")
        x_prev = x_prev + sigma * noise
    return DDIMStep(x_prev, x0_pred)


def _check_timesteps(timesteps: Union[Tensor, Sequence[int]], num_timesteps: int) -> Tensor:
    ts = torch.as_tensor(timesteps).detach().cpu()
    if ts.dim() != 1 or ts.numel() == 0 or ts.dtype.is_floating_point:
        raise ValueError(
            f"timesteps must be a non-empty 1-D integer sequence, got {ts.dtype} of shape {tuple(ts.shape)}"
        )
    ts = ts.long()
    if bool((ts[1:] <= ts[:-1]).any()):
        raise ValueError(
            "timesteps must be strictly increasing (as ddim_timesteps returns them); sampling runs them descending"
        )
    if int(ts[0]) < 0 or int(ts[-1]) >= num_timesteps:
        raise ValueError(f"timesteps must lie in [0, {num_timesteps}), got {int(ts[0])}..{int(ts[-1])}")
    return ts


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``. CPU -> CUDA goes through pinned memory without blocking: a plain copy from
    pageable memory would wait for every queued kernel, stalling the GPU once per step."""
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@torch.no_grad()
def ddim_sample(
    eps_fn: EpsFn,
    x_T: Tensor,
    schedule: NoiseSchedule,
    timesteps: Union[Tensor, Sequence[int]],
    *,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    callback: Optional[StepCallback] = None,
    progress: bool = False,
) -> Tensor:
    """Run DDIM from ``x_T`` down the (ascending) ``timesteps``; returns x at the last step.

    ``eta = 0`` is deterministic; ``eta > 0`` draws z ~ N(0, I) every step from ``generator``
    (required, for reproducibility; drawn on the generator's device, then moved to x_T's).
    ``callback(step_index, t, x, x0_pred)`` runs after each step. Runs under ``torch.no_grad``.
    """
    if eta < 0.0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta > 0.0 and generator is None:
        raise ValueError(f"eta={eta} draws noise: pass a torch.Generator for reproducible sampling")
    ts = _check_timesteps(timesteps, schedule.num_timesteps)

    # DDIM coefficients in float64 at the selected timesteps.
    alphas = schedule.alphas_cumprod[ts]
    alphas_prev = torch.cat([schedule.alphas_cumprod[:1], alphas[:-1]])
    sigmas = eta * ((1.0 - alphas_prev) / (1.0 - alphas) * (1.0 - alphas / alphas_prev)).sqrt()

    x = x_T
    batch = x.shape[0]
    order = range(len(ts) - 1, -1, -1)
    for step_index, i in enumerate(tqdm(order, desc="DDIM", disable=not progress)):
        t = int(ts[i])
        eps = eps_fn(x, torch.full((batch,), t, dtype=torch.long, device=x.device))
        if eps.shape != x.shape:
            raise ValueError(f"eps_fn returned shape {tuple(eps.shape)} for x of shape {tuple(x.shape)}")
        eps = eps.to(x.dtype)
        sigma = float(sigmas[i])
        noise = None
        if sigma > 0.0:
            noise = _to_device(torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype), x.device)
        x, x0_pred = ddim_step(x, eps, float(alphas[i]), float(alphas_prev[i]), sigma, noise)
        if callback is not None:
            callback(step_index, t, x, x0_pred)
    return x
