"""Which timesteps a sampler visits: the usual spacings of ``steps`` points over a discrete schedule.

Every spacing returns ``steps`` distinct integer timesteps, **ascending** (as :func:`ddim_timesteps` does;
samplers run them descending). The model is always called at these integer timesteps, and every sampler
uses the schedule's own alpha_bar there, so the noise level a network is told and the one the solver
assumes are the same.

- ``uniform``: the released DDIM spacing, ``c * i + 1`` with ``c = T // steps`` (981, 961, ..., 1 for 50).
- ``linspace``: ``round(linspace(0, T - 1, steps + 1))`` without the 0 (diffusers' default
  ``timestep_spacing="linspace"``: 999, 899, ..., 100 for 10).
- ``trailing``: ``round(T - i * T / steps) - 1`` (diffusers' ``"trailing"``, "Common Diffusion Noise Schedules
  and Sample Steps are Flawed", Table 2: always starts at T - 1; 999, 899, ..., 99 for 10).
- ``karras``: Karras et al. (2022)'s sigmas ``(s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``,
  rho = 7, between the schedule's smallest and largest sigma = sqrt((1 - a)/a), each mapped to a timestep by
  linear interpolation of log sigma and rounded (as diffusers' ``use_karras_sigmas``; diffusers then keeps the
  unrounded sigmas for the solver, here the solver uses the schedule's sigma at the rounded timestep):
  999, 942, 874, 791, 684, 537, 333, 113, 15, 0 for 10. At most 61 steps on the paper's schedule (more would
  repeat timesteps near 0).

``linspace`` and ``trailing`` are computed in float64 exactly as numpy's ``linspace`` and ``arange`` compute
them (diffusers uses those; tested for 1 to 1000 steps), and ties in rounding go to the even integer, as numpy's and torch's ``round`` do:
with 26 steps 999 * 13 / 26 = 499.5 comes out as 499.49999999999994 and rounds to 499, as in diffusers.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ldm.diffusion.ddim import ddim_timesteps
from ldm.diffusion.schedule import NoiseSchedule

KARRAS_RHO = 7.0


def _check_steps(steps: int, num_timesteps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be an integer in 1..{num_timesteps} (the schedule's length), got {steps!r}")


def _ascending(values: list[int]) -> Tensor:
    return torch.tensor(sorted(values), dtype=torch.long)


def uniform_timesteps(steps: int, schedule: NoiseSchedule) -> Tensor:
    """The released DDIM spacing (:func:`ldm.diffusion.ddim.ddim_timesteps`)."""
    _check_steps(steps, schedule.num_timesteps)
    return ddim_timesteps(steps, schedule.num_timesteps)


def linspace_timesteps(steps: int, schedule: NoiseSchedule) -> Tensor:
    """``round(i (T - 1) / steps)`` for i = 1 .. steps."""
    T = schedule.num_timesteps
    _check_steps(steps, T)
    if steps >= T:
        raise ValueError(f"linspace spacing of {steps} steps repeats timesteps (it allows at most {T - 1}); "
                         "use fewer steps or spacing 'trailing'")
    step = (T - 1) / steps
    return _ascending([round(i * step) for i in range(1, steps + 1)])


def trailing_timesteps(steps: int, schedule: NoiseSchedule) -> Tensor:
    """``round(T (steps - i) / steps) - 1`` for i = 0 .. steps - 1: T - 1 first, evenly spaced down."""
    T = schedule.num_timesteps
    _check_steps(steps, T)
    delta = (T - T / steps) - T  # numpy's arange steps by the difference of its first two values
    return _ascending([round(T + i * delta) - 1 for i in range(steps)])


def karras_sigmas(steps: int, schedule: NoiseSchedule, rho: float = KARRAS_RHO) -> Tensor:
    """The ``steps`` Karras sigmas (float64, descending) between the schedule's largest and smallest sigma."""
    _check_steps(steps, schedule.num_timesteps)
    a = schedule.alphas_cumprod
    sigmas = ((1.0 - a) / a).sqrt()
    lo, hi = float(sigmas[0]) ** (1.0 / rho), float(sigmas[-1]) ** (1.0 / rho)
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_timestep(sigma: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Fractional timesteps (float64) at which the schedule's sigma = sqrt((1 - a)/a) equals ``sigma``,
    by linear interpolation of log sigma between neighbouring integer timesteps (clamped to [0, T - 1])."""
    a = schedule.alphas_cumprod
    log_sigmas = ((1.0 - a) / a).sqrt().log()  # increasing in t
    log_sigma = sigma.to(torch.float64).clamp_min(1e-10).log()
    low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = ((log_sigma - lo) / (hi - lo)).clamp(0.0, 1.0)
    return low.to(torch.float64) + w


def karras_timesteps(steps: int, schedule: NoiseSchedule, rho: float = KARRAS_RHO) -> Tensor:
    """The timesteps nearest to the Karras sigmas (see the module docstring)."""
    t = torch.round(sigma_to_timestep(karras_sigmas(steps, schedule, rho), schedule)).long()
    if len(set(t.tolist())) != steps:
        most = max(n for n in range(1, steps) if len(set(_karras_rounded(n, schedule, rho))) == n)
        raise ValueError(
            f"karras spacing of {steps} steps repeats timesteps on this {schedule.num_timesteps}-step schedule "
            f"(it allows at most {most}); use fewer steps or spacing 'trailing'"
        )
    return _ascending(t.tolist())


def _karras_rounded(steps: int, schedule: NoiseSchedule, rho: float) -> list[int]:
    return torch.round(sigma_to_timestep(karras_sigmas(steps, schedule, rho), schedule)).long().tolist()


SPACINGS: dict[str, Callable[[int, NoiseSchedule], Tensor]] = {
    "uniform": uniform_timesteps,
    "linspace": linspace_timesteps,
    "trailing": trailing_timesteps,
    "karras": karras_timesteps,
}


def spaced_timesteps(spacing: str, steps: int, schedule: NoiseSchedule) -> Tensor:
    """``steps`` ascending timesteps of ``schedule`` with the named spacing (one of :data:`SPACINGS`)."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return SPACINGS[spacing](steps, schedule)
