"""The first stage: a KL-regularised convolutional autoencoder (LDM's ``AutoencoderKL``).

Images ``[B, 3, H, W]`` in [-1, 1] are encoded to a diagonal Gaussian over latents
``[B, embed_dim, H / f, W / f]`` with ``f = 2 ** (len(ch_mult) - 1)``; the paper's 256 model uses
``ch_mult [1, 2, 4]`` (f = 4) and its 512 model ``[1, 2, 4, 4]`` (f = 8), both giving 3x64x64 latents.

Module names follow the released state_dict exactly (``encoder.down.{i}.block.{j}.conv1``,
``encoder.mid.attn_1.q``, ``decoder.up.{i}.upsample.conv``, ``quant_conv``, ...), so released VAE
weights load strictly.

Sections: building blocks (ResnetBlock, AttnBlock, Downsample, Upsample) -> Encoder -> Decoder ->
DiagonalGaussian -> AutoencoderKL.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.errors import ConfigError


# ----------------------------------------------------------------------------------------------
# Building blocks


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus a 1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with 1x1-conv projections.

    ``backend`` is ``"sdpa"`` (``scaled_dot_product_attention``) or ``"math"`` (the explicit
    softmax(QK^T / sqrt(C)) V, kept as reference); see ``ldm.modules.attention.set_attention_backend``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.backend = "sdpa"

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        x_norm = self.norm(x)
        # [B, C, H, W] -> [B, 1, H*W, C]: one head whose width is the channel count
        q, k, v = (proj(x_norm).reshape(b, 1, c, h * w).transpose(2, 3) for proj in (self.q, self.k, self.v))
        if self.backend == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        elif self.backend == "math":
            weights = torch.softmax(q @ k.transpose(2, 3) * c**-0.5, dim=-1)  # [B, 1, HW, HW]
            out = weights @ v
        else:
            raise ValueError(f"unknown attention backend {self.backend!r}; use 'sdpa' or 'math'")
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel on the right and bottom only (as released)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ``block.{j}``, ``attn.{j}`` (usually empty), then ``downsample`` or
    ``upsample`` (absent at the last level); an empty container in the released layout."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample: Optional[nn.Module], kind: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        self.resample_name = None if resample is None else kind
        if resample is not None:
            self.add_module(kind, resample)

    def forward(self, h: Tensor) -> Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[j](h)
        return h if self.resample_name is None else getattr(self, self.resample_name)(h)


class MidBlock(nn.Module):
    """ResnetBlock -> self-attention -> ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


# ----------------------------------------------------------------------------------------------
# Encoder and decoder


class Encoder(nn.Module):
    """Image ``[B, in_channels, R, R]`` -> moments ``[B, 2 * z_channels (or z_channels), R / f, R / f]``."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: list[int],
        num_res_blocks: int,
        in_channels: int,
        z_channels: int,
        double_z: bool,
        resolution: int,
        attn_resolutions: list[int],
        dropout: float,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels = []
        width, res = ch, resolution
        for i, mult in enumerate(ch_mult):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(width, ch * mult, dropout))
                width = ch * mult
                if res in attn_resolutions:
                    attns.append(AttnBlock(width))
            last = i == len(ch_mult) - 1
            levels.append(Level(blocks, attns, None if last else Downsample(width), "downsample"))
            res = res if last else res // 2
        self.down = nn.ModuleList(levels)
        self.mid = MidBlock(width, dropout)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent ``[B, z_channels, R / f, R / f]`` -> image ``[B, out_ch, R, R]``.

    ``up.{i}`` is the level of width ``ch * ch_mult[i]`` (run from the last level to the first), with
    ``num_res_blocks + 1`` ResnetBlocks each, as released.
    """

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: list[int],
        num_res_blocks: int,
        out_ch: int,
        z_channels: int,
        resolution: int,
        attn_resolutions: list[int],
        dropout: float,
    ):
        super().__init__()
        width = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = MidBlock(width, dropout)
        levels: list[Level] = []
        for i in reversed(range(len(ch_mult))):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(width, ch * ch_mult[i], dropout))
                width = ch * ch_mult[i]
                if res in attn_resolutions:
                    attns.append(AttnBlock(width))
            levels.insert(0, Level(blocks, attns, Upsample(width) if i > 0 else None, "upsample"))
            res = res * 2 if i > 0 else res
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------------------------
# Posterior


class DiagonalGaussian:
    """N(mean, exp(logvar)) per latent element, from moments ``[B, 2C, h, w]`` (mean first)."""

    def __init__(self, moments: Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) summed over the latent, one value per sample: ``[B]``."""
        return 0.5 * torch.sum(self.mean**2 + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


# ----------------------------------------------------------------------------------------------
# The autoencoder


class AutoencoderOutput(NamedTuple):
    reconstruction: Tensor  # [B, out_ch, H, W]
    posterior: DiagonalGaussian


class AutoencoderKL(nn.Module):
    """Encoder -> ``quant_conv`` -> DiagonalGaussian; latent -> ``post_quant_conv`` -> Decoder."""

    def __init__(
        self,
        *,
        embed_dim: int,
        z_channels: int,
        ch: int,
        ch_mult: list[int],
        num_res_blocks: int,
        resolution: int,
        double_z: bool = True,
        in_channels: int = 3,
        out_ch: int = 3,
        dropout: float = 0.0,
        attn_resolutions: Optional[list[int]] = None,
    ):
        super().__init__()
        if not double_z:
            raise ConfigError(
                "AutoencoderKL: double_z must be true (the encoder emits mean and logvar); set double_z: true"
            )
        attn_resolutions = list(attn_resolutions or [])  # released: [] (attention only in the mid block)
        shared = dict(ch=ch, ch_mult=list(ch_mult), num_res_blocks=num_res_blocks, z_channels=z_channels,
                      resolution=resolution, attn_resolutions=attn_resolutions, dropout=dropout)
        self.encoder = Encoder(in_channels=in_channels, double_z=double_z, **shared)
        self.decoder = Decoder(out_ch=out_ch, **shared)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.embed_dim = embed_dim
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        self.resolution = resolution

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latent of a ``resolution``² image, e.g. (3, 64, 64) at paper scale."""
        size = self.resolution // self.downsample_factor
        return (self.embed_dim, size, size)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))  # moments [B, 2 * embed_dim, h, w]

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, x: Tensor, sample_posterior: bool = True, generator: Optional[torch.Generator] = None
    ) -> AutoencoderOutput:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return AutoencoderOutput(self.decode(z), posterior)

    @property
    def last_layer(self) -> Tensor:
        """The decoder's output conv weight, where the VAE loss balances its NLL and GAN terms."""
        return self.decoder.conv_out.weight
