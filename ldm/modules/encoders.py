"""Condition encoders: the BERT WordPiece tokenizer, the text transformer and the mask encoder.

Both encoders turn a condition into tokens for the UNet's cross-attention (``encode(raw) -> [B, N, 640]``):

    text      list[str] --BertTokenizer--> [B, 77] ids --TextEncoder--> [B, 77, 640]
    seg_mask  [B, 19, 1024] one-hot (32x32 index mask, row-major) --MaskEncoder--> [B, 19, 640]

The text encoder is trained from scratch with its UNet (only the tokenizer comes from BERT). Its parameter
names are those of the x-transformers ``TransformerWrapper(num_tokens=30522, max_seq_len=77,
attn_layers=Encoder(dim=640, depth=32))`` that latent-diffusion's ``BERTEmbedder`` holds (vendored in LDM as
``ldm/modules/x_transformer.py``), so released checkpoints load strictly:

    transformer.token_emb.weight                          [30522, 640]
    transformer.pos_emb.emb.weight                        [77, 640]
    transformer.attn_layers.layers.{2i}.0.{weight,bias}   LayerNorm before self-attention of layer i
    transformer.attn_layers.layers.{2i}.1.to_{q,k,v}.weight   [512, 640], no bias
    transformer.attn_layers.layers.{2i}.1.to_out.{weight,bias}  [640, 512]
    transformer.attn_layers.layers.{2i+1}.0.{weight,bias} LayerNorm before the feed-forward of layer i
    transformer.attn_layers.layers.{2i+1}.1.net.0.0.{weight,bias}  [2560, 640] (then GELU)
    transformer.attn_layers.layers.{2i+1}.1.net.2.{weight,bias}    [640, 2560]
    transformer.norm.{weight,bias}                        final LayerNorm
    transformer.to_logits.{weight,bias}                   [30522, 640], an unused language-model head

(In x-transformers each ``layers.N`` is ``[norm, block, residual]``; the residual holds no parameters.)
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldm.errors import UserError
from ldm.modules.attention import ATTENTION_BACKENDS, FeedForward

logger = logging.getLogger(__name__)

VOCAB_SIZE = 30522
CLS_ID, SEP_ID, PAD_ID = 101, 102, 0


# ---------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _wordpiece(vocab_path: Optional[str]):
    """bert-base-uncased WordPiece (lower-casing, accent stripping, [CLS] ... [SEP]) from a vocabulary file."""
    from tokenizers import BertWordPieceTokenizer  # installed with transformers; never touches the network

    if vocab_path is None:
        asset = importlib.resources.files("ldm") / "assets" / "bert-base-uncased-vocab.txt"
        with importlib.resources.as_file(asset) as path:
            tokenizer = BertWordPieceTokenizer(str(path), lowercase=True)
    else:
        tokenizer = BertWordPieceTokenizer(vocab_path, lowercase=True)
    if tokenizer.get_vocab_size() != VOCAB_SIZE or tokenizer.token_to_id("[SEP]") != SEP_ID:
        raise UserError(
            f"{vocab_path or 'ldm/assets/bert-base-uncased-vocab.txt'}: not the bert-base-uncased vocabulary "
            f"({tokenizer.get_vocab_size()} tokens, expected {VOCAB_SIZE}); reinstall the package"
        )
    return tokenizer


class BertTokenizer:
    """Captions -> bert-base-uncased token ids [B, max_length]: ``[CLS] ... [SEP]`` padded with ``[PAD]`` = 0.

    Same ids as the released ``BertTokenizerFast.from_pretrained("bert-base-uncased")(truncation=True,
    max_length=77, padding="max_length")``, built from the shipped vocabulary (no download). A caption longer
    than ``max_length`` tokens is cut to its first ``max_length - 2`` WordPieces plus [CLS] and [SEP], with a
    warning saying how many were dropped.
    """

    def __init__(self, max_length: int = 77, vocab_path: Optional[str] = None):
        self.max_length = max_length
        self.vocab_path = vocab_path

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("BertTokenizer takes a list of captions, not a single string; wrap it in a list")
        for text in texts:
            if not isinstance(text, str):
                raise UserError(f"caption {text!r} is not a string; give each caption as text")
            if not text.strip():
                raise UserError("empty caption; give a non-empty --text")

        tokens = torch.full((len(texts), self.max_length), PAD_ID, dtype=torch.long)
        for row, encoding in enumerate(_wordpiece(self.vocab_path).encode_batch(list(texts))):
            ids = encoding.ids  # [CLS] ... [SEP], untruncated
            if len(ids) > self.max_length:
                logger.warning(
                    "caption has %d tokens, more than %d: dropping the last %d (%r...)",
                    len(ids), self.max_length, len(ids) - self.max_length, texts[row][:40],
                )
                ids = ids[: self.max_length - 1] + [SEP_ID]
            tokens[row, : len(ids)] = torch.tensor(ids)
        return tokens  # [B, max_length]


# ---------------------------------------------------------------------------------------------------------
# Text encoder (x-transformers layout)
# ---------------------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention without a padding mask (x-transformers ``Attention``: ``to_out`` is one Linear)."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64):
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.backend = "sdpa"
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_k = nn.Linear(dim, inner_dim, bias=False)
        self.to_v = nn.Linear(dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (
            proj(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # [B, heads, N, dim_head]
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        if self.backend == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        elif self.backend == "math":
            scores = q.float() @ k.float().transpose(-2, -1) * self.dim_head**-0.5  # [B, heads, N, N]
            out = scores.softmax(dim=-1).to(v.dtype) @ v
        else:
            raise ValueError(
                f"unknown attention backend {self.backend!r}; use one of {', '.join(ATTENTION_BACKENDS)}"
            )
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class PositionalEmbedding(nn.Module):
    """Learned absolute positions (x-transformers ``AbsolutePositionalEmbedding``; key ``emb.weight``)."""

    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, n: int, device: torch.device) -> torch.Tensor:
        return self.emb(torch.arange(n, device=device))[None]  # [1, N, dim]


class EncoderLayers(nn.Module):
    """``depth`` pre-LayerNorm residual layers, alternating self-attention and feed-forward.

    ``layers[2i] = [LayerNorm, SelfAttention]``, ``layers[2i + 1] = [LayerNorm, FeedForward]`` (x-transformers
    ``Encoder`` layout).
    """

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, use_checkpoint: bool = False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), SelfAttention(dim, heads, dim_head)]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), FeedForward(dim, mult=4, glu=False)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, block in self.layers:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = x + checkpoint(lambda h, norm=norm, block=block: block(norm(h)), x, use_reentrant=False)
            else:
                x = x + block(norm(x))
        return x


class Transformer(nn.Module):
    """Token + position embeddings, the encoder layers and a final LayerNorm (x-transformers ``TransformerWrapper``).

    ``to_logits`` is the wrapper's language-model head: the released model never uses it (it returns the
    embeddings), but the released checkpoints hold its weights, so it exists for strict loading.
    """

    def __init__(
        self, vocab_size: int, max_seq_len: int, dim: int, depth: int, heads: int, dim_head: int, use_checkpoint: bool
    ):
        super().__init__()
        self.token_emb = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = PositionalEmbedding(dim, max_seq_len)
        self.attn_layers = EncoderLayers(dim, depth, heads, dim_head, use_checkpoint)
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, vocab_size).requires_grad_(False)  # unused: frozen, so DDP and the optimiser skip it

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_emb(tokens) + self.pos_emb(tokens.shape[1], tokens.device)  # [B, N, dim]
        return self.norm(self.attn_layers(x))


class TextEncoder(nn.Module):
    """Captions -> [B, 77, 640] tokens: BERT WordPiece ids, then a 32-layer transformer trained from scratch.

    No padding mask: the [PAD] positions are attended to, as in the released model.
    """

    def __init__(
        self,
        n_embed: int = 640,
        n_layer: int = 32,
        n_heads: int = 8,
        dim_head: int = 64,
        vocab_size: int = VOCAB_SIZE,
        max_seq_len: int = 77,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.transformer = Transformer(vocab_size, max_seq_len, n_embed, n_layer, n_heads, dim_head, use_checkpoint)
        self.tokenizer = BertTokenizer(max_length=max_seq_len)  # plain attribute: no parameters, not saved

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer(tokens)  # [B, 77, 640]

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.transformer.token_emb.weight.device)
        return self(tokens)


# ---------------------------------------------------------------------------------------------------------
# Mask encoder
# ---------------------------------------------------------------------------------------------------------


class MaskEncoder(nn.Module):
    """One-hot segmentation mask [B, 19, 1024] -> 19 tokens [B, 19, 640]: one Linear over each class's pixels."""

    def __init__(self, n_classes: int = 19, n_pixels: int = 1024, n_embed: int = 640):
        super().__init__()
        self.n_classes = n_classes
        self.n_pixels = n_pixels
        self.linear = nn.Linear(n_pixels, n_embed)

    def forward(self, seg_mask: torch.Tensor) -> torch.Tensor:
        return self.linear(seg_mask)  # [B, 19, 640]

    def encode(self, seg_mask: torch.Tensor) -> torch.Tensor:
        if seg_mask.ndim != 3 or tuple(seg_mask.shape[1:]) != (self.n_classes, self.n_pixels):
            raise UserError(
                f"seg_mask has shape {list(seg_mask.shape)}, expected [B, {self.n_classes}, {self.n_pixels}]; "
                "build it with ldm.data.masks.index_mask_to_onehot"
            )
        weight = self.linear.weight
        return self(seg_mask.to(device=weight.device, dtype=weight.dtype))
