"""Face segmentation masks: the 19 CelebAMask-HQ classes, their colours, PNG loading and the one-hot encoding.

An *index mask* is a uint8 array [H, W] of class ids 0-18 in the released order (``CLASS_NAMES``). The
mask condition is that mask resized to 32x32 with PIL nearest-neighbour and one-hot encoded, flattened
row-major to [19, 1024], exactly as the released preprocessing does.

PNG masks are read in three forms (``load_mask_png``):
    "P"    palette PNG whose indices are the class ids (the released test masks; ``save_index_png`` writes these)
    "L"    8-bit greyscale PNG whose values are the class ids
    "RGB"  colour PNG in ``PALETTE`` (every pixel exactly one of the 19 colours)

``PALETTE`` is the colour map of the CelebAMask-HQ visualisations (the CelebAMask-HQ / MaskGAN repository's
19-colour list, used unchanged by face-parsing code built on it); it is also the palette attached to the
released test masks (``test_data/256_masks/29980.png``).
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldm.errors import DataError

PathLike = Union[str, os.PathLike]

CLASS_NAMES = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)  # 19
MASK_SIZE = 32  # the condition is the index mask resized to 32x32 -> 1024 pixels per class

PALETTE = np.array(
    [
        (0, 0, 0),        # background
        (204, 0, 0),      # skin
        (76, 153, 0),     # nose
        (204, 204, 0),    # eye_g
        (51, 51, 255),    # l_eye
        (204, 0, 204),    # r_eye
        (0, 255, 255),    # l_brow
        (255, 204, 204),  # r_brow
        (102, 51, 0),     # l_ear
        (255, 0, 0),      # r_ear
        (102, 204, 0),    # mouth
        (255, 255, 0),    # u_lip
        (0, 0, 153),      # l_lip
        (0, 0, 204),      # hair
        (255, 51, 153),   # hat
        (0, 204, 204),    # ear_r
        (0, 51, 0),       # neck_l
        (255, 153, 51),   # neck
        (0, 204, 0),      # cloth
    ],
    dtype=np.uint8,
)  # fmt: skip
PALETTE.flags.writeable = False

# Raw CelebAMask-HQ annotations: CelebAMask-HQ-mask-anno/{k}/{idx:05d}_{part}.png, one binary PNG per part.
PART_TO_CLASS = {name: class_id for class_id, name in enumerate(CLASS_NAMES) if name != "background"}

_FIX = "save the mask as a palette (P) or greyscale (L) PNG of class ids 0-18, or an RGB PNG in the 19-colour palette"


# ---------------------------------------------------------------------------------------------------------
# Reading and writing PNGs
# ---------------------------------------------------------------------------------------------------------


def _check_ids(mask: np.ndarray, where: str) -> None:
    bad = np.unique(mask[(mask < 0) | (mask >= NUM_CLASSES)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise DataError(f"{where}: class ids [{shown}] are outside 0-{NUM_CLASSES - 1}; {_FIX}")


def _colours_to_ids(rgb: np.ndarray, where: str) -> np.ndarray:
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    palette_codes = (PALETTE[:, 0].astype(np.int32) << 16) | (PALETTE[:, 1].astype(np.int32) << 8) | PALETTE[:, 2]
    order = np.argsort(palette_codes)
    pos = np.searchsorted(palette_codes[order], codes).clip(max=NUM_CLASSES - 1)
    matched = palette_codes[order][pos] == codes
    if not matched.all():
        unknown = np.unique(codes[~matched])
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5])
        more = f" and {unknown.size - 5} more" if unknown.size > 5 else ""
        raise DataError(
            f"{where}: {int((~matched).sum())} pixels have colours matching no class, e.g. {shown}{more}; "
            "colour masks must use the 19 CelebAMask-HQ palette colours exactly (no anti-aliasing, no JPEG), "
            "or save an index PNG"
        )
    return order[pos].astype(np.uint8)


def rgb_to_index(rgb: np.ndarray, where: str = "mask") -> np.ndarray:
    """uint8 RGB [H, W, 3] in ``PALETTE`` exactly -> class ids [H, W]; any other colour raises a DataError."""
    return _colours_to_ids(np.asarray(rgb, dtype=np.uint8)[..., :3], where)


def load_mask_png(path: PathLike) -> np.ndarray:
    """Read a segmentation mask PNG ("P" indices, "L" ids or "RGB" palette colours) as uint8 class ids [H, W]."""
    where = os.fspath(path)
    try:
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        raise DataError(f"{where}: no such mask file; check the path") from None
    except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(f"{where}: cannot read the mask ({err}); {_FIX}") from None

    if image.mode in ("P", "L"):
        mask = np.asarray(image, dtype=np.uint8)
        _check_ids(mask, where)
    elif image.mode == "RGB":
        mask = _colours_to_ids(np.asarray(image), where)
    elif image.mode == "RGBA" and image.getextrema()[3] == (255, 255):  # opaque RGBA, as image editors save
        mask = _colours_to_ids(np.asarray(image.convert("RGB")), where)
    else:
        kind = " (16-bit)" if image.mode.startswith("I;16") or image.mode == "I" else ""
        raise DataError(f"{where}: unsupported PNG mode {image.mode!r}{kind}; {_FIX}")
    return np.ascontiguousarray(mask)


def check_condition_shape(index: np.ndarray, where: str) -> None:
    """A mask given as a condition must be square and at least 32x32 (the size of the face it describes)."""
    if index.shape[0] != index.shape[1] or index.shape[0] < MASK_SIZE:
        raise DataError(
            f"{where}: mask is {index.shape[1]}x{index.shape[0]}; it must be square and at least "
            f"{MASK_SIZE}x{MASK_SIZE} (e.g. 256x256 or 512x512, the size of the face it describes)"
        )


def load_mask_condition(path: PathLike) -> torch.Tensor:
    """A mask PNG given as a condition -> FloatTensor [19, 1024]: read with :func:`load_mask_png`, checked to be
    square and at least 32x32 (the size of the face it describes), then resized and one-hot encoded."""
    index = load_mask_png(path)
    check_condition_shape(index, os.fspath(path))
    return index_mask_to_onehot(index)


def save_index_png(mask: np.ndarray, path: PathLike) -> None:
    """Write an index mask [H, W] as a palette PNG: indices are the class ids, colours are ``PALETTE``."""
    mask = _as_index_mask(mask, "mask to save")
    image = Image.fromarray(mask)  # mode "L"
    image.putpalette(PALETTE.tobytes())  # -> mode "P", indices unchanged
    try:
        image.save(path, format="PNG")
    except OSError as err:
        raise DataError(
            f"{os.fspath(path)}: cannot write the mask ({err}); check the folder exists and is writable"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------------------------------------


def _as_index_mask(mask: np.ndarray, where: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"{where}: expected an integer index mask [H, W], got {mask.dtype} {list(mask.shape)}")
    _check_ids(mask, where)
    return mask.astype(np.uint8)


def index_mask_to_onehot(mask: np.ndarray) -> torch.Tensor:
    """Index mask [H, W] -> FloatTensor [19, 1024]: PIL nearest resize to 32x32, one-hot, flattened row-major."""
    mask = _as_index_mask(mask, "index mask")
    small = Image.fromarray(mask).resize((MASK_SIZE, MASK_SIZE), Image.Resampling.NEAREST)
    ids = torch.from_numpy(np.asarray(small, dtype=np.int64).reshape(-1))  # [1024], row-major
    return F.one_hot(ids, NUM_CLASSES).T.float().contiguous()  # [19, 1024]


def onehot_to_index(onehot: torch.Tensor) -> torch.Tensor:
    """One-hot (or per-class scores) [19, 1024] -> LongTensor [32, 32] of class ids (argmax over classes)."""
    if tuple(onehot.shape) != (NUM_CLASSES, MASK_SIZE * MASK_SIZE):
        raise DataError(f"one-hot mask has shape {list(onehot.shape)}, expected [{NUM_CLASSES}, {MASK_SIZE ** 2}]")
    return onehot.argmax(dim=0).reshape(MASK_SIZE, MASK_SIZE)


def colorize(index_mask: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """Index mask [H, W] -> uint8 RGB image [H, W, 3] in ``PALETTE`` (for figures)."""
    if isinstance(index_mask, torch.Tensor):
        index_mask = index_mask.detach().cpu().numpy()
    return PALETTE[_as_index_mask(index_mask, "index mask")]
