"""The dynamic diffuser: predicts where, and when, one modality's expert should steer the denoising.

For each modality m, a dynamic diffuser looks at the noisy latent x_t, the timestep t and the
modality's own condition tokens, and predicts an influence logit at every latent pixel. Across
modalities the logits are turned into weights by a softmax at each pixel (``ldm.diffusion.collaborative``),
and the experts' noise predictions are mixed with them: eps = sum_m w_m * eps_m.

The network is the experts' UNet design, made small (``model_channels 32`` in the paper, 13.1M
parameters) with one output channel. Its output conv is zero-initialised, so every modality's logits
start at 0 and training starts from equal weights.

The timestep enters the ResBlocks in one of two ways (``time_injection``):

- ``"add"`` (default): the embedding is added to the features, as in the released code. Use this to
  load the official checkpoints (keys ``model.<m>_confidence_predictor.diffusion_model.*``).
- ``"adaln"``: the supplementary's eq. (2), h = (1 + s(t)) * LayerNorm(h) + b(t), with LayerNorm over
  the channels of each pixel; ``emb_layers.1`` then emits both s and b (twice the width), so such
  models do not load the official weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ldm.modules.unet import UNetModel


class DynamicDiffuser(nn.Module):
    """Influence logits of one modality: ``(x_t [B, C, H, W], t [B], context [B, M, D]) -> [B, 1, H, W]``."""

    def __init__(
        self,
        *,
        model_channels: int,
        num_res_blocks: int,
        attention_downsample_factors: list[int],
        channel_mult: list[int],
        num_heads: int,
        context_dim: int,
        in_channels: int = 3,
        transformer_depth: int = 1,
        use_checkpoint: bool = False,
        time_injection: str = "add",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.unet = UNetModel(
            in_channels=in_channels,
            out_channels=1,
            model_channels=model_channels,
            num_res_blocks=num_res_blocks,
            attention_downsample_factors=attention_downsample_factors,
            channel_mult=channel_mult,
            num_heads=num_heads,
            context_dim=context_dim,
            transformer_depth=transformer_depth,
            use_checkpoint=use_checkpoint,
            time_injection=time_injection,
            zero_init_output=True,
            dropout=dropout,
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, context)  # [B, 1, H, W] influence logits
