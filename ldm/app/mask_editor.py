"""The mask editor's side of the app: named brush colours, start masks, and strokes -> an index mask.

The page shows a mask as an RGB picture in the 19 CelebAMask-HQ palette colours (``EDITOR_SIZE`` square, each
class id painted in its colour) and the user paints on it with brushes of exactly those colours. What comes
back is the background picture and the stroke layers (RGBA). :func:`editor_to_index` turns them into class
ids: the background must be a palette picture (the few off-palette pixels a browser's resampling may leave
are snapped to the nearest colour; more than a few is refused as "not a mask"), and every stroke pixel at
least half opaque takes the class of its nearest palette colour (the brush's own colour; anti-aliased stroke
edges keep it, since their transparency is in the alpha channel).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ldm.data import faceworld
from ldm.data.masks import (
    CLASS_NAMES,
    NUM_CLASSES,
    PALETTE,
    check_condition_shape,
    colorize,
    load_mask_png,
    rgb_to_index,
)
from ldm.errors import DataError

EDITOR_SIZE = 256  # the editing canvas: masks are shown (nearest-enlarged) and painted at this size
STROKE_ALPHA = 128  # a stroke pixel at least this opaque sets its class
MAX_OFF_PALETTE = 0.05  # share of background pixels allowed off the palette (snapped); more: not a mask

CLASS_LABELS = {
    "background": "background", "skin": "skin", "nose": "nose", "eye_g": "eyeglasses", "l_eye": "left eye",
    "r_eye": "right eye", "l_brow": "left brow", "r_brow": "right brow", "l_ear": "left ear", "r_ear": "right ear",
    "mouth": "mouth", "u_lip": "upper lip", "l_lip": "lower lip", "hair": "hair", "hat": "hat",
    "ear_r": "earring", "neck_l": "necklace", "neck": "neck", "cloth": "cloth",
}  # fmt: skip


def hex_colour(class_id: int) -> str:
    r, g, b = (int(v) for v in PALETTE[class_id])
    return f"#{r:02x}{g:02x}{b:02x}"


def brush_colours() -> list[str]:
    """The 19 class colours as CSS colours, in the released class order (the editor's brush palette)."""
    return [hex_colour(k) for k in range(NUM_CLASSES)]


def legend_html(columns: int = 4) -> str:
    """A table naming every brush colour: swatch, class id, readable name and the released name."""
    cells = []
    for k, name in enumerate(CLASS_NAMES):
        swatch = (f'<span style="display:inline-block;width:1.1em;height:1.1em;background:{hex_colour(k)};'
                  'border:1px solid #888;vertical-align:middle;margin-right:0.4em"></span>')
        released = f" <code>{html.escape(name)}</code>" if CLASS_LABELS[name] != name else ""
        cells.append(f'<td style="padding:2px 10px 2px 0;white-space:nowrap" title="class {k}: {html.escape(name)}">'
                     f'{swatch}{k} {html.escape(CLASS_LABELS[name])}{released}</td>')
    rows = ["<tr>" + "".join(cells[i:i + columns]) + "</tr>" for i in range(0, len(cells), columns)]
    return '<table class="mask-legend" style="font-size:0.85em;border-collapse:collapse">' + "".join(rows) + "</table>"


def brush_names_script() -> str:
    """A page script that names the editor's colour swatches (tooltip and aria-label "13 hair"), since the
    editor itself shows bare colours. Swatches are matched by their CSS background colour."""
    names = {f"rgb({r}, {g}, {b})": f"{k} {CLASS_LABELS[CLASS_NAMES[k]]}" for k, (r, g, b) in enumerate(PALETTE.tolist())}
    return (
        "<script>(() => {\n"
        f"  const names = {json.dumps(names)};\n"
        "  const label = () => document.querySelectorAll('button.color').forEach((b) => {\n"
        "    const name = names[b.style.backgroundColor];\n"
        "    if (name && b.title !== name) { b.title = name; b.setAttribute('aria-label', name); }\n"
        "  });\n"
        "  new MutationObserver(label).observe(document.documentElement, {subtree: true, childList: true});\n"
        "})();</script>"
    )


# ------------------------------------------------------------------------------------------------
# Start masks


def blank_face(size: int = EDITOR_SIZE) -> np.ndarray:
    """A plain frontal face (hair, skin, ears, brows, eyes, nose, lips, neck, cloth) as class ids [size, size]."""
    ids = {name: k for k, name in enumerate(CLASS_NAMES)}
    canvas = Image.new("L", (256, 256), ids["background"])
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((16, 196, 240, 330), fill=ids["cloth"])
    draw.rectangle((100, 150, 156, 214), fill=ids["neck"])
    draw.ellipse((58, 22, 198, 150), fill=ids["hair"])
    draw.ellipse((56, 100, 80, 146), fill=ids["l_ear"])
    draw.ellipse((176, 100, 200, 146), fill=ids["r_ear"])
    draw.ellipse((72, 48, 184, 200), fill=ids["skin"])
    draw.rectangle((72, 48, 184, 78), fill=ids["hair"])
    draw.rectangle((94, 96, 120, 102), fill=ids["l_brow"])
    draw.rectangle((136, 96, 162, 102), fill=ids["r_brow"])
    draw.ellipse((96, 110, 118, 122), fill=ids["l_eye"])
    draw.ellipse((138, 110, 160, 122), fill=ids["r_eye"])
    draw.polygon([(128, 118), (118, 150), (138, 150)], fill=ids["nose"])
    draw.ellipse((108, 160, 148, 170), fill=ids["u_lip"])
    draw.ellipse((110, 166, 146, 180), fill=ids["l_lip"])
    mask = np.asarray(canvas, dtype=np.uint8)
    return mask if size == 256 else resize_index(mask, size)


def resize_index(index: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of class ids (no new ids at the borders)."""
    return np.asarray(Image.fromarray(np.asarray(index, dtype=np.uint8)).resize((size, size), Image.Resampling.NEAREST))


def index_to_editor(index: np.ndarray, size: int = EDITOR_SIZE) -> np.ndarray:
    """Class ids -> the editor's picture: uint8 RGB [size, size, 3] in the palette colours."""
    return colorize(resize_index(index, size))


def read_mask_file(path: str | os.PathLike, where: Optional[str] = None) -> np.ndarray:
    """An uploaded mask PNG (palette, greyscale ids or palette colours) -> class ids, checked as ``--mask`` is."""
    where = where or os.fspath(path)
    try:
        index = load_mask_png(path)
    except DataError as err:  # name the file as the user knows it, not by the server's temporary path
        raise DataError(str(err).replace(os.fspath(path), where)) from None
    check_condition_shape(index, where)
    return index


class FaceWorldSource(NamedTuple):
    """The FaceWorld a model was trained on: samples are pure functions of (seed, index); the last tenth is
    the test split."""

    seed: int = 0
    num: int = 10_000

    @property
    def test_indices(self) -> range:
        return range(self.num - max(1, self.num // 10), self.num)


def faceworld_source(recipe: str | os.PathLike) -> FaceWorldSource:
    """The (seed, num) of the FaceWorld in a ``recipe.json`` (``make train-faceworld``), else the recipe's defaults."""
    path = Path(recipe)
    if not path.is_file():
        return FaceWorldSource()
    try:
        data = json.loads(path.read_text())["stages"]["data"]
        return FaceWorldSource(int(data.get("seed", 0)), int(data["num"]))
    except (OSError, ValueError, KeyError, TypeError):
        return FaceWorldSource()


def faceworld_choices(source: FaceWorldSource, count: int = 40) -> list[tuple[str, int]]:
    """``count`` test-split samples as (label, index) menu entries; the label shows the sample's caption."""
    picked = list(source.test_indices)[:count]
    return [(f"{i}: {faceworld.make_caption(faceworld.sample_factors(source.seed, i))}", i) for i in picked]


def faceworld_test_mask(source: FaceWorldSource, index: int) -> tuple[np.ndarray, str]:
    """The class ids (64x64) and the caption of FaceWorld test sample ``index``."""
    if int(index) not in source.test_indices:
        lo, hi = source.test_indices.start, source.test_indices.stop - 1
        raise DataError(f"FaceWorld sample {index} is not in the test split; choose {lo} to {hi}")
    rendered = faceworld.render_sample(source.seed, int(index), 64)
    return rendered.mask, faceworld.make_caption(faceworld.sample_factors(source.seed, int(index)))


# ------------------------------------------------------------------------------------------------
# Editor picture + strokes -> class ids


def nearest_class(rgb: np.ndarray) -> np.ndarray:
    """Class id of the nearest palette colour of every pixel of ``rgb`` [..., 3] (Euclidean in RGB)."""
    diff = rgb[..., None, :3].astype(np.int32) - PALETTE.astype(np.int32)  # [..., 19, 3]
    return (diff * diff).sum(-1).argmin(-1).astype(np.uint8)


def _as_rgba(picture: np.ndarray, where: str) -> np.ndarray:
    array = np.asarray(picture)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.dtype != np.uint8:
        raise DataError(f"{where}: expected an 8-bit RGB or RGBA picture, got {array.dtype} {list(array.shape)}")
    if array.shape[2] == 3:
        array = np.concatenate([array, np.full(array.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return array


def background_to_index(background: np.ndarray, where: str = "mask editor") -> np.ndarray:
    """The editor's background picture -> class ids. Transparent pixels are background (class 0)."""
    rgba = _as_rgba(background, where)
    rgb = np.where(rgba[..., 3:] >= STROKE_ALPHA, rgba[..., :3], 0).astype(np.uint8)
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    palette_codes = (PALETTE[:, 0].astype(np.int32) << 16) | (PALETTE[:, 1].astype(np.int32) << 8) | PALETTE[:, 2]
    off = ~np.isin(codes, palette_codes)
    if off.mean() > MAX_OFF_PALETTE:
        rgb_to_index(rgb, where)  # raises, naming the colours that match no class
    return nearest_class(rgb)


def editor_to_index(background: Optional[np.ndarray], layers: Sequence[Optional[np.ndarray]] = (),
                    where: str = "mask editor") -> np.ndarray:
    """The editor's value (background picture, stroke layers) -> class ids [H, W] at the background's size."""
    if background is None:
        raise DataError(f"{where} is empty; start from a blank face, a FaceWorld mask, a mask PNG or a photo")
    index = background_to_index(background, where)
    h, w = index.shape
    for layer in layers:
        if layer is None:
            continue
        rgba = _as_rgba(layer, f"{where} layer")
        if rgba.shape[:2] != (h, w):
            rgba = np.asarray(Image.fromarray(rgba, "RGBA").resize((w, h), Image.Resampling.NEAREST))
        painted = rgba[..., 3] >= STROKE_ALPHA
        if painted.any():
            index[painted] = nearest_class(rgba[painted][:, :3])
    check_condition_shape(index, where)
    return index


def mask_summary(index: np.ndarray, top: int = 6) -> str:
    """E.g. ``skin 31%, hair 18%, background 17%, ...``: the largest classes of a mask."""
    counts = np.bincount(np.asarray(index).reshape(-1), minlength=NUM_CLASSES)
    order = np.argsort(-counts, kind="stable")[:top]
    parts = [f"{CLASS_LABELS[CLASS_NAMES[k]]} {100 * counts[k] / counts.sum():.0f}%" for k in order if counts[k]]
    rest = int((counts > 0).sum()) - len(parts)
    return ", ".join(parts) + (f" and {rest} more classes" if rest > 0 else "")
