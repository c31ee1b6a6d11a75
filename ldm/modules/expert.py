"""A uni-modal expert: the frozen-or-trainable UNet paired with its condition encoder."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from ldm.diffusion.schedule import NoiseSchedule
from ldm.errors import ConfigError
from ldm.modules.unet import UNetModel

PREDICTIONS = ("eps", "v")


class Expert(nn.Module):
    """ε_θm(x_t, t, c_m): one modality's conditional noise predictor.

    ``cond_encoder`` turns the batch's raw condition (captions, one-hot masks, ...) into context tokens
    ``[B, N, context_dim]`` through its ``encode`` method; ``unet`` predicts from them.

    ``prediction`` is what the UNet's output means; ``forward`` always returns ε, so samplers, the
    collaborative step and editing never see the difference:

    * ``eps`` (released): the UNet predicts ε directly.
    * ``v``: the UNet predicts v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x_0 (Salimans & Ho, 2022) and
      ε = sqrt(ᾱ_t) v + sqrt(1 − ᾱ_t) x_t. At large t (ᾱ_t → 0) ε̂ tends to x_t / sqrt(1 − ᾱ_t), which is
      nearly exact there, so an imperfect network cannot leave residual noise in the samples; trained
      on ‖v̂ − v‖² the ε-error is weighted by 1 / ᾱ_t. ``schedule`` supplies ᾱ_t (the experts' own).
    """

    def __init__(self, unet: UNetModel, cond_encoder: nn.Module, prediction: str = "eps", schedule: Optional[NoiseSchedule] = None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ConfigError(f"Expert: prediction {prediction!r} is not one of {list(PREDICTIONS)}")
        self.unet = unet
        self.cond_encoder = cond_encoder
        self.prediction = prediction
        self.schedule = schedule if schedule is not None else NoiseSchedule()
        # ᾱ_t travels with the module's device (not saved: the checkpoint layout stays the released one)
        self.register_buffer("alphas_cumprod", self.schedule.alphas_cumprod.float(), persistent=False)

    def encode(self, raw_condition: Any) -> torch.Tensor:
        return self.cond_encoder.encode(raw_condition)  # [B, N, 640]

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The UNet's own output (ε or v, see ``prediction``), same shape as x_t."""
        return self.unet(x_t, t, context)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What ``predict`` is trained towards for x_t = q_sample(x0, t, noise)."""
        if self.prediction == "eps":
            return noise
        a = self._alpha_bar(t, x0)
        return a.sqrt() * noise - (1.0 - a).sqrt() * x0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        out = self.predict(x_t, t, context)
        if self.prediction == "eps":
            return out  # ε prediction, same shape as x_t
        a = self._alpha_bar(t, x_t)
        return a.sqrt() * out + (1.0 - a).sqrt() * x_t  # ε from v

    def _alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).long()
        a = self.alphas_cumprod[t.expand(like.shape[0]) if t.dim() == 0 else t]
        return a.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))  # [B, 1, 1, 1]
