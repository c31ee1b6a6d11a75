"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models"), B(h) = e^h - 1 ("bh2"), order 2, data prediction, over any noise-prediction callable.

One ``eps_fn`` call per step, like DDIM: the network's output at the new point serves twice, first to correct
the point (UniC), then to predict the next one (UniP). With lambda, x0_i and the notation of
:mod:`ldm.diffusion.dpm_solver`, going from point s to point t (h = lambda_t - lambda_s, B = e^{-h} - 1):

    base       = (sigma_t / sigma_s) x_s - alpha_t B x0_s
    predictor  x_t = base - alpha_t B (x0_{s-1} - x0_s) / (2 r),              r = (lambda_{s-1} - lambda_s) / h
                 (the first step and the last, to sigma = 0, are first order: x_t = base)
    corrector  x_t <- base - alpha_t B (rho_1 (x0_{s-1} - x0_s) / r + rho_t (x0_t - x0_s))
                 order 1: rho_t = 1/2;  order 2: [[1, 1], [r, 1]] (rho_1, rho_t) = (b_1, b_2) with
                 b_1 = (phi_1 - 1) / B, b_2 = 2 ((phi_1 - 1) / (-h) - 1/2) / B, phi_1 = B / (-h)

where the corrector's order is the order of the predictor step it corrects, x0_t comes from the network at the
predicted (uncorrected) x_t, and the next predictor starts from the corrected x_t with that same x0_t. The
second-order predictor is DPM-Solver++(2M)'s step. The last step goes to sigma = 0 and returns the last
x0 prediction. The same trajectory as diffusers' ``UniPCMultistepScheduler`` with ``solver_type="bh2"``,
``solver_order=2``, ``predict_x0=True``, ``lower_order_final=True`` and no disabled corrector steps (tested).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ldm.diffusion.ddim import EpsFn, StepCallback
from ldm.diffusion.dpm_solver import SolverPoints, call_eps, solver_points
from ldm.diffusion.schedule import NoiseSchedule


def _predict(p: SolverPoints, s: int, x: Tensor, x0: Tensor, x0_prev: Optional[Tensor], order: int) -> Tensor:
    """UniP-``order`` from point s (sample x, its x0; x0_prev at point s - 1) to point s + 1."""
    t = s + 1
    if p.sigma[t] == 0.0:
        return x0  # base with sigma_t = 0, alpha_t = 1 and B = -1
    h = p.lam[t] - p.lam[s]
    b = math.expm1(-h)
    x_t = (p.sigma[t] / p.sigma[s]) * x - (p.alpha[t] * b) * x0
    if order == 2:
        r = (p.lam[s - 1] - p.lam[s]) / h
        x_t = x_t - (p.alpha[t] * b * 0.5 / r) * (x0_prev - x0)
    return x_t


def _correct(p: SolverPoints, t: int, x_s: Tensor, x0_s: Tensor, x0_before: Optional[Tensor], x0_t: Tensor,
             order: int) -> Tensor:
    """UniC-``order`` of point t, predicted from point s = t - 1 (sample x_s, its x0_s; x0_before at t - 2),
    given the x0 prediction x0_t at the predicted point."""
    s = t - 1
    h = p.lam[t] - p.lam[s]
    b = math.expm1(-h)
    base = (p.sigma[t] / p.sigma[s]) * x_s - (p.alpha[t] * b) * x0_s
    if order == 1:
        return base - (p.alpha[t] * b * 0.5) * (x0_t - x0_s)
    r = (p.lam[s - 1] - p.lam[s]) / h
    phi_1 = b / -h
    b_1 = (phi_1 - 1.0) / b
    b_2 = 2.0 * ((phi_1 - 1.0) / -h - 0.5) / b
    rho_1 = (b_1 - b_2) / (1.0 - r)
    rho_t = b_1 - rho_1
    return base - (p.alpha[t] * b * rho_1 / r) * (x0_before - x0_s) - (p.alpha[t] * b * rho_t) * (x0_t - x0_s)


@torch.no_grad()
def unipc_sample(
    eps_fn: EpsFn,
    x_T: Tensor,
    schedule: NoiseSchedule,
    timesteps: Union[Tensor, Sequence[int]],
    *,
    callback: Optional[StepCallback] = None,
    progress: bool = False,
) -> Tensor:
    """Run UniPC (bh2, order 2) from ``x_T`` down the (ascending) ``timesteps`` to sigma = 0; returns x_0.

    Deterministic. ``callback(step_index, t, x, x0_pred)`` runs after each step with the predicted sample
    (the next step corrects it before predicting on). One ``eps_fn`` call per step. Runs under ``torch.no_grad``.
    """
    p = solver_points(schedule, timesteps)
    n = len(p.timesteps)
    x = x_T
    x0s: list[Tensor] = []  # x0 predictions so far, one per point
    x_start: Optional[Tensor] = None  # the (corrected) sample the last predictor started from
    last_order = 0
    for i, t in enumerate(tqdm(p.timesteps, desc="UniPC", disable=not progress)):
        eps = call_eps(eps_fn, x, t)
        x0 = (x - p.sigma[i] * eps) / p.alpha[i]
        if i > 0:
            x = _correct(p, i, x_start, x0s[-1], x0s[-2] if last_order == 2 else None, x0, last_order)
        order = min(2, n - i, i + 1)
        x_start = x
        x = _predict(p, i, x, x0, x0s[-1] if order == 2 else None, order)
        x0s = [*x0s[-1:], x0]
        last_order = order
        if callback is not None:
            callback(i, t, x, x0)
    return x
