"""Sampling from trained models: bind experts and diffusers to their conditions, run a sampler, decode.

Every method -- collaborative, composable, or one expert alone -- is an ``eps_fn(x_t, t)`` handed to the
same sampler (DDIM as released by default, or any of :mod:`ldm.diffusion.samplers`); only the callable
differs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ldm.checkpoints import load_strict, read_checkpoint, top_level
from ldm.config import instantiate, load_config
from ldm.diffusion.collaborative import (
    CollaborativeOptions,
    make_collaborative_eps_fn,
    make_composable_eps_fn,
)
from ldm.diffusion.samplers import SamplerOptions, partial_start, run_sampler
from ldm.errors import UserError
from ldm.speed import SpeedOptions, apply_speed_options, concurrent_runner, fast_network, weights_in_precision

logger = logging.getLogger(__name__)

# Command-line names of methods that sample from one expert alone.
MODALITY_ALIASES = {"mask": "seg_mask", "seg_mask": "seg_mask", "text": "text", "sketch": "sketch"}
JOINT_METHODS = ("collaborative", "composable")


def load_model(config: str | Path, ckpt: str | Path, device: str | torch.device = "cpu", overrides: Sequence[str] = ()) -> nn.Module:
    """Build the model of ``config`` and load ``ckpt`` into it strictly.

    ``ckpt`` may be a native or a released checkpoint of the same kind (LDM or collaborative). A full
    checkpoint is all that is read. A *partial* one (e.g. only ``diffusers.*``, written by
    ``convert_checkpoint.py --keep diffusers``) supplies its parts, strictly, and the other parts (experts,
    VAE) come from the checkpoints the config names.
    """
    cfg = load_config(config, overrides)
    model = instantiate(cfg.model, load_weights=False)
    kind = getattr(model, "checkpoint_kind", None)
    if kind is None:
        raise UserError(f"{config} builds a {type(model).__name__}, which cannot sample; use an LDM or collaborative config")
    state = read_checkpoint(ckpt, kind, model.schedule.released_buffers())
    given = top_level(state)
    if given < top_level(model.state_dict()):
        logger.info("%s holds %s; the rest comes from the checkpoints named in %s", ckpt, sorted(given), config)
        model = instantiate(cfg.model, load_weights=True)
        load_strict(model, state, source=str(ckpt), parts=given)
    else:
        load_strict(model, state, source=str(ckpt))
    return model.to(device).eval()


def bind_experts(experts: Mapping[str, nn.Module], contexts: Mapping[str, torch.Tensor]) -> dict[str, Callable]:
    """``{m: eps_fn(x_t, t)}`` with each expert's condition tokens bound in."""
    return {m: (lambda x, t, e=experts[m], c=contexts[m]: e(x, t, c)) for m in contexts}


def bind_diffusers(diffusers: Mapping[str, nn.Module], contexts: Mapping[str, torch.Tensor]) -> dict[str, Callable]:
    """``{m: logits_fn(x_t, t)}`` with each dynamic diffuser's condition tokens bound in."""
    return {m: (lambda x, t, d=diffusers[m], c=contexts[m]: d(x, t, c)) for m in contexts}


@dataclass
class Trace:
    """What ``--save-influence`` records at every sampler step (one network call per step)."""

    timesteps: list[int] = field(default_factory=list)
    x_t: list[torch.Tensor] = field(default_factory=list)  # each [B, 3, h, w]
    weights: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # each [B, 1, h, w]


@dataclass
class Samples:
    images: torch.Tensor  # [B, 3, H, W] in [-1, 1]
    latents: torch.Tensor  # [B, 3, h, w]
    trace: Optional[Trace] = None


def method_modalities(model: nn.Module, method: str, given: Sequence[str]) -> list[str]:
    """Which modalities a method uses, checking that the model and the given conditions have them."""
    experts = model.experts
    if method in JOINT_METHODS:
        missing = [m for m in experts if m not in given]
        if missing:
            raise UserError(f"--method {method} needs a condition for every modality; missing {missing} (give --text and --mask)")
        if method == "collaborative" and set(model.diffusers) != set(experts):
            raise UserError("--method collaborative needs a collaborative checkpoint (dynamic diffusers); this model has none")
        return list(experts)
    if method not in MODALITY_ALIASES:
        raise UserError(f"unknown --method {method!r}; choose collaborative, composable, text or mask")
    modality = MODALITY_ALIASES[method]
    if modality not in experts:
        raise UserError(f"--method {method}: this model has no {modality} expert (it has {list(experts)})")
    if modality not in given:
        raise UserError(f"--method {method} needs its condition (--{'mask' if modality == 'seg_mask' else modality})")
    return [modality]


@torch.no_grad()
def sample(
    model: nn.Module,
    conditions: Mapping[str, Any],
    *,
    method: str = "collaborative",
    steps: int = 50,
    eta: Optional[float] = None,
    sampler: str = "ddim",
    spacing: Optional[str] = None,
    generator: torch.Generator,
    options: CollaborativeOptions = CollaborativeOptions(),
    lambdas: Optional[Mapping[str, float]] = None,
    record_trace: bool = False,
    progress: bool = False,
    speed: Optional[SpeedOptions] = None,
) -> Samples:
    """Generate one image per row of ``conditions`` (raw batch values keyed by modality).

    x_T is drawn from ``generator`` (a CPU generator gives the same images on every device), then the
    sampler runs on the model's device. ``sampler``, ``steps``, ``spacing``, ``eta``: see
    :class:`ldm.diffusion.samplers.SamplerOptions` (default: DDIM, 50 steps, eta 1, as released).
    ``speed``: see :func:`sample_from_contexts`.
    """
    modalities = method_modalities(model, method, list(conditions))
    contexts = {m: model.experts[m].encode(conditions[m]) for m in modalities}
    return sample_from_contexts(
        model, contexts, method=method, steps=steps, eta=eta, sampler=sampler, spacing=spacing, generator=generator,
        options=options, lambdas=lambdas, record_trace=record_trace, progress=progress, speed=speed,
    )


def make_eps_fn(
    model: nn.Module,
    contexts: Mapping[str, torch.Tensor],
    *,
    method: str,
    options: CollaborativeOptions = CollaborativeOptions(),
    lambdas: Optional[Mapping[str, float]] = None,
    on_weights: Optional[Callable] = None,
    speed: Optional[SpeedOptions] = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The ``eps_fn(x_t, t)`` of ``method`` with the model's experts (and diffusers) bound to ``contexts``
    (on the model's device). With ``speed``, every network runs under its autocast and returns float32, and
    the networks of one step run on separate CUDA streams (``speed.streams``, CUDA only)."""
    experts = bind_experts(model.experts, contexts)
    diffusers = bind_diffusers(model.diffusers, contexts) if method == "collaborative" else {}
    run = None
    if speed is not None:
        device = next(model.parameters()).device
        experts = {m: fast_network(fn, speed, device) for m, fn in experts.items()}
        diffusers = {m: fast_network(fn, speed, device) for m, fn in diffusers.items()}
        run = concurrent_runner(device) if speed.streams else None
    if method == "collaborative":
        return make_collaborative_eps_fn(experts, diffusers, options, on_weights, run=run)
    if method == "composable":
        return make_composable_eps_fn(experts, lambdas, run=run)
    return experts[next(iter(contexts))]


@torch.no_grad()
def sample_from_contexts(
    model: nn.Module,
    contexts: Mapping[str, torch.Tensor],
    *,
    method: str,
    steps: int = 50,
    eta: Optional[float] = None,
    sampler: str = "ddim",
    spacing: Optional[str] = None,
    generator: torch.Generator,
    options: CollaborativeOptions = CollaborativeOptions(),
    lambdas: Optional[Mapping[str, float]] = None,
    record_trace: bool = False,
    progress: bool = False,
    speed: Optional[SpeedOptions] = None,
    x_start: Optional[torch.Tensor] = None,
    strength: float = 1.0,
) -> Samples:
    """:func:`sample` from condition tokens ``{m: [B, N, D]}`` already encoded (or optimised and interpolated,
    as Imagic editing does): the experts and the diffusers read these tokens; ``method`` combines them.

    ``speed`` (default: none, the networks as built, in the model's dtype) is first applied to the model in
    place (:func:`ldm.speed.apply_speed_options`); each network call then runs under its autocast and
    returns float32, so x_T, the combination of the experts and the sampler's arithmetic stay float32.
    With ``record_trace`` the trace holds x_t after every step and the influence weights of every network
    call (one per step, for every sampler), so influence maps follow the sampler's timesteps.
    ``strength`` < 1 starts from the latent ``x_start`` [B, C, h, w] noised to the largest timestep below
    strength·T and runs only the timesteps below it (SDEdit, :func:`ldm.diffusion.samplers.partial_start`);
    1 (the default) starts from pure noise.
    """
    try:
        choice = SamplerOptions(sampler, steps, spacing, eta)
        choice.timesteps(model.schedule)  # e.g. too many steps for the karras spacing
    except ValueError as err:
        raise UserError(str(err)) from None
    if speed is not None:
        apply_speed_options(model, speed)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    contexts = {m: c.to(device=device, dtype=dtype) for m, c in contexts.items()}
    batch = next(iter(contexts.values())).shape[0]
    shape = (batch, *model.vae.latent_shape)
    timesteps = choice.timesteps(model.schedule)
    if strength < 1.0:
        if x_start is None:
            raise ValueError("strength < 1 starts from a given latent: pass x_start")
        if tuple(x_start.shape) != shape:
            raise ValueError(f"x_start has shape {tuple(x_start.shape)}; these contexts and this VAE need {shape}")
        try:
            x_T, timesteps = partial_start(x_start.to(device=device, dtype=dtype), timesteps, model.schedule, strength, generator)
        except ValueError as err:
            raise UserError(f"{err} (or use more sampling steps)") from None
    else:
        x_T = torch.randn(shape, generator=generator, device=generator.device).to(device=device, dtype=dtype)

    trace = Trace() if record_trace else None

    def on_weights(t: torch.Tensor, weights: Mapping[str, torch.Tensor]) -> None:
        for m, w in weights.items():
            trace.weights.setdefault(m, []).append(w.float().cpu())

    eps_fn = make_eps_fn(
        model, contexts, method=method, options=options, lambdas=lambdas,
        on_weights=on_weights if trace is not None else None, speed=speed,
    )

    def callback(i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if trace is not None:
            trace.timesteps.append(int(t))
            trace.x_t.append(x.float().cpu())

    with weights_in_precision(model, speed):
        z = run_sampler(choice.sampler, eps_fn, x_T, model.schedule, timesteps, eta=choice.resolved_eta, generator=generator,
                        callback=callback, progress=progress)
    images = model.decode_latents(z).clamp(-1, 1)
    return Samples(images=images.float().cpu(), latents=z.float().cpu(), trace=trace)
