"""FaceWorld: a procedural multi-modal face world with the paper's structure.

FaceWorld stands in for CelebA-HQ / CelebAMask-HQ / CelebA-Dialog offline. Each sample is an RGB face,
its exact 19-class index mask (released class order, see :mod:`ldm.data.masks`) and a CelebA-Dialog-style
caption, written in the reference system's preprocessed layout (:mod:`ldm.data.celeba`), so that
``PreprocessedFaces(root=DIR, resolution=size)`` reads it unchanged.

The factors are split the way the paper splits the modalities, and all are drawn independently:

* **mask-only** (visible in the mask, never named in the caption): face position, size, width and chin
  shape; hair length (short / medium / long) and bangs; eyeglasses; hat; earrings; necklace; mouth open or
  closed; neck width and neckline (round, V, high collar).
* **caption-only** (named in the caption, invisible in the mask): age in 5 levels (teen, young adult,
  thirties, middle-aged, elderly -> cheek blush, forehead lines and folds, hair greyness, skin tone), beard
  in 4 levels (none, short, medium, long -> beard texture on the skin of the lower face, a long one also over
  the neck; men only) and gender (the pronoun; in the image only the lip colour and the beard).
* **nuisance** (in neither): skin tone, hair, eye, cloth, background and accessory colours, lighting.

Determinism: sample ``i`` of a world with seed ``S`` draws its factors from
``np.random.default_rng(SeedSequence(S, spawn_key=(i, 0)))`` and its render noise from
``spawn_key=(i, 1)``, i.e. the i-th children of one ``SeedSequence(S)``. Any sample can be regenerated
alone, generation can be parallel or resumed, and growing ``num`` never changes existing samples.

Rendering is vectorised numpy on a ``size * supersample`` grid (odd ``supersample``) that is box-filtered
down to ``size``. The index mask is the class of the topmost painted layer at each *image* pixel centre,
which with an odd supersample factor is exactly the centre sub-sample of each block.

Labels schema (``labels.json``: ``{name: {...}}``, name = the sample's file stem, e.g. ``"17"``):

==============  ===========================================================================
gender          0 female, 1 male (caption pronoun)
age             0 teen, 1 young adult, 2 thirties, 3 middle-aged, 4 elderly (caption)
beard           0 none, 1 short, 2 medium, 3 long; always 0 for women (caption)
face_x, face_y  face centre in [-1, 1] image coordinates, y down (mask)
face_scale      overall face size, 0.8-1.15 (mask)
face_width      width / height ratio multiplier, 0.85-1.1 (mask)
face_jaw        chin taper, 0 (oval) to 0.35 (pointed) (mask)
hair_length     0 short, 1 medium (to the jaw), 2 long (over the shoulders) (mask)
bangs           0/1 (mask)
glasses         0/1 (mask, class 3)
hat             0/1 (mask, class 14); hat_style 0 beanie, 1 brimmed (meaningful when hat = 1)
earrings        0/1 (mask, class 15)
necklace        0/1 (mask, class 16)
mouth_open      0/1 (mask, class 10 present iff open)
neck_width      neck half-width relative to the face half-width, 0.45-0.7 (mask)
neckline        0 round, 1 V, 2 high collar (mask)
skin_tone       0 (light) to 4 (dark) (nuisance)
hair_color      0 black, 1 dark brown, 2 light brown, 3 blond, 4 auburn, before greying (nuisance)
eye_color       0 brown, 1 blue, 2 green (nuisance)
eye_size        0.8-1.2 (mask, eye classes 4/5)
cloth_pattern   0 plain, 1 striped (nuisance)
hair_part       0 parting on the image's left, 1 on its right (mask, when no bangs)
accessory_metal 0 silver, 1 gold (glasses frame dark / gold, earrings, necklace) (nuisance)
cloth_hue, background_hue, light_x, light_y  colour and lighting (nuisance floats)
==============  ===========================================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ldm.data import celeba, masks
from ldm.data.prepare import atomic_write, encode_index_png, encode_jpeg, encode_tensor
from ldm.errors import DataError
from ldm.seeding import numpy_rng

logger = logging.getLogger(__name__)

LABELS_FILE = celeba.LABELS_FILE  # one name for the labels file (the dataset reads it)
# Versions of the renderer (stored in meta.json; the factors, captions and masks are the same in all):
# 1 drew the caption cues at pixel scale, 2 draws them at a scale the VAE's 16x16 latent grid keeps.
VERSIONS = (1, 2)
VERSION = 2  # the default: the world the shipped checkpoints/faceworld models were trained on
LATEST_VERSION = 2  # what `make train-faceworld` trains on

AGE_LEVELS = ("teen", "young adult", "thirties", "middle-aged", "elderly")
BEARD_LEVELS = ("none", "short", "medium", "long")
HAIR_LENGTHS = ("short", "medium", "long")
NECKLINES = ("round", "v", "high collar")

# Class ids (released order; checked against ldm.data.masks.CLASS_NAMES at import).
BG, SKIN, NOSE, EYE_G, L_EYE, R_EYE, L_BROW, R_BROW, L_EAR, R_EAR = range(10)
MOUTH, U_LIP, L_LIP, HAIR, HAT, EAR_R, NECK_L, NECK, CLOTH = range(10, 19)
assert masks.CLASS_NAMES[HAIR] == "hair" and masks.CLASS_NAMES[CLOTH] == "cloth"
# "l_" is the subject's left, which appears on the image's right.


# ----------------------------------------------------------------------------------------------------
# Factors and captions
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceFactors:
    """Every factor of one FaceWorld sample (the ``labels.json`` entry; schema in the module docstring)."""

    gender: int
    age: int
    beard: int
    face_x: float
    face_y: float
    face_scale: float
    face_width: float
    face_jaw: float
    hair_length: int
    bangs: int
    glasses: int
    hat: int
    hat_style: int
    earrings: int
    necklace: int
    mouth_open: int
    neck_width: float
    neckline: int
    skin_tone: int
    hair_color: int
    eye_color: int
    eye_size: float
    cloth_pattern: int
    hair_part: int
    accessory_metal: int
    cloth_hue: float
    background_hue: float
    light_x: float
    light_y: float
    caption_wording: int  # which phrasing the caption uses (an index into the templates, modulo their count)


def _sample_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return numpy_rng(seed, index, stream)


def sample_factors(seed: int, index: int) -> FaceFactors:
    """Draw every factor of sample ``index`` independently (``beard`` is 0 for women)."""
    rng = _sample_rng(seed, index, 0)
    r3 = lambda lo, hi: round(float(rng.uniform(lo, hi)), 4)  # noqa: E731
    gender = int(rng.integers(2))
    beard = int(rng.integers(4))
    return FaceFactors(
        gender=gender,
        age=int(rng.integers(len(AGE_LEVELS))),
        beard=beard if gender == 1 else 0,
        face_x=r3(-0.12, 0.12),
        face_y=r3(-0.08, 0.1),
        face_scale=r3(0.8, 1.15),
        face_width=r3(0.85, 1.1),
        face_jaw=r3(0.0, 0.35),
        hair_length=int(rng.integers(3)),
        bangs=int(rng.integers(2)),
        glasses=int(rng.random() < 0.35),
        hat=int(rng.random() < 0.25),
        hat_style=int(rng.integers(2)),
        earrings=int(rng.random() < 0.35),
        necklace=int(rng.random() < 0.3),
        mouth_open=int(rng.integers(2)),
        neck_width=r3(0.45, 0.7),
        neckline=int(rng.integers(3)),
        skin_tone=int(rng.integers(5)),
        hair_color=int(rng.integers(5)),
        eye_color=int(rng.integers(3)),
        eye_size=r3(0.8, 1.2),
        cloth_pattern=int(rng.integers(2)),
        hair_part=int(rng.integers(2)),
        accessory_metal=int(rng.integers(2)),
        cloth_hue=r3(0.0, 1.0),
        background_hue=r3(0.0, 1.0),
        light_x=r3(-0.7, 0.7),
        light_y=r3(-0.6, 0.3),
        caption_wording=int(rng.integers(1 << 16)),
    )


LABEL_FIELDS = tuple(f.name for f in fields(FaceFactors) if f.name != "caption_wording")

_MAN_SUBJECTS = ("This man", "The man", "He", "This gentleman")
_WOMAN_SUBJECTS = ("This woman", "The woman", "She", "This lady")
_BEARD_SENTENCES = (
    ("{S} has no beard.", "{S} doesn't have any beard.", "There is no beard on his chin.", "{S} is clean-shaven."),
    ("{S} has a short beard.", "{S} has stubble.", "There is a little stubble on his chin.", "His beard is very short."),
    ("{S} has beard of medium length.", "{S} has a medium-length beard.", "His beard is of medium length."),
    ("{S} has a long beard.", "{S} has a very long beard.", "His beard is long and bushy."),
)
_AGE_SENTENCES = (
    ("{P} is a teenager.", "{P} is in {p} teens.", "{P} looks like a teenager."),
    ("{P} is a young adult.", "{P} is in {p} twenties.", "{P} looks young, in {p} twenties."),
    ("{P} is in {p} thirties.", "{P} looks thirty-something.", "{P} is around thirty-five."),
    ("{P} is middle-aged.", "{P} is in {p} fifties.", "{P} looks middle-aged."),
    ("{P} is elderly.", "{P} is quite old.", "{P} is in {p} seventies."),
)
# Words that identify each age level in a caption (every age template contains one of its level's words
# and none of another level's); used by tests and evaluators.
AGE_WORDS = (
    ("teen",),
    ("young adult", "twenties"),
    ("thirties", "thirty"),
    ("middle-aged", "fifties"),
    ("elderly", "old", "seventies"),
)
BEARD_WORDS = ("beard", "stubble", "clean-shaven")


def make_caption(f: FaceFactors) -> str:
    """The CelebA-Dialog-style caption: a beard sentence for men, then an age sentence."""
    w = f.caption_wording
    if f.gender == 1:
        beard_opts = _BEARD_SENTENCES[f.beard]
        beard = beard_opts[w % len(beard_opts)].format(S=_MAN_SUBJECTS[(w >> 3) % 4])
        pronoun, possessive = "He", "his"
        first = [beard]
    else:
        pronoun, possessive = _WOMAN_SUBJECTS[(w >> 3) % 4], "her"
        first = []
    age_opts = _AGE_SENTENCES[f.age]
    age = age_opts[(w >> 6) % len(age_opts)].format(P=pronoun, p=possessive)
    return " ".join(first + [age[0].upper() + age[1:]])


# ----------------------------------------------------------------------------------------------------
# Rendering helpers
# ----------------------------------------------------------------------------------------------------

_SKIN_TONES = np.array(
    [[0.96, 0.80, 0.69], [0.89, 0.70, 0.57], [0.78, 0.58, 0.44], [0.60, 0.42, 0.30], [0.42, 0.28, 0.20]],
    np.float32,
)
_HAIR_COLORS = np.array(
    [[0.07, 0.06, 0.05], [0.24, 0.15, 0.09], [0.48, 0.34, 0.20], [0.86, 0.73, 0.46], [0.58, 0.25, 0.10]],
    np.float32,
)
_EYE_COLORS = np.array([[0.35, 0.20, 0.10], [0.25, 0.45, 0.70], [0.30, 0.50, 0.30]], np.float32)
_METALS = np.array([[0.86, 0.86, 0.9], [0.95, 0.8, 0.35]], np.float32)
_GREY = np.array([0.78, 0.78, 0.76], np.float32)
# The caption-only cues are drawn strong enough to be read off a 64x64 image whatever the nuisance factors
# (skin tone, hair colour, a hat hiding the hair): every level differs from its neighbours in at least
# one cue that does not depend on colour alone.
# Per age level: hair greyness, wrinkle strength, number of forehead lines, cheek blush, skin desaturation.
_AGE_LINES = (0, 0, 1, 2, 3)
_AGE_BLUSH = (1.0, 0.0, 0.0, 0.0, 0.0)
# Per beard level: opacity, speckle threshold (a pixel has hair where the fine noise exceeds it), and how far
# up the face it reaches (face v coordinate; the mouth is at about v = 0.5). A long beard also hangs below
# the chin over the neck (colour only: those pixels stay "neck").


@dataclass(frozen=True)
class CueStyle:
    """How strongly one renderer version draws the caption-only cues (per age / beard level)."""

    age_grey: tuple[float, ...]  # hair greyness
    age_wrinkle: tuple[float, ...]  # wrinkle strength
    age_desat: tuple[float, ...]  # skin desaturation
    line_width: float  # wrinkle line half-width in face-v units x face half-height (0.03: about one output pixel)
    ink: float  # wrinkle darkness
    beard_dark: tuple[float, ...]  # opacity
    beard_speckle: tuple[float, ...]  # a pixel has hair where the fine noise exceeds this
    beard_top: tuple[float, ...]  # how far up the face it reaches (face v; the mouth is at about 0.5)
    beard_below_chin: tuple[float, ...]  # extra face-v units below the chin (a long beard over the neck)


CUE_STYLES = {
    1: CueStyle(age_grey=(0.0, 0.0, 0.3, 0.6, 0.92), age_wrinkle=(0.0, 0.0, 0.8, 0.9, 1.0), age_desat=(0.0, 0.0, 0.0, 0.15, 0.35),
                line_width=0.03, ink=0.6, beard_dark=(0.0, 0.7, 0.85, 0.95), beard_speckle=(np.inf, 0.0, -1.0, -9.0),
                beard_top=(1.0, 0.42, 0.12, -0.05), beard_below_chin=(0.0, 0.0, 0.0, 0.45)),
    # two-pixel lines and folds, stronger greying and desaturation, denser and more opaque beards
    2: CueStyle(age_grey=(0.0, 0.0, 0.45, 0.75, 1.0), age_wrinkle=(0.0, 0.0, 0.7, 0.9, 1.0), age_desat=(0.0, 0.0, 0.1, 0.25, 0.45),
                line_width=0.055, ink=0.75, beard_dark=(0.0, 0.85, 0.92, 1.0), beard_speckle=(np.inf, -0.6, -1.5, -9.0),
                beard_top=(1.0, 0.32, 0.08, -0.1), beard_below_chin=(0.0, 0.0, 0.0, 0.55)),
}


def cue_style(version: int) -> CueStyle:
    if version not in CUE_STYLES:
        raise DataError(f"FaceWorld version {version} does not exist; use one of {list(VERSIONS)}")
    return CUE_STYLES[version]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return (v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


@lru_cache(maxsize=4)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x right, y down), each [n, n] float32."""
    c = ((np.arange(n, dtype=np.float32) + 0.5) / n) * 2.0 - 1.0
    return np.broadcast_to(c[None, :], (n, n)), np.broadcast_to(c[:, None], (n, n))


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Bilinearly interpolated value noise, [n, n] float32 in about [-1, 1]."""
    g = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
    t = (np.arange(n, dtype=np.float32) + 0.5) / n * cells
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    f = f * f * (3.0 - 2.0 * f)  # smoothstep
    rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]  # [n, cells+1]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


class _Box(NamedTuple):
    """A window of the canvas, so that small parts are computed on a few pixels only."""

    rows: slice
    cols: slice


class _Canvas:
    """The layers painted so far: per-pixel class of the topmost layer and its colour."""

    def __init__(self, n: int):
        self.n = n
        self.x, self.y = _grid(n)
        self.cls = np.zeros((n, n), np.uint8)
        self.rgb = np.zeros((n, n, 3), np.float32)

    def box(self, cx: float, cy: float, rx: float, ry: float) -> _Box:
        n = self.n
        to_px = lambda v: (v + 1.0) * 0.5 * n  # noqa: E731
        c0, c1 = int(max(0, math.floor(to_px(cx - rx)) - 1)), int(min(n, math.ceil(to_px(cx + rx)) + 1))
        r0, r1 = int(max(0, math.floor(to_px(cy - ry)) - 1)), int(min(n, math.ceil(to_px(cy + ry)) + 1))
        return _Box(slice(r0, max(r0, r1)), slice(c0, max(c0, c1)))

    def coords(self, b: _Box) -> tuple[np.ndarray, np.ndarray]:
        return self.x[b.rows, b.cols], self.y[b.rows, b.cols]

    def paint(self, b: _Box, region: np.ndarray, class_id: int, color: np.ndarray) -> None:
        """Paint ``region`` (bool, the window's shape) with ``class_id``; ``color`` is [3] or the window's [h, w, 3]."""
        cls, rgb = self.cls[b.rows, b.cols], self.rgb[b.rows, b.cols]
        cls[region] = class_id
        rgb[region] = color if color.ndim == 1 else color[region]


def _ellipse(x, y, cx, cy, rx, ry):
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2


def _shade(x, y, cx, cy, rx, ry, light: np.ndarray) -> np.ndarray:
    """Lambert shading of an ellipsoid seen from the front, [..., 1] float32."""
    nx, ny = (x - cx) / rx * 0.85, (y - cy) / ry * 0.85
    nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
    lam = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0.0, 1.0)
    return (0.5 + 0.55 * lam)[..., None]


# ----------------------------------------------------------------------------------------------------
# The renderer
# ----------------------------------------------------------------------------------------------------


class Rendered(NamedTuple):
    image: np.ndarray  # [size, size, 3] uint8
    mask: np.ndarray  # [size, size] uint8 class ids


def default_supersample(size: int) -> int:
    """3x supersampling up to 128 px (cheap there), none above."""
    return 3 if size <= 128 else 1


def render_face(f: FaceFactors, size: int, rng: np.random.Generator, supersample: int = 3, version: int = VERSION) -> Rendered:
    """Paint one face back to front; returns the image and the class of the topmost layer per pixel.
    ``version`` picks how the caption cues are drawn (:data:`CUE_STYLES`)."""
    style = cue_style(version)
    if supersample < 1 or supersample % 2 == 0:
        raise ValueError(f"supersample must be a positive odd number, got {supersample}")
    n = size * supersample
    cv = _Canvas(n)
    X, Y = cv.x, cv.y
    light = np.array([f.light_x, f.light_y, 1.2], np.float32)
    light /= np.linalg.norm(light)

    s = f.face_scale
    fx, fy = f.face_x, f.face_y
    a, b = 0.37 * s * f.face_width, 0.5 * s  # face half-width and half-height
    full = _Box(slice(0, n), slice(0, n))
    U, V = (X - fx) / a, (Y - fy) / b  # face coordinates: the face is roughly the unit disc
    fine = rng.standard_normal((n, n)).astype(np.float32)
    low = _smooth_noise(rng, n, 6)

    grey = style.age_grey[f.age]
    hair_rgb = (1 - grey) * _HAIR_COLORS[f.hair_color] + grey * _GREY
    skin_rgb = _SKIN_TONES[f.skin_tone].copy()
    desat = style.age_desat[f.age]
    skin_rgb = (1 - desat) * skin_rgb + desat * (skin_rgb.mean() * np.array([1.02, 1.0, 0.9], np.float32))

    # -- background: a two-colour gradient with blotches ---------------------------------------------
    c0 = _hsv(f.background_hue, 0.35, 0.75)
    c1 = _hsv((f.background_hue + 0.15) % 1.0, 0.45, 0.45)
    t = np.clip((X * 0.4 + Y * 0.9 + 1.0) / 2.0, 0, 1)[..., None]
    cv.rgb[:] = (c0 * (1 - t) + c1 * t) * (1.0 + 0.12 * _smooth_noise(rng, n, 4)[..., None])

    # -- hair behind the head --------------------------------------------------------------------------
    strands = 0.75 + 0.25 * np.sin(70.0 * np.arctan2(Y - (fy - 1.3 * b), X - fx) + 3.0 * low)[..., None]
    hair_tex = hair_rgb * strands * _shade(X, Y, fx, fy - 0.1 * b, 1.25 * a, 1.2 * b, light)
    cap = _ellipse(U, V, 0.0, -0.12, 1.14, 1.03) <= 1.0
    back = cap & (V < -0.05)
    if f.hair_length >= 1:
        bottom = 0.45 if f.hair_length == 1 else 1.7
        back |= (np.abs(U) < 1.2 - 0.1 * np.clip(V - bottom + 0.3, 0, 1)) & (V < bottom) & (V > -0.5)
    cv.paint(full, back, HAIR, hair_tex)

    # -- neck, cloth, neckline -------------------------------------------------------------------------
    nw = a * f.neck_width
    y_sh = fy + 1.15 * b  # where the shoulders start
    neck_half = nw * (1.0 + 0.5 * np.clip((Y - y_sh) / 0.15, 0.0, 1.0))
    neck = (np.abs(X - fx) < neck_half) & (Y > fy + 0.3 * b)
    neck_shade = 0.55 + 0.4 * np.sqrt(np.clip(1 - ((X - fx) / neck_half) ** 2, 0, 1))
    cv.paint(full, neck, NECK, skin_rgb * 0.92 * neck_shade[..., None])

    cloth_rgb = _hsv(f.cloth_hue, 0.55, 0.7)
    folds = 0.85 + 0.12 * np.sin(9.0 * X + 3.0 * low) + 0.03 * fine
    if f.cloth_pattern == 1:
        folds = folds * np.where(np.sin(45.0 * Y) > 0, 1.0, 0.6)
    cloth = Y >= y_sh + 0.35 * np.clip(np.abs(X - fx) - nw, 0, None) ** 2 / s
    if f.neckline == 0:
        cloth &= _ellipse(X, Y, fx, y_sh, nw * 1.7, 0.2 * s) > 1.0
    elif f.neckline == 1:
        cloth &= ~((np.abs(X - fx) < nw * 1.4 * (1 - (Y - y_sh) / (0.35 * s))) & (Y > y_sh - 0.05))
    else:
        cloth |= (np.abs(X - fx) < nw * 1.18) & (Y > y_sh - 0.14 * s)
    cv.paint(full, cloth, CLOTH, cloth_rgb * folds[..., None])

    # -- ears, side hair, necklace ---------------------------------------------------------------------
    for side, cid in ((-1, R_EAR), (1, L_EAR)):
        ex, ey, erx, ery = fx + side * 0.97 * a, fy - 0.02 * b, 0.2 * a, 0.3 * b
        bx = cv.box(ex, ey, erx, ery)
        x, y = cv.coords(bx)
        ear = _ellipse(x, y, ex, ey, erx, ery) <= 1.0
        cv.paint(bx, ear, cid, skin_rgb * 0.85 * _shade(x, y, ex, ey, erx, ery, light))
    if f.hair_length >= 1:
        bottom = 0.45 if f.hair_length == 1 else 1.75
        inner = 0.82 if f.hair_length == 1 else 0.72
        side = (np.abs(U) > inner) & (np.abs(U) < 1.22) & (V > -0.45) & (V < bottom - 0.15 * (np.abs(U) - inner))
        cv.paint(full, side, HAIR, hair_tex)
    if f.necklace:
        ncx, ncy, nrx, nry = fx, y_sh - 0.06 * s, nw * 1.25, 0.17 * s
        bx = cv.box(ncx, ncy + nry / 2, nrx * 1.1, nry * 0.7)
        x, y = cv.coords(bx)
        r = np.sqrt(_ellipse(x, y, ncx, ncy, nrx, nry))
        chain = (np.abs(r - 1.0) < 0.022 / min(nrx, nry) + 0.04) & (y > ncy)
        beads = 0.75 + 0.25 * np.cos(60.0 * np.arctan2(y - ncy, x - ncx))
        cv.paint(bx, chain, NECK_L, _METALS[f.accessory_metal] * beads[..., None])

    # -- face skin -------------------------------------------------------------------------------------
    taper = 1.0 - f.face_jaw * np.clip(V, 0.0, 1.0) ** 2
    face = (U / taper) ** 2 + V**2 <= 1.0
    skin = skin_rgb * _shade(X, Y, fx, fy, a, b, light) * (1.0 + 0.03 * fine + 0.04 * low)[..., None]
    blush = 0.7 * _AGE_BLUSH[f.age] * np.exp(-((np.abs(U) - 0.52) ** 2 + (V - 0.22) ** 2) / 0.04)
    skin = skin * (1 - blush[..., None]) + blush[..., None] * np.array([0.95, 0.35, 0.45], np.float32)
    cv.paint(full, face, SKIN, skin)

    # -- nose ------------------------------------------------------------------------------------------
    ntop, nlen, nwid = fy - 0.05 * b, 0.38 * b, 0.2 * a
    bx = cv.box(fx, ntop + nlen / 2, nwid * 1.2, nlen / 2 + 0.05)
    x, y = cv.coords(bx)
    tv = (y - ntop) / nlen
    nose = ((np.abs(x - fx) < nwid * (0.25 + 0.75 * tv)) & (tv >= 0) & (tv <= 0.9)) | (
        _ellipse(x, y, fx, ntop + 0.9 * nlen, nwid, 0.1 * nlen * 1.4) <= 1.0
    )
    nose_col = skin[bx.rows, bx.cols] * (0.9 + 0.12 * np.tanh((x - fx) / nwid * light[0] * 3))[..., None]
    nostrils = (_ellipse(np.abs(x - fx), y, 0.45 * nwid, ntop + 0.95 * nlen, 0.2 * nwid, 0.05 * nlen) <= 1.0)[..., None]
    cv.paint(bx, nose, NOSE, np.where(nostrils, nose_col * 0.4, nose_col))

    # -- eyeglasses (frame and lens; the eyes are painted on top, seen through the lens) -------------------
    ey, exo = fy - 0.12 * b, 0.42 * a
    lens_rx, lens_ry = 0.3 * a, 0.2 * b
    lens_regions = []
    if f.glasses:
        frame_col = np.array([0.08, 0.08, 0.1], np.float32) if f.accessory_metal == 0 else _METALS[1] * 0.75
        bx = cv.box(fx, ey, exo + lens_rx + 0.05, lens_ry + 0.05)
        x, y = cv.coords(bx)
        glass = np.zeros(x.shape, bool)
        for side in (-1, 1):
            r = np.sqrt(_ellipse(x, y, fx + side * exo, ey, lens_rx, lens_ry))
            glass |= r <= 1.0 + 0.03 / lens_ry
            lens_regions.append((bx, r < 1.0))
        bridge = (np.abs(x - fx) < exo - lens_rx + 0.01) & (np.abs(y - (ey - 0.3 * lens_ry)) < 0.015 + 0.01 * s)
        glass |= bridge
        cv.paint(bx, glass, EYE_G, frame_col)
        for lbx, inside in lens_regions:  # the lens interior shows the skin behind it
            cv.rgb[lbx.rows, lbx.cols][inside] = skin[lbx.rows, lbx.cols][inside]

    # -- eyes and brows --------------------------------------------------------------------------------
    erx, ery = 0.17 * a * f.eye_size, 0.075 * b * f.eye_size
    for side, eye_id, brow_id in ((-1, R_EYE, R_BROW), (1, L_EYE, L_BROW)):
        ex = fx + side * exo
        bx = cv.box(ex, ey, erx, ery)
        x, y = cv.coords(bx)
        eye = _ellipse(x, y, ex, ey, erx, ery) <= 1.0
        iris = (_ellipse(x, y, ex, ey, ery * 1.1, ery * 1.1) <= 1.0)[..., None]
        pupil = (_ellipse(x, y, ex, ey, ery * 0.45, ery * 0.45) <= 1.0)[..., None]
        lid = (y < ey - 0.55 * ery)[..., None]
        col = np.where(iris, _EYE_COLORS[f.eye_color], np.array([0.93, 0.91, 0.88], np.float32))
        col = np.where(pupil, 0.05, np.where(lid, col * 0.45, col))
        cv.paint(bx, eye, eye_id, col)

        by, bw = ey - 0.2 * b, 0.24 * a
        bx = cv.box(ex, by, bw, 0.06 * b + 0.02)
        x, y = cv.coords(bx)
        arch = by - 0.05 * b * (1 - ((x - ex) / bw) ** 2)
        brow = (np.abs(y - arch) < 0.035 * b * (1 - 0.5 * ((x - ex) / bw + side) ** 2 / 4)) & (np.abs(x - ex) < bw)
        cv.paint(bx, brow, brow_id, hair_rgb * 0.8 + 0.03)
    for lbx, inside in lens_regions:  # lens tint and reflection over everything behind the lens
        sub = cv.rgb[lbx.rows, lbx.cols]
        x, y = cv.coords(lbx)
        glint = np.exp(-(((x - y) - (fx - ey) - 0.03) ** 2) / 0.0015)[..., None]
        sub[inside] = (sub * 0.82 + 0.12 * np.array([0.7, 0.85, 1.0], np.float32) + 0.25 * glint)[inside]

    # -- lips and mouth --------------------------------------------------------------------------------
    mx, my, mw = fx, fy + 0.52 * b, 0.34 * a
    gap = (0.1 * b) if f.mouth_open else 0.0
    lh = 0.11 * b
    bx = cv.box(mx, my, mw, lh + gap + 0.02)
    x, y = cv.coords(bx)
    lips = _ellipse(x, y, mx, my, mw, lh + gap) <= 1.0
    lip_rgb = np.array([0.78, 0.18, 0.25], np.float32) if f.gender == 0 else skin_rgb * np.array([0.85, 0.62, 0.6])
    cv.paint(bx, lips & (y < my), U_LIP, lip_rgb * 0.8)
    cv.paint(bx, lips & (y >= my), L_LIP, lip_rgb * (1.0 + 0.1 * (y > my + 0.5 * lh))[..., None])
    if f.mouth_open:
        inner = _ellipse(x, y, mx, my, mw * 0.8, gap) <= 1.0
        teeth = (y < my - 0.3 * gap)[..., None]
        cv.paint(bx, inner, MOUTH, np.where(teeth, np.float32(0.92), np.array([0.3, 0.05, 0.07], np.float32)))

    # -- caption-only skin effects: wrinkles and beard (colour only; the pixels stay "skin") -------------
    on_skin = cv.cls == SKIN
    # lines and beard contrast with the skin whatever its tone: darker on light skin, lighter on dark skin
    dark_skin = float(skin_rgb.mean()) < 0.3
    wr = style.age_wrinkle[f.age]
    if wr > 0:
        line_w = style.line_width / b
        lines = np.zeros_like(U)
        for k, v0 in enumerate((-0.5, -0.38, -0.26)[: _AGE_LINES[f.age]]):
            lines += (np.abs(V - v0 - 0.025 * np.sin(7.0 * U + k)) < line_w) * (np.abs(U) < 0.55)
        fold_u = 0.24 + 0.2 * np.clip((V - 0.18) / 0.36, 0, 1)
        lines += (np.abs(np.abs(U) - fold_u) < line_w * b / a) * (V > 0.18) * (V < 0.56)
        if f.age >= 3:  # crow's feet and bags under the eyes
            lines += (np.abs(np.abs(U) - 0.75 - 0.5 * (V + 0.12)) < line_w * b / a) * (np.abs(V + 0.12) < 0.07)
            lines += (np.abs(V - 0.02 - 0.08 * ((np.abs(U) - 0.42) / 0.2) ** 2) < line_w) * (np.abs(np.abs(U) - 0.42) < 0.18)
        ink = (style.ink * wr * np.clip(lines, 0, 1))[on_skin][..., None]
        target = np.float32(0.75) if dark_skin else np.float32(0.0)
        cv.rgb[on_skin] = cv.rgb[on_skin] * (1 - ink) + ink * target
    if f.beard:
        beard_rgb = hair_rgb * 0.6
        if dark_skin:  # a dark beard on dark skin would be invisible: draw it grey
            beard_rgb = np.maximum(beard_rgb, np.float32(0.55) * _GREY)
        top = style.beard_top[f.beard] + (0.35 if f.beard < 3 else 0.2) * U**2
        below = style.beard_below_chin[f.beard]
        on_neck = (cv.cls == NECK) & (np.abs(U) < 0.6) & (V < 1.0 + below)
        zone = (V > top) & (on_skin | on_neck)
        speckle = (fine > style.beard_speckle[f.beard]).astype(np.float32)
        if f.beard >= 2:  # strands
            speckle *= 0.75 + 0.25 * np.sin(110.0 * X + 6.0 * low + 20.0 * V * (f.beard - 2))
        fade = np.clip((V - top) / 0.1, 0.0, 1.0)
        alpha = (style.beard_dark[f.beard] * speckle * fade)[zone][..., None]
        cv.rgb[zone] = cv.rgb[zone] * (1 - alpha) + alpha * beard_rgb

    # -- hair over the forehead (with bangs down to the brows) -------------------------------------------
    if f.bangs:
        hairline = -0.4 + 0.04 * np.sin(24.0 * U + 1.7) + 0.08 * np.abs(U) ** 3
    else:
        part = 0.25 if f.hair_part else -0.25
        hairline = -0.62 + 0.3 * U**2 - 0.06 * np.exp(-((U - part) ** 2) / 0.01)
    front = cap & (V < hairline)
    cv.paint(full, front, HAIR, hair_tex)

    # -- earrings and hat ------------------------------------------------------------------------------
    if f.earrings:
        metal = _METALS[f.accessory_metal]
        for side in (-1, 1):
            rx, ry = fx + side * 1.0 * a, fy + 0.3 * b
            rr = 0.045 * s
            bx = cv.box(rx, ry + rr, rr, 2 * rr)
            x, y = cv.coords(bx)
            ring = (_ellipse(x, y, rx, ry, rr, rr) <= 1.0) | (_ellipse(x, y, rx, ry + 1.3 * rr, 0.6 * rr, rr) <= 1.0)
            glow = 0.7 + 0.3 * np.exp(-_ellipse(x, y, rx - 0.3 * rr, ry - 0.3 * rr, rr, rr))
            cv.paint(bx, ring, EAR_R, metal * glow[..., None])
    if f.hat:
        hat_rgb = _hsv((f.cloth_hue + 0.5) % 1.0, 0.6, 0.55)
        crown = _ellipse(U, V, 0.0, -0.5, 1.18, 0.78) <= 1.0
        if f.hat_style == 0:  # knitted beanie
            hat = crown & (V < -0.5)
            tex = 0.8 + 0.2 * np.sin(160.0 * X)
        else:  # brimmed cap
            hat = (crown & (V < -0.55)) | ((np.abs(U) < 1.45) & (np.abs(V + 0.56) < 0.07))
            tex = 0.9 + 0.1 * low
        hat_col = hat_rgb * (tex * _shade(X, Y, fx, fy - 0.6 * b, 1.2 * a, 0.7 * b, light)[..., 0])[..., None]
        cv.paint(full, hat, HAT, hat_col)

    # -- down-sample, sensor noise, quantise ---------------------------------------------------------------
    k = supersample
    rgb = cv.rgb.reshape(size, k, size, k, 3).mean(axis=(1, 3))
    rgb = rgb + rng.normal(0.0, 0.012, rgb.shape).astype(np.float32)
    image = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    mask = np.ascontiguousarray(cv.cls[k // 2 :: k, k // 2 :: k])
    return Rendered(image, mask)


def render_sample(seed: int, index: int, size: int = 64, supersample: Optional[int] = None, version: int = VERSION,
                  **changes) -> Rendered:
    """Regenerate sample ``index`` of the world with ``seed`` (renderer ``version``) on its own.

    ``changes`` replace factors (e.g. ``glasses=1``): the same face with only those factors changed (the
    render noise is drawn the same way whatever the factors), as editing benchmarks need for their targets.
    """
    f = replace(sample_factors(seed, index), **changes)
    ss = default_supersample(size) if supersample is None else supersample
    return render_face(f, size, _sample_rng(seed, index, 1), ss, version)


# ----------------------------------------------------------------------------------------------------
# Writing a world in the preprocessed layout
# ----------------------------------------------------------------------------------------------------


class FaceWorldPaths(NamedTuple):
    image: Path
    index_mask: Path
    onehot: Path


def sample_paths(out: Path, name: str, size: int) -> FaceWorldPaths:
    return FaceWorldPaths(
        out / celeba.IMAGE_DIR.format(size=size) / f"{name}.jpg",
        out / celeba.INDEX_MASK_DIR.format(size=size) / f"{name}.png",
        out / celeba.ONEHOT_MASK_DIR / f"{name}.pt",
    )


def _write_sample(job: tuple[str, int, int, int, int, int]) -> None:
    out, seed, index, size, supersample, version = job
    paths = sample_paths(Path(out), str(index), size)
    r = render_sample(seed, index, size, supersample, version)
    atomic_write(paths.image, encode_jpeg(Image.fromarray(r.image)))
    atomic_write(paths.index_mask, encode_index_png(r.mask))
    # uint8 one-hot (a quarter of float32 on disk); the loader returns float32 either way
    atomic_write(paths.onehot, encode_tensor(masks.index_mask_to_onehot(r.mask).to(torch.uint8)))


def make_faceworld(
    out: str | os.PathLike,
    num: int,
    seed: int = 0,
    size: int = 64,
    test_size: Optional[int] = None,
    supersample: Optional[int] = None,
    workers: int = 1,
    progress: bool = True,
    version: int = VERSION,
) -> Path:
    """Write (or finish) a FaceWorld of ``num`` samples under ``out`` in the preprocessed layout.

    Samples whose three files exist are skipped, every file is written atomically, and the caption,
    label and meta files are (re)written last, so an interrupted run is finished by running it again.
    ``test_size`` (default: a tenth, at least 1) is stored in ``meta.json`` where the loader finds it.
    """
    if num < 1:
        raise DataError(f"--num must be at least 1, got {num}")
    if not 8 <= size <= 1024:
        raise DataError(f"--size must be between 8 and 1024 pixels, got {size}")
    ss = default_supersample(size) if supersample is None else supersample
    if ss < 1 or ss % 2 == 0:
        raise DataError(f"--supersample must be a positive odd number (the mask is the centre sub-sample), got {ss}")
    test_size = max(1, num // 10) if test_size is None else test_size
    if not 0 <= test_size < num:
        raise DataError(f"--test-size must be in [0, num), got {test_size} for num={num}")
    cue_style(version)  # an unknown version fails here, before anything is written
    root = Path(out)
    meta = {"kind": "faceworld", "version": version, "seed": seed, "size": size, "supersample": ss, "index_mask_size": size}
    meta_path = root / celeba.META_FILE
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        clash = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if clash:
            raise DataError(
                f"{root} already holds a different FaceWorld ({', '.join(f'{k}={a} not {b}' for k, (a, b) in clash.items())}); "
                "use the same options to resume, or another --out"
            )
    paths = sample_paths(root, "0", size)
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    (root / celeba.CAPTION_FILE).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(meta_path, json.dumps({**meta, "num": num, "test_size": test_size}, indent=1).encode())

    todo = [i for i in range(num) if not all(p.is_file() for p in sample_paths(root, str(i), size))]
    logger.info("FaceWorld %s: %d of %d samples to render at %dx%d", root, len(todo), num, size, size)
    jobs = [(str(root), seed, i, size, ss, version) for i in todo]
    bar = tqdm(total=len(jobs), desc="faceworld", unit="img", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with get_context("fork").Pool(workers, torch.set_num_threads, (1,)) as pool:
            for _ in pool.imap_unordered(_write_sample, jobs, chunksize=16):
                bar.update()
    else:
        for job in jobs:
            _write_sample(job)
            bar.update()
    bar.close()

    captions, labels = {}, {}
    for i in range(num):
        f = sample_factors(seed, i)
        captions[f"{i}.jpg"] = {"Beard_and_Age": make_caption(f)}
        labels[str(i)] = {k: v for k, v in asdict(f).items() if k in LABEL_FIELDS}
    atomic_write(root / celeba.CAPTION_FILE, json.dumps(captions, indent=1).encode())
    atomic_write(root / LABELS_FILE, json.dumps(labels, indent=1).encode())
    return root



def load_labels(root: str | os.PathLike) -> dict[str, dict]:
    """``labels.json`` of a FaceWorld: ``{name: {factor: value}}`` (schema in the module docstring)."""
    path = Path(root) / LABELS_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist; is {root} a FaceWorld? (make one with scripts/make_faceworld.py)")
    return json.loads(path.read_text())


def tree_digest(root: str | os.PathLike) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``root`` (for determinism checks)."""
    h = hashlib.sha256()
    root = Path(root)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()
