"""The collaborative step: combine several experts' noise predictions with per-pixel influence.

Each modality m has a frozen expert (its noise prediction eps_m) and a dynamic diffuser (influence
logits, one channel per latent pixel). The paper's combination, for any number M >= 1 of modalities:

    w_m = softmax_m(logits_m)        at every latent pixel, shared by the latent channels
    eps = sum_m w_m * eps_m

Modalities are named by their batch keys ("text", "seg_mask", ...). Nothing here depends on which
modalities are present, except that the released sampler's two inference-only adjustments
(:class:`CollaborativeOptions`) name the modality they target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

EpsFn = Callable[[Tensor, Tensor], Tensor]  # (x_t [B,C,H,W], t LongTensor[B]) -> eps [B,C,H,W]
LogitFn = Callable[[Tensor, Tensor], Tensor]  # (x_t [B,C,H,W], t LongTensor[B]) -> logits [B,1,H,W]
Weight = Union[Tensor, float]
WeightsCallback = Callable[[Tensor, dict[str, Tensor]], None]
# Evaluates named, independent network calls (e.g. on separate CUDA streams); default: one after another.
Runner = Callable[[Mapping[str, Callable[[], Tensor]]], dict[str, Tensor]]


def _sequential(calls: Mapping[str, Callable[[], Tensor]]) -> dict[str, Tensor]:
    return {name: call() for name, call in calls.items()}


def _check_same_keys(what: str, expected: Mapping, given: Mapping, given_name: str) -> None:
    missing = [m for m in expected if m not in given]
    extra = [m for m in given if m not in expected]
    if missing or extra:
        raise ValueError(
            f"{what}: {given_name} missing for {missing} and unexpected for {extra}; "
            f"give exactly one per modality {list(expected)}"
        )


# ------------------------------------------------------------------------------------------------
# The paper's combination


def influence_weights(logits_by_modality: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per-pixel influence: softmax across modalities of the diffusers' logits [B, 1, H, W].

    Computed in float32 and cast back to the logits' dtype; the weights are positive and sum to 1
    at every pixel (exactly 1 for a single modality).
    """
    if not logits_by_modality:
        raise ValueError("influence_weights needs the logits of at least one modality")
    names = list(logits_by_modality)
    shapes = {tuple(logits_by_modality[m].shape) for m in names}
    if len(shapes) != 1:
        got = {m: tuple(v.shape) for m, v in logits_by_modality.items()}
        raise ValueError(f"influence logits must share one shape, got {got}")
    logits = torch.stack([logits_by_modality[m] for m in names])  # [M, B, 1, H, W]
    weights = torch.softmax(logits.float(), dim=0).to(logits.dtype)
    return {m: weights[i] for i, m in enumerate(names)}


def combine(eps_by_modality: Mapping[str, Tensor], weights_by_modality: Mapping[str, Weight]) -> Tensor:
    """sum_m w_m * eps_m; per-pixel weights [B, 1, H, W] broadcast over channels, or scalars."""
    if not eps_by_modality:
        raise ValueError("combine needs the noise prediction of at least one modality")
    _check_same_keys("combine", eps_by_modality, weights_by_modality, "weights")
    total: Optional[Tensor] = None
    for m, eps in eps_by_modality.items():
        w = weights_by_modality[m]
        term = (w.to(eps.dtype) if isinstance(w, Tensor) else w) * eps
        total = term if total is None else total + term
    return total


def collaborative_loss(
    eps_by_modality: Mapping[str, Tensor],
    logits_by_modality: Mapping[str, Tensor],
    noise: Tensor,
    sample_weight: Optional[Tensor] = None,
) -> Tensor:
    """Training loss of the dynamic diffusers: mean ||sum_m w_m eps_m - eps||^2 (float32).

    ``sample_weight`` [B] (optional) weights each sample's mean squared error, e.g.
    :func:`ldm.diffusion.schedule.loss_space_weight` to measure the error in v or x_0 instead of eps.
    The influence weights are the plain softmax: the inference-only adjustments never enter training.
    """
    predicted = combine(eps_by_modality, influence_weights(logits_by_modality))
    error = (predicted.float() - noise.float()) ** 2  # [B, C, H, W]
    if sample_weight is None:
        return error.mean()
    if sample_weight.shape != error.shape[:1]:
        raise ValueError(f"sample_weight must have shape [{error.shape[0]}], got {tuple(sample_weight.shape)}")
    return (sample_weight.float() * error.mean(dim=tuple(range(1, error.dim())))).mean()


# ------------------------------------------------------------------------------------------------
# The released sampler's inference-only adjustments (kept for fidelity, off in the paper preset)


@dataclass(frozen=True)
class CollaborativeOptions:
    """Inference-only adjustments of the influence weights, applied in this order:

    - ``cosine_decay_modality``: that modality's weight p becomes p * c(t) with
      c(t) = (cos(pi (1 - t / num_timesteps)) + 1) / 2 (1 at t = T, 0 at t = 0, so its influence
      fades towards the end of sampling); the removed mass goes to the other modalities in
      proportion to their weights (for two modalities: the other gets 1 - p c(t), as released).
    - ``boost_modality`` / ``boost``: that modality's weight is multiplied by ``boost``, then all
      weights are renormalised to sum to 1.

    With both on one modality and M = 2 this is the released sampler's w = 2pc / (1 + pc).
    """

    cosine_decay_modality: Optional[str] = None
    boost_modality: Optional[str] = None
    boost: float = 1.0
    num_timesteps: int = 1000

    def __post_init__(self) -> None:
        if not (self.boost > 0.0 and math.isfinite(self.boost)):
            raise ValueError(f"boost must be a positive number, got {self.boost}")
        if self.boost != 1.0 and self.boost_modality is None:
            raise ValueError(f"boost={self.boost} needs boost_modality (the modality whose weight it multiplies)")
        if self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be positive, got {self.num_timesteps}")

    @property
    def targeted_modalities(self) -> list[str]:
        """The modalities these options act on (empty when they change nothing)."""
        targets = [self.cosine_decay_modality] if self.cosine_decay_modality is not None else []
        if self.boost != 1.0 and self.boost_modality not in targets:
            targets.append(self.boost_modality)
        return targets

    @classmethod
    def from_preset(cls, name: str) -> "CollaborativeOptions":
        """``"paper"`` (plain softmax) or ``"official"`` (the released sampler's adjustments)."""
        if name not in PRESETS:
            raise ValueError(f"unknown collaborative preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]


PAPER = CollaborativeOptions()
OFFICIAL = CollaborativeOptions(cosine_decay_modality="seg_mask", boost_modality="seg_mask", boost=2.0)
PRESETS = {"paper": PAPER, "official": OFFICIAL}


def _require(weights: Mapping[str, Tensor], modality: str) -> None:
    if modality not in weights:
        raise ValueError(
            f"the collaborative options target modality {modality!r}, which is not among {list(weights)}; "
            f"use the 'paper' preset or target one of these"
        )


def cosine_decay_factor(t: Tensor, num_timesteps: int = 1000) -> Tensor:
    """c(t) = (cos(pi (1 - t / T)) + 1) / 2 per sample: float64 [B] on t's device."""
    t = torch.as_tensor(t).to(torch.float64)
    return (torch.cos(math.pi * (1.0 - t / num_timesteps)) + 1.0) / 2.0


def cosine_decay(
    weights: Mapping[str, Tensor], modality: str, t: Tensor, num_timesteps: int = 1000
) -> dict[str, Tensor]:
    """Scale ``modality``'s weight p by c(t); the others share the freed mass in proportion.

    Weights still sum to 1. With a single modality there is nowhere to move mass: unchanged.
    """
    _require(weights, modality)
    if len(weights) == 1:
        return dict(weights)
    w = {m: v.float() for m, v in weights.items()}
    p = w[modality]
    c = cosine_decay_factor(t, num_timesteps).to(device=p.device, dtype=p.dtype)
    decayed = p * c.reshape(-1, *([1] * (p.dim() - 1)))
    others = [m for m in w if m != modality]
    others_total = sum(w[m] for m in others)
    has_mass = others_total > 0
    safe_total = torch.where(has_mass, others_total, torch.ones_like(others_total))
    out = {modality: decayed}
    for m in others:
        # Proportional share of the others' new total 1 - p c(t); equal shares where they were all 0.
        share = torch.where(has_mass, w[m] / safe_total, torch.full_like(w[m], 1.0 / len(others)))
        out[m] = share * (1.0 - decayed)
    return {m: out[m].to(weights[m].dtype) for m in weights}


def boost_and_renormalise(weights: Mapping[str, Tensor], modality: str, factor: float) -> dict[str, Tensor]:
    """Multiply ``modality``'s weight by ``factor``, then renormalise all weights to sum to 1."""
    _require(weights, modality)
    w = {m: v.float() for m, v in weights.items()}
    w[modality] = w[modality] * factor
    total = sum(w.values())
    return {m: (w[m] / total).to(weights[m].dtype) for m in weights}


def adjust_weights(weights: Mapping[str, Tensor], t: Tensor, options: CollaborativeOptions) -> dict[str, Tensor]:
    """Apply ``options`` (cosine decay, then boost) to influence weights at timesteps t [B]."""
    out = dict(weights)
    if options.cosine_decay_modality is not None:
        out = cosine_decay(out, options.cosine_decay_modality, t, options.num_timesteps)
    if options.boost != 1.0:
        out = boost_and_renormalise(out, options.boost_modality, options.boost)
    return out


# ------------------------------------------------------------------------------------------------
# Noise-prediction callables for ddim_sample


def make_collaborative_eps_fn(
    expert_eps_fns: Mapping[str, EpsFn],
    diffuser_logit_fns: Mapping[str, LogitFn],
    options: CollaborativeOptions = PAPER,
    on_weights: Optional[WeightsCallback] = None,
    run: Optional[Runner] = None,
) -> EpsFn:
    """An ``eps_fn(x_t, t)`` for :func:`ldm.diffusion.ddim.ddim_sample` doing the collaborative step.

    Each expert and each dynamic diffuser is a callable of (x_t, t) with its condition bound in.
    ``on_weights(t, weights)`` receives the final per-pixel weights (e.g. for influence-map figures).
    ``run`` evaluates the step's independent network calls (``ldm.speed.concurrent_runner`` puts them on
    separate CUDA streams); by default they run one after another.
    """
    if not expert_eps_fns:
        raise ValueError("make_collaborative_eps_fn needs at least one expert")
    _check_same_keys("make_collaborative_eps_fn", expert_eps_fns, diffuser_logit_fns, "dynamic diffusers")
    for modality in options.targeted_modalities:
        _require(expert_eps_fns, modality)
    experts, diffusers = dict(expert_eps_fns), dict(diffuser_logit_fns)
    run = run or _sequential

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        calls = {f"eps/{m}": partial(expert, x_t, t) for m, expert in experts.items()}
        calls.update({f"logits/{m}": partial(diffusers[m], x_t, t) for m in experts})
        out = run(calls)
        eps = {m: out[f"eps/{m}"] for m in experts}
        logits = {m: out[f"logits/{m}"] for m in experts}
        weights = adjust_weights(influence_weights(logits), t, options)
        if on_weights is not None:
            on_weights(t, weights)
        return combine(eps, weights)

    return eps_fn


def composable_weights(modalities: Sequence[str], lambdas: Optional[Mapping[str, float]] = None) -> dict[str, float]:
    """Global weights of the Composable Diffusion baseline: ``lambdas`` as given, or 1/M each."""
    names = list(modalities)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"composable_weights needs distinct modality names, got {names}")
    if lambdas is None:
        return {m: 1.0 / len(names) for m in names}
    _check_same_keys("composable_weights", dict.fromkeys(names), lambdas, "lambdas")
    return {m: float(lambdas[m]) for m in names}


def make_composable_eps_fn(
    expert_eps_fns: Mapping[str, EpsFn], lambdas: Optional[Mapping[str, float]] = None, run: Optional[Runner] = None
) -> EpsFn:
    """An ``eps_fn(x_t, t)`` combining the experts with global (composable) weights (``run``: as for
    :func:`make_collaborative_eps_fn`)."""
    experts = dict(expert_eps_fns)
    weights = composable_weights(list(experts), lambdas)
    run = run or _sequential

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        return combine(run({m: partial(expert, x_t, t) for m, expert in experts.items()}), weights)

    return eps_fn
