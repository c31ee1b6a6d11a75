"""Pieces shared by the Lightning modules."""

from __future__ import annotations

import torch
import torch.nn as nn

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads (seed, step, rank) over the seed space


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """A generator for one training step, a pure function of (seed, step, rank).

    Training draws its timesteps and noise from it instead of the global RNG, so a run resumed at step
    k draws exactly what the uninterrupted run drew at step k, on any number of workers.
    """
    mixed = (seed * _MIX + step * 1_000_003 + rank * 7919) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(mixed)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients: for the frozen VAE and the frozen experts."""
    module.eval()
    module.requires_grad_(False)
    return module
