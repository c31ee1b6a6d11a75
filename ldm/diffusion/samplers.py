"""The samplers by name: the one place that lists them and runs one.

Every sampler drives the same ``eps_fn(x_t, t) -> eps`` (an expert, or the collaborative / composable
combination of several: the dynamic diffusers are evaluated inside it, at every network call, so influence
maps follow whichever timesteps the sampler visits), once per step:

- ``ddim``: DDIM as released (:mod:`ldm.diffusion.ddim`); ``uniform`` spacing; eta > 0 draws noise.
- ``dpmpp_2m``: DPM-Solver++(2M) (:mod:`ldm.diffusion.dpm_solver`); deterministic.
- ``dpmpp_2m_sde``: its SDE variant; draws noise at every step.
- ``unipc``: UniPC, bh2, order 2 (:mod:`ldm.diffusion.unipc`); deterministic.

Spacings: :mod:`ldm.diffusion.spacing`. Use from other code::

    from ldm.diffusion.samplers import sampler_names, run_sampler
    sampler_names()                                    # ['ddim', 'dpmpp_2m', 'dpmpp_2m_sde', 'unipc']
    x0 = run_sampler("unipc", eps_fn, x_T, schedule, 15)

:class:`SamplerOptions` is a user's validated choice (name, steps, spacing, eta) with the defaults of the
released sampler (DDIM, 50 steps, eta 1); the scripts, the configs' ``sample`` section and
:func:`ldm.pipeline.sample` go through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from ldm import ranges
from ldm.diffusion.ddim import EpsFn, StepCallback, ddim_sample
from ldm.diffusion.dpm_solver import dpmpp_2m_sample
from ldm.diffusion.schedule import NoiseSchedule
from ldm.diffusion.spacing import SPACINGS, spaced_timesteps
from ldm.diffusion.unipc import unipc_sample
from ldm.ranges import ParameterError

# run(eps_fn, x_T, schedule, timesteps, *, eta, generator, callback, progress) -> x_0
RunFn = Callable[..., Tensor]


@dataclass(frozen=True)
class SamplerInfo:
    """A registered sampler."""

    name: str
    title: str  # for tables and captions
    spacing: str  # its default timestep spacing
    has_eta: bool  # takes DDIM's eta
    stochastic: bool  # always draws noise (needs a generator)
    run: RunFn


def _ddim(eps_fn, x_T, schedule, timesteps, *, eta, generator, callback, progress):
    return ddim_sample(eps_fn, x_T, schedule, timesteps, eta=eta, generator=generator, callback=callback, progress=progress)


def _dpmpp_2m(eps_fn, x_T, schedule, timesteps, *, eta, generator, callback, progress):
    return dpmpp_2m_sample(eps_fn, x_T, schedule, timesteps, callback=callback, progress=progress)


def _dpmpp_2m_sde(eps_fn, x_T, schedule, timesteps, *, eta, generator, callback, progress):
    return dpmpp_2m_sample(eps_fn, x_T, schedule, timesteps, sde=True, generator=generator, callback=callback, progress=progress)


def _unipc(eps_fn, x_T, schedule, timesteps, *, eta, generator, callback, progress):
    return unipc_sample(eps_fn, x_T, schedule, timesteps, callback=callback, progress=progress)


SAMPLERS: dict[str, SamplerInfo] = {
    info.name: info
    for info in (
        SamplerInfo("ddim", "DDIM", "uniform", has_eta=True, stochastic=False, run=_ddim),
        SamplerInfo("dpmpp_2m", "DPM-Solver++(2M)", "karras", has_eta=False, stochastic=False, run=_dpmpp_2m),
        SamplerInfo("dpmpp_2m_sde", "SDE-DPM-Solver++(2M)", "karras", has_eta=False, stochastic=True, run=_dpmpp_2m_sde),
        SamplerInfo("unipc", "UniPC (bh2)", "karras", has_eta=False, stochastic=False, run=_unipc),
    )
}


def sampler_names() -> list[str]:
    """The registered samplers' names, e.g. for a menu or ``--sampler`` choices."""
    return list(SAMPLERS)


def spacing_names() -> list[str]:
    return list(SPACINGS)


def get_sampler(name: str) -> SamplerInfo:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


@torch.no_grad()
def run_sampler(
    name: str,
    eps_fn: EpsFn,
    x_T: Tensor,
    schedule: NoiseSchedule,
    steps: Union[int, Tensor, Sequence[int]],
    *,
    spacing: Optional[str] = None,
    eta: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    callback: Optional[StepCallback] = None,
    progress: bool = False,
) -> Tensor:
    """Run sampler ``name`` from ``x_T``; returns its final sample.

    ``steps``: a number of steps, spaced by ``spacing`` (default: the sampler's), or explicit ascending
    timesteps (then ``spacing`` must be None). ``eta``: DDIM's noise scale (None: 0, deterministic, as
    :func:`ddim_sample`); the other samplers have none. ``generator``: required where noise is drawn
    (DDIM with eta > 0, ``dpmpp_2m_sde``). ``callback(step_index, t, x, x0_pred)`` after each step.
    """
    info = get_sampler(name)
    if eta is not None and not info.has_eta:
        raise ValueError(f"eta is DDIM's parameter; sampler {name!r} has none (drop eta or use sampler 'ddim')")
    if isinstance(steps, int) and not isinstance(steps, bool):
        timesteps = spaced_timesteps(spacing or info.spacing, steps, schedule)
    elif spacing is not None:
        raise ValueError(f"spacing={spacing!r} applies to a number of steps; explicit timesteps were given")
    else:
        timesteps = steps
    return info.run(eps_fn, x_T, schedule, timesteps, eta=0.0 if eta is None else eta, generator=generator,
                    callback=callback, progress=progress)


def partial_timesteps(timesteps: Tensor, strength: float, num_timesteps: int) -> Tensor:
    """The (ascending) ``timesteps`` t < strength·T that a run started part-way (:func:`partial_start`) visits;
    raises ValueError naming the fix if none is left."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    ts = torch.as_tensor(timesteps)
    kept = ts[ts < strength * num_timesteps]
    if kept.numel() == 0:
        raise ValueError(f"strength {strength:g} keeps none of the {ts.numel()} timesteps (the smallest is {int(ts[0])}); "
                         f"raise the strength above {int(ts[0]) / num_timesteps:g}")
    return kept


def partial_start(
    x0: Tensor, timesteps: Tensor, schedule: NoiseSchedule, strength: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """SDEdit's start (Meng et al., 2022) for sampling from a given latent ``x0`` instead of pure noise.

    Returns ``(x_t, kept)``: the timesteps t < strength·T (:func:`partial_timesteps`) and x0 noised to the
    largest of them, x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε with ε from ``generator``. A sampler run from x_t down
    ``kept`` keeps x0's coarse content, more of it the smaller ``strength``.
    """
    kept = partial_timesteps(timesteps, strength, schedule.num_timesteps)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0)
    t = torch.full((x0.shape[0],), int(kept[-1]), dtype=torch.long, device=x0.device)
    return schedule.q_sample(x0, t, noise), kept


@dataclass(frozen=True)
class SamplerOptions:
    """A user's choice of sampler, checked when made. Defaults are the released sampler's: DDIM, 50 steps
    with the uniform spacing, eta 1. ``spacing=None`` takes the sampler's default; ``eta=None`` takes 1 for
    DDIM and must stay None for the others (they have no eta)."""

    sampler: str = "ddim"
    steps: int = 50
    spacing: Optional[str] = None
    eta: Optional[float] = None

    RELEASED_ETA = 1.0  # DDIM's eta in the released sampler

    def __post_init__(self) -> None:
        info = get_sampler(self.sampler)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise ParameterError("steps", f"{self.steps!r} is out of range; use {ranges.STEPS.text}")
        ranges.check("steps", self.steps, ranges.STEPS)
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise ValueError(f"unknown timestep spacing {self.spacing!r}; choose one of {', '.join(SPACINGS)}")
        if self.eta is not None:
            if not info.has_eta:
                raise ValueError(f"eta applies to the ddim sampler only; {self.sampler} has none (drop eta or use ddim)")
            if not isinstance(self.eta, (int, float)):
                raise ParameterError("eta", f"{self.eta!r} is out of range; use {ranges.ETA.text}")
            ranges.check("eta", self.eta, ranges.ETA)

    @property
    def info(self) -> SamplerInfo:
        return get_sampler(self.sampler)

    @property
    def resolved_spacing(self) -> str:
        return self.spacing or self.info.spacing

    @property
    def resolved_eta(self) -> Optional[float]:
        """DDIM's eta (1 unless given); None for samplers without one."""
        if not self.info.has_eta:
            return None
        return float(self.RELEASED_ETA if self.eta is None else self.eta)

    @property
    def draws_noise(self) -> bool:
        return self.info.stochastic or bool(self.resolved_eta)

    def timesteps(self, schedule: NoiseSchedule) -> Tensor:
        return spaced_timesteps(self.resolved_spacing, self.steps, schedule)

    def describe(self) -> str:
        """E.g. ``DDIM 50 steps, uniform spacing, eta 1`` or ``UniPC (bh2) 15 steps, karras spacing``."""
        text = f"{self.info.title} {self.steps} steps, {self.resolved_spacing} spacing"
        return text + (f", eta {self.resolved_eta:g}" if self.resolved_eta is not None else "")

    def to_dict(self) -> dict[str, Any]:
        """Every value resolved: what ``settings.json`` records, and the keywords :func:`ldm.pipeline.sample` takes."""
        return {"sampler": self.sampler, "steps": self.steps, "spacing": self.resolved_spacing, "eta": self.resolved_eta}

    def run(
        self,
        eps_fn: EpsFn,
        x_T: Tensor,
        schedule: NoiseSchedule,
        *,
        generator: Optional[torch.Generator] = None,
        callback: Optional[StepCallback] = None,
        progress: bool = False,
    ) -> Tensor:
        """:func:`run_sampler` with these options."""
        return run_sampler(self.sampler, eps_fn, x_T, schedule, self.steps, spacing=self.resolved_spacing,
                           eta=self.resolved_eta, generator=generator, callback=callback, progress=progress)



# The released sampler (the paper configs' default) and the fewer-step setting recommended in its place: on
# FaceWorld it is the closest 15-step setting to the released sampler's quality (mask accuracy −0.7 ± 0.4
# points, text and joint accuracy and FD better; docs/samplers.md). scripts/demo.py and benchmark.py --equal-quality use it.
RELEASED = SamplerOptions()
RECOMMENDED = SamplerOptions("dpmpp_2m_sde", 15)
