"""Turning tensors into image files and grids (no torchvision needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ldm.fileio import atomic_write_bytes


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] (or [1, H, W] in [0, 1] with ``unit=True`` callers) -> [H, W, 3] uint8."""
    x = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, *x.shape[1:])
    return x.permute(1, 2, 0).numpy()


def unit_to_uint8(maps: torch.Tensor) -> np.ndarray:
    """[1, H, W] in [0, 1] (an influence map) -> [H, W, 3] uint8 grey."""
    x = (maps.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.expand(3, *x.shape[1:]).permute(1, 2, 0).numpy()


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write an [H, W, 3] uint8 array as PNG, atomically (no partial file on interruption)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def resize_nearest(array: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((size, size), Image.NEAREST))


def grid(tiles: Sequence[Sequence[Optional[np.ndarray]]], tile: int, pad: int = 2, labels: Sequence[str] = ()) -> np.ndarray:
    """Lay out rows of [H, W, 3] tiles (None = blank) at ``tile`` px each, with optional row labels."""
    rows, cols = len(tiles), max(len(r) for r in tiles)
    label_w = 0 if not labels else 7 * max(len(s) for s in labels) + 8
    out = np.full((rows * (tile + pad) + pad, label_w + cols * (tile + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(tiles):
        for c, img in enumerate(row):
            if img is None:
                continue
            y, x = pad + r * (tile + pad), label_w + pad + c * (tile + pad)
            out[y:y + tile, x:x + tile] = resize_nearest(img, tile) if img.shape[0] != tile else img
    if labels:
        canvas = Image.fromarray(out)
        draw = ImageDraw.Draw(canvas)
        for r, text in enumerate(labels):
            draw.text((2, pad + r * (tile + pad) + tile // 2 - 5), text, fill=(0, 0, 0))
        out = np.asarray(canvas)
    return out


def text_tile(text: str, size: int, chars_per_line: int = 0) -> np.ndarray:
    """A white tile with ``text`` wrapped on it (for captions in figures)."""
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    width = chars_per_line or max(size // 7, 4)
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for i, content in enumerate(lines[: size // 11]):
        draw.text((3, 3 + 11 * i), content, fill=(0, 0, 0))
    return np.asarray(canvas)
