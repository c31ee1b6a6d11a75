"""Influence maps across the sampler's steps, as the supplementary's Figures A4/A5 show them, for a page.

One *frame* per recorded step: the decoded x_t, then each modality's influence (its weight w_m after the
softmax across modalities, per latent pixel, in [0, 1]) in a colour scale, then the scale itself with its
ticks, under a title naming the step and its timestep. Frames are PNGs a slider browses; the same frames make
an animated GIF.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ldm.images import save_png, to_uint8
from ldm.pipeline import Trace

# viridis at five stops (dark violet = 0 -> yellow = 1): ordered in lightness, readable in greyscale.
SCALE_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
SCALE_COLOURS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64)
MODALITY_TITLES = {"text": "text", "seg_mask": "mask", "sketch": "sketch"}
MAX_FRAMES = 50  # longer runs show this many evenly spaced steps (the first and the last included)


def font(size: int = 13) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def colour_scale(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (shape + [3]) on the viridis scale."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    channels = [np.interp(v, SCALE_STOPS, SCALE_COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def colour_bar(height: int, width: int = 64, ticks: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
               title: str = "weight") -> np.ndarray:
    """A vertical colour scale (1 at the top) with tick labels, on white: uint8 [height, width, 3]."""
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    top, bottom, bar_w = 18, height - 8, 14
    ramp = np.linspace(1.0, 0.0, bottom - top)[:, None].repeat(bar_w, axis=1)
    canvas.paste(Image.fromarray(colour_scale(ramp)), (4, top))
    draw = ImageDraw.Draw(canvas)
    small = font(11)
    draw.text((2, 2), title, fill=(0, 0, 0), font=small)
    for value in ticks:
        y = round(bottom - 1 - value * (bottom - top - 1))
        draw.line((4 + bar_w, y, 8 + bar_w, y), fill=(0, 0, 0))
        draw.text((11 + bar_w, y - 6), f"{value:g}", fill=(0, 0, 0), font=small)
    return np.asarray(canvas)


def frame_steps(num_steps: int, max_frames: int = MAX_FRAMES) -> list[int]:
    """Which recorded steps get a frame: all of them, or ``max_frames`` evenly spaced (first and last kept)."""
    if num_steps <= max_frames:
        return list(range(num_steps))
    return sorted({round(k * (num_steps - 1) / (max_frames - 1)) for k in range(max_frames)})


def influence_frame(title: str, x_t: np.ndarray, maps: Mapping[str, np.ndarray], tile: int = 160) -> np.ndarray:
    """One frame: ``title`` over [decoded x_t | influence of each modality | colour scale], labelled.

    ``x_t``: uint8 [H, W, 3]; ``maps``: {modality: weights [h, w] in [0, 1]}."""
    panels = [("x_t (decoded)", x_t)] + [(f"influence of the {MODALITY_TITLES.get(m, m)}", colour_scale(w)) for m, w in maps.items()]
    pad, head, label_h = 6, 22, 18
    width = pad + len(panels) * (tile + pad) + 64
    height = head + label_h + tile + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 4), title, fill=(0, 0, 0), font=font(14))
    for k, (label, picture) in enumerate(panels):
        x = pad + k * (tile + pad)
        draw.text((x, head), label, fill=(0, 0, 0), font=font(12))
        canvas.paste(Image.fromarray(picture).resize((tile, tile), Image.Resampling.NEAREST), (x, head + label_h))
    bar = colour_bar(tile + label_h)
    canvas.paste(Image.fromarray(bar), (width - 64, head))
    return np.asarray(canvas)


def influence_frames(trace: Trace, decode: Callable[[torch.Tensor], torch.Tensor], index: int = 0,
                     tile: int = 160, max_frames: int = MAX_FRAMES) -> list[np.ndarray]:
    """The frames of sample ``index`` of a recorded collaborative run; ``decode`` maps latents to images
    in [-1, 1]. Step ``s`` of ``n`` is titled with its timestep."""
    n = min([len(trace.timesteps), len(trace.x_t), *(len(w) for w in trace.weights.values())])
    frames = []
    for s in frame_steps(n, max_frames):
        x_t = to_uint8(decode(trace.x_t[s][index:index + 1])[0])
        maps = {m: w[s][index, 0].numpy() for m, w in trace.weights.items()}
        frames.append(influence_frame(f"step {s + 1} of {n}, t = {trace.timesteps[s]}", x_t, maps, tile))
    return frames


def write_frames(frames: Sequence[np.ndarray], out_dir: str | Path, gif_ms: int = 120) -> tuple[list[Path], Optional[Path]]:
    """``frame_000.png`` ... and ``influence.gif`` (the last frame held longer) in ``out_dir``."""
    out_dir = Path(out_dir)
    paths = []
    for k, frame in enumerate(frames):
        path = out_dir / f"frame_{k:03d}.png"
        save_png(frame, path)
        paths.append(path)
    if not frames:
        return paths, None
    pictures = [Image.fromarray(f) for f in frames]
    gif = out_dir / "influence.gif"
    durations = [gif_ms] * (len(pictures) - 1) + [gif_ms * 10]
    pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=durations, loop=0, optimize=False)
    return paths, gif
