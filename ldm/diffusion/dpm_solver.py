"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models"), deterministic and SDE, over any noise-prediction callable.

Like :func:`ldm.diffusion.ddim.ddim_sample`, the solver touches the network only through
``eps_fn(x_t, t) -> eps`` (t a LongTensor[B]), once per step. In the VP parametrisation
alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), lambda_t = log(alpha_t / sigma_t), with the data
prediction x0_i = (x_i - sigma_i eps_i) / alpha_i at point i and h = lambda_{i+1} - lambda_i, one step is

    ODE  x_{i+1} = (sigma_{i+1} / sigma_i) x_i              - alpha_{i+1} (e^{-h} - 1)  D_i
    SDE  x_{i+1} = (sigma_{i+1} / sigma_i) e^{-h} x_i       - alpha_{i+1} (e^{-2h} - 1) D_i
                   + sigma_{i+1} sqrt(1 - e^{-2h}) z,   z ~ N(0, I)

    D_i = x0_i + (x0_i - x0_{i-1}) / (2 r_i),   r_i = (lambda_i - lambda_{i-1}) / h     (second order, "midpoint")
    D_i = x0_i                                                                              (first step: first order)

The last step goes to sigma = 0 and returns the last x0 prediction (first order there, as diffusers'
``final_sigmas_type="zero"``). The same trajectory as diffusers' ``DPMSolverMultistepScheduler`` with
``algorithm_type="dpmsolver++"`` (or ``"sde-dpmsolver++"``), ``solver_order=2``, ``solver_type="midpoint"``
(tested). Coefficients are float64 scalars; the tensors keep x_T's device and dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ldm.diffusion.ddim import EpsFn, StepCallback, _check_timesteps, _to_device
from ldm.diffusion.schedule import NoiseSchedule


class SolverPoints(NamedTuple):
    """The points a multistep solver visits, highest noise first, then the clean end point."""

    timesteps: list[int]  # [n] the model's timestep at each point, descending
    alpha: list[float]  # [n + 1] sqrt(alpha_bar), then 1 (clean)
    sigma: list[float]  # [n + 1] sqrt(1 - alpha_bar), then 0
    lam: list[float]  # [n + 1] log(alpha / sigma), then +inf


def solver_points(schedule: NoiseSchedule, timesteps: Union[Tensor, Sequence[int]]) -> SolverPoints:
    """The points of the ascending ``timesteps`` (checked as ``ddim_sample`` checks them), run descending,
    followed by sigma = 0."""
    ts = _check_timesteps(timesteps, schedule.num_timesteps).flip(0)
    a = schedule.alphas_cumprod[ts]
    alpha, sigma = a.sqrt().tolist() + [1.0], (1.0 - a).sqrt().tolist() + [0.0]
    lam = [math.log(al / si) for al, si in zip(alpha[:-1], sigma[:-1])] + [math.inf]
    return SolverPoints(ts.tolist(), alpha, sigma, lam)


def call_eps(eps_fn: EpsFn, x: Tensor, t: int) -> Tensor:
    """``eps_fn`` at integer timestep ``t`` for the whole batch, checked and cast to x's dtype."""
    eps = eps_fn(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
    if eps.shape != x.shape:
        raise ValueError(f"eps_fn returned shape {tuple(eps.shape)} for x of shape {tuple(x.shape)}")
    return eps.to(x.dtype)


@torch.no_grad()
def dpmpp_2m_sample(
    eps_fn: EpsFn,
    x_T: Tensor,
    schedule: NoiseSchedule,
    timesteps: Union[Tensor, Sequence[int]],
    *,
    sde: bool = False,
    generator: Optional[torch.Generator] = None,
    callback: Optional[StepCallback] = None,
    progress: bool = False,
) -> Tensor:
    """Run DPM-Solver++(2M) from ``x_T`` down the (ascending) ``timesteps`` to sigma = 0; returns x_0.

    ``sde=False`` is deterministic. ``sde=True`` (SDE-DPM-Solver++(2M)) draws z ~ N(0, I) at every step but
    the last from ``generator`` (required; drawn on the generator's device, then moved to x_T's).
    ``callback(step_index, t, x, x0_pred)`` runs after each step, with the sample it produced. One
    ``eps_fn`` call per step. Runs under ``torch.no_grad``.
    """
    if sde and generator is None:
        raise ValueError("the SDE variant of DPM-Solver++ draws noise: pass a torch.Generator for reproducible sampling")
    p = solver_points(schedule, timesteps)
    x = x_T
    x0_prev: Optional[Tensor] = None
    name = "DPM-Solver++(2M) SDE" if sde else "DPM-Solver++(2M)"
    for i, t in enumerate(tqdm(p.timesteps, desc=name, disable=not progress)):
        eps = call_eps(eps_fn, x, t)
        x0 = (x - p.sigma[i] * eps) / p.alpha[i]
        if p.sigma[i + 1] == 0.0:  # the last step: to the clean end point
            x_next = x0
        else:
            h = p.lam[i + 1] - p.lam[i]
            d = x0 if x0_prev is None else x0 + (x0 - x0_prev) * (h / (2.0 * (p.lam[i] - p.lam[i - 1])))
            if sde:
                z = _to_device(torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype), x.device)
                x_next = ((p.sigma[i + 1] / p.sigma[i]) * math.exp(-h)) * x - (p.alpha[i + 1] * math.expm1(-2.0 * h)) * d
                x_next = x_next + (p.sigma[i + 1] * math.sqrt(-math.expm1(-2.0 * h))) * z
            else:
                x_next = (p.sigma[i + 1] / p.sigma[i]) * x - (p.alpha[i + 1] * math.expm1(-h)) * d
        x, x0_prev = x_next, x0
        if callback is not None:
            callback(i, t, x, x0)
    return x
