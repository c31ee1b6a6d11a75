"""A uni-modal expert: the frozen-or-trainable UNet paired with its condition encoder."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ldm.modules.unet import UNetModel


class Expert(nn.Module):
    """ε_θm(x_t, t, c_m): one modality's conditional noise predictor.

    ``cond_encoder`` turns the batch's raw condition (captions, one-hot masks, ...) into context tokens
    ``[B, N, context_dim]`` through its ``encode`` method; ``unet`` predicts the noise from them.
    """

    def __init__(self, unet: UNetModel, cond_encoder: nn.Module):
        super().__init__()
        self.unet = unet
        self.cond_encoder = cond_encoder

    def encode(self, raw_condition: Any) -> torch.Tensor:
        return self.cond_encoder.encode(raw_condition)  # [B, N, 640]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, context)  # ε prediction, same shape as x_t
