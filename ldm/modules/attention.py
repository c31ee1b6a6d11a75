"""Attention blocks of the latent-diffusion UNet: cross-attention, GEGLU feed-forward, spatial transformer.

The parameter names follow the released LDM layout, so official checkpoints load without renaming:

    SpatialTransformer        norm, proj_in (1x1 conv), transformer_blocks.N, proj_out (1x1 conv)
    BasicTransformerBlock     attn1 (self), attn2 (cross), ff.net.{0.proj, 2}, norm1, norm2, norm3
    CrossAttention            to_q, to_k, to_v (no bias), to_out.0

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (``backend = "sdpa"``,
the default, which picks a fused kernel where one exists) or through the explicit
softmax(Q K^T / sqrt(d)) V with the scores in float32 (``backend = "math"``, the reference path).
Switch a whole model with :func:`set_attention_backend`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

ATTENTION_BACKENDS = ("sdpa", "math")


def set_attention_backend(model: nn.Module, backend: str) -> None:
    """Set ``backend`` on every attention module of ``model`` (every submodule with a ``backend`` attribute)."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; use one of {', '.join(ATTENTION_BACKENDS)}")
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = backend


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype (safe under bf16/fp16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` [B, N, query_dim] over ``context`` [B, M, context_dim] (self if None)."""

    def __init__(
        self,
        query_dim: int,
        context_dim: Optional[int] = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.dim_head = dim_head
        self.backend = "sdpa"
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.dim_head).transpose(1, 2)  # [B, heads, N, dim_head]

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        q = self._split_heads(self.to_q(x))
        k = self._split_heads(self.to_k(context))
        v = self._split_heads(self.to_v(context))

        if self.backend == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        elif self.backend == "math":
            scores = q.float() @ k.float().transpose(-2, -1) * self.dim_head**-0.5  # [B, heads, N, M]
            out = scores.softmax(dim=-1).to(v.dtype) @ v
        else:
            raise ValueError(
                f"unknown attention backend {self.backend!r}; use one of {', '.join(ATTENTION_BACKENDS)}"
            )

        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)  # [B, N, inner_dim]
        return self.to_out(out)


# ---------------------------------------------------------------------------------------------------------
# Feed-forward
# ---------------------------------------------------------------------------------------------------------


class GEGLU(nn.Module):
    """GELU-gated linear unit: one projection to 2 * dim_out, half of it gates the other half."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """Position-wise MLP ``dim -> mult*dim -> dim`` (GEGLU input projection when ``glu``)."""

    def __init__(self, dim: int, mult: int = 4, glu: bool = True, dropout: float = 0.0):
        super().__init__()
        inner_dim = dim * mult
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------------------


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, cross-attention to the condition tokens, feed-forward.

    ``self_attention=False`` (not in the released model) drops the self-attention and its LayerNorm
    (no ``attn1`` / ``norm1`` keys): the block then costs O(N·M) in its N pixels and M condition tokens
    instead of O(N²), which is what makes it affordable on a large feature map.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        context_dim: Optional[int] = None,
        use_checkpoint: bool = False,
        dropout: float = 0.0,
        self_attention: bool = True,
    ):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout) if self_attention else None
        self.ff = FeedForward(dim, glu=True, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim) if self_attention else None
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, context, use_reentrant=False)
        return self._forward(x, context)

    def _forward(self, x: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        if self.attn1 is not None:
            x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        x = x + self.ff(self.norm3(x))
        return x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map [B, C, H, W], conditioned on tokens [B, M, context_dim].

    GroupNorm, 1x1 conv in, ``depth`` transformer blocks on the H*W tokens, 1x1 conv out (zero-initialised,
    so a fresh block is the identity), residual.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        context_dim: Optional[int] = None,
        use_checkpoint: bool = False,
        dropout: float = 0.0,
        self_attention: bool = True,
    ):
        super().__init__()
        inner_dim = n_heads * d_head
        self.norm = GroupNorm32(32, in_channels, eps=1e-6)
        self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, context_dim, use_checkpoint, dropout, self_attention)
            for _ in range(depth)
        )
        self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, _, h, w = x.shape
        residual = x
        x = self.proj_in(self.norm(x))
        x = x.flatten(2).transpose(1, 2)  # [B, H*W, inner_dim]
        for block in self.transformer_blocks:
            x = block(x, context)
        x = x.transpose(1, 2).reshape(b, -1, h, w)
        return self.proj_out(x) + residual
