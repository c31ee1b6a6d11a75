"""The denoising UNet of latent diffusion (openai / LDM layout), used by the experts and the dynamic diffusers.

State-dict keys are exactly the released ones, so official checkpoints load as they are:

    time_embed.{0,2}                       timestep MLP (sinusoid -> 4 * model_channels)
    input_blocks.0.0                       input conv
    input_blocks.N.0 / .N.1                ResBlock / SpatialTransformer (where attention is placed)
    input_blocks.N.0.op                    stride-2 downsample conv at the end of each level but the last
    middle_block.{0,1,2}                   ResBlock, SpatialTransformer, ResBlock
    output_blocks.N.{0,1,2}                ResBlock (on the concatenated skip), SpatialTransformer, Upsample.conv
    out.{0,2}                              GroupNorm, conv to out_channels
    context_embed                          only with ``pooled_context=True`` (not in the released model)

Attention is placed by downsample factor: ``attention_downsample_factors=[2, 4, 8]`` puts a
SpatialTransformer at the levels whose feature maps are 2x, 4x and 8x smaller than the input
(the released configs call this list ``attention_resolutions``). ``cross_attention_only_factors`` (empty in
the released model) names some of those levels whose transformers keep the cross-attention to the condition but
drop the self-attention over the pixels: the condition reaches a fine grid without the cost quadratic in its size.

The timestep enters every ResBlock in one of two ways (``time_injection``):

- ``"add"``: the released layout; ``h = h + Linear(SiLU(emb))`` after the first conv.
- ``"adaln"``: the supplementary's eq. (2); ``h = (1 + s(t)) * LayerNorm(h) + b(t)``, LayerNorm over
  the channels of each pixel (no affine), ``s`` and ``b`` from one linear layer of the embedding.

``pooled_context=True`` (off in the released model) also gives every ResBlock the condition: the mean of the
condition tokens, through one linear layer, is added to the timestep embedding, as class-conditional diffusion
models add their class embedding. Cross-attention stays; this is a second, global path.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldm.modules.attention import GroupNorm32, SpatialTransformer

TIME_INJECTIONS = ("add", "adaln")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of timesteps ``t`` [B] (any dtype), float32, cos half first as released."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _check_time_injection(time_injection: str) -> None:
    if time_injection not in TIME_INJECTIONS:
        raise ValueError(
            f"time_injection={time_injection!r} is not supported; use 'add' (released layout) "
            f"or 'adaln' (supplementary eq. (2))"
        )


def _zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# ---------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """Residual block of two 3x3 convs with the timestep embedding injected between them."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        dropout: float = 0.0,
        time_injection: str = "add",
        use_checkpoint: bool = False,
    ):
        super().__init__()
        _check_time_injection(time_injection)
        self.time_injection = time_injection
        self.use_checkpoint = use_checkpoint
        emb_out = 2 * out_channels if time_injection == "adaln" else out_channels  # adaln: scale and shift

        self.in_layers = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            _zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, kernel_size=1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # [B, C or 2C, 1, 1]
        if self.time_injection == "add":
            h = h + e
        else:  # eq. (2): h = (1 + s(t)) * LayerNorm(h) + b(t)
            s, b = e.chunk(2, dim=1)
            h = (1 + s) * _channel_layer_norm(h) + b
        return self.skip_connection(x) + self.out_layers(h)


def _channel_layer_norm(h: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the channels of each pixel of [B, C, H, W], no affine, computed in float32."""
    h32 = h.float()
    mean = h32.mean(dim=1, keepdim=True)
    var = h32.var(dim=1, unbiased=False, keepdim=True)
    return ((h32 - mean) * torch.rsqrt(var + eps)).to(h.dtype)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (key ``op``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """A sequence of layers; ResBlocks also receive the timestep embedding, transformers the context."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


# ---------------------------------------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------------------------------------


class UNetModel(nn.Module):
    """Noise-prediction UNet ``(x [B, C, H, W], t [B], context [B, M, context_dim]) -> [B, out_channels, H, W]``.

    Args:
        in_channels, out_channels: channels of the input and output maps (3 for the latents).
        model_channels: width of the first level; level ``i`` has ``model_channels * channel_mult[i]``.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_downsample_factors: downsample factors (1, 2, 4, ...) of the levels that get a
            SpatialTransformer after each ResBlock. The middle block always has one.
        channel_mult: width multiplier per level; ``len(channel_mult) - 1`` downsamples.
        num_heads: attention heads; head width = channels // num_heads at each level.
        context_dim: width of the condition tokens attended to by cross-attention.
        transformer_depth: transformer blocks per SpatialTransformer.
        use_checkpoint: gradient checkpointing of every ResBlock and transformer block.
        time_injection: ``"add"`` (released) or ``"adaln"`` (supplementary eq. (2)); see the module docstring.
        zero_init_output: zero the output conv, so a fresh model predicts exactly 0.
        dropout: dropout inside the ResBlocks.
        pooled_context: add ``Linear(mean of the context tokens)`` to the timestep embedding (not in the
            released model; see the module docstring).
        cross_attention_only_factors: a subset of ``attention_downsample_factors`` whose transformers have no
            self-attention (not in the released model; see the module docstring). The middle block keeps its own.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        num_res_blocks: int,
        attention_downsample_factors: list[int],
        channel_mult: list[int],
        num_heads: int,
        context_dim: int,
        transformer_depth: int = 1,
        use_checkpoint: bool = False,
        time_injection: str = "add",
        zero_init_output: bool = True,
        dropout: float = 0.0,
        pooled_context: bool = False,
        cross_attention_only_factors: Sequence[int] = (),
    ):
        super().__init__()
        _check_time_injection(time_injection)
        attention_factors = {int(f) for f in attention_downsample_factors}
        cross_only = {int(f) for f in cross_attention_only_factors}
        if not cross_only <= attention_factors:
            raise ValueError(
                f"cross_attention_only_factors {sorted(cross_only)} must be levels that have attention "
                f"(attention_downsample_factors {sorted(attention_factors)}); add them there or drop them here"
            )
        reachable = {2**level for level in range(len(channel_mult))}
        if not attention_factors <= reachable:
            raise ValueError(
                f"attention_downsample_factors {sorted(attention_factors)} include factors this UNet never reaches; "
                f"with {len(channel_mult)} levels use a subset of {sorted(reachable)}"
            )
        for mult in channel_mult:
            width = model_channels * mult
            if width % 32 or width % num_heads:
                raise ValueError(
                    f"level width {width} (model_channels * channel_mult) must be divisible by 32 (GroupNorm) "
                    f"and by num_heads={num_heads}; change model_channels, channel_mult or num_heads"
                )

        self.model_channels = model_channels
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.context_embed = nn.Linear(context_dim, emb_dim) if pooled_context else None

        def res_block(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, dropout, time_injection, use_checkpoint)

        def transformer(ch: int, factor: Optional[int] = None) -> SpatialTransformer:
            return SpatialTransformer(
                ch, num_heads, ch // num_heads, transformer_depth, context_dim, use_checkpoint,
                self_attention=factor not in cross_only,
            )

        # Down: input conv, then per level num_res_blocks x (ResBlock [+ attention]), then a downsample.
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch, factor = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, model_channels * mult)]
                ch = model_channels * mult
                if factor in attention_factors:
                    layers.append(transformer(ch, factor))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                factor *= 2

        self.middle_block = EmbedSequential(res_block(ch, ch), transformer(ch), res_block(ch, ch))

        # Up: per level num_res_blocks + 1 x (ResBlock on [h, skip] [+ attention]), upsample after the last.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if factor in attention_factors:
                    layers.append(transformer(ch, factor))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    factor //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        out_conv = nn.Conv2d(model_channels, out_channels, 3, padding=1)
        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), _zero_(out_conv) if zero_init_output else out_conv)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))  # [B, 4 * model_channels]
        if self.context_embed is not None:
            if context is None:
                raise ValueError("this UNet has pooled_context=True and needs a context")
            emb = emb + self.context_embed(context.mean(dim=1))  # [B, M, context_dim] -> [B, 4 * model_channels]
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)
