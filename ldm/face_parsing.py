"""A face photo -> a 19-class mask in the released order, the condition format of the mask expert.

Two parsers, one interface (images [B, 3, H, W] in [-1, 1] -> logits [B, 19, H, W] in the released class order):

- **BiSeNet** (:mod:`ldm.evaluation.bisenet`) with face-parsing.PyTorch's CelebAMask-HQ weights
  (``--bisenet-weights 79999_iter.pth``): for real photos; it reads the face at 512x512.
- the **FaceWorld parser** (:mod:`ldm.modules.face_parser`, shipped in ``checkpoints/faceworld/``): for
  FaceWorld-style images; it reads the face at the resolution it was trained at (its config's data section,
  64 for the shipped one).

The photo is centre-cropped to a square (a face photo is about square; a very oblong or tiny image is refused,
naming its size), resized to the parser's input size, parsed, and the logits are resized to the output size
before the per-pixel argmax. ``scripts/parse_face.py`` and the app's "photo -> mask" both call
:func:`parse_face`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ldm.fileio import atomic_write_bytes
from ldm.config import load_config
from ldm.data.celeba import image_to_tensor
from ldm.data.masks import colorize, save_index_png
from ldm.editing import fit_to_resolution
from ldm.errors import DataError
from ldm.images import save_png

DEFAULT_PARSER = Path("checkpoints/faceworld/parser.safetensors")
BISENET_INPUT = 512  # BiSeNet's training resolution
FACEWORLD_PARSER_INPUT = 64  # the FaceWorld parser's, when its config does not say
OUTPUT_SIZE = 512  # the released masks' size (CelebAMask-HQ annotations are 512x512)
MIN_SIDE = 32  # smaller than the mask condition's 32x32 grid: nothing to parse
MAX_ASPECT = 2.0  # longer side / shorter side; beyond it the centre crop would cut most of the picture away
MAX_PIXELS = 40_000_000  # about 6300x6300; a decompression bomb or a panorama, not a face photo
READABLE_MODES = ("RGB", "RGBA", "L", "LA", "P", "CMYK")


@dataclass(frozen=True)
class FaceParsingModel:
    """A parser ready to use: the network, the square size it reads faces at, and its name for messages."""

    network: nn.Module  # images [B, 3, H, W] in [-1, 1] -> logits [B, 19, H, W] (released class order)
    input_size: int
    name: str


def _faceworld_input_size(weights: Path) -> int:
    config = weights.with_suffix(".yaml")
    if not config.is_file():
        return FACEWORLD_PARSER_INPUT
    data = load_config(config).get("data") or {}
    train = data.get("train") or {}
    return int((train.get("params") or {}).get("resolution", FACEWORLD_PARSER_INPUT))


def load_face_parser(
    bisenet_weights: Optional[str | os.PathLike] = None,
    parser: str | os.PathLike = DEFAULT_PARSER,
    device: str | torch.device = "cpu",
) -> FaceParsingModel:
    """BiSeNet when ``bisenet_weights`` is given, else the FaceWorld parser ``parser`` (and its ``.yaml``)."""
    if bisenet_weights is not None:
        from ldm.evaluation.real_metrics import load_bisenet

        return FaceParsingModel(load_bisenet(bisenet_weights).to(device), BISENET_INPUT, "BiSeNet (CelebAMask-HQ)")
    from ldm.evaluation.evaluators import load_evaluator

    weights = Path(parser)
    network = load_evaluator(weights, "parser", device)
    return FaceParsingModel(network, _faceworld_input_size(weights), "FaceWorld parser")


def read_photo(path: str | os.PathLike, where: Optional[str] = None) -> Image.Image:
    """Open a photo of any common mode as 8-bit RGB (transparency flattened on white), or raise a DataError
    whose message names it ``where`` (default: its path)."""
    where = where or os.fspath(path)
    try:
        with Image.open(path) as image:
            if image.size[0] * image.size[1] > MAX_PIXELS:
                raise DataError(f"{where}: image is {image.size[0]}x{image.size[1]}; that is too large for a face photo "
                                f"(at most {MAX_PIXELS // 1_000_000} megapixels): crop or shrink it first")
            image.load()
    except FileNotFoundError:
        raise DataError(f"{where}: no such image file; check the path") from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{where}: cannot read the image ({err}); give a PNG or JPEG photo") from None
    if image.mode not in READABLE_MODES:
        raise DataError(f"{where}: image mode {image.mode} is not an 8-bit photo; save it as 8-bit RGB (PNG or JPEG)")
    return as_rgb(image)


def as_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparent parts (RGBA, LA, P with transparency) become white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def check_photo(image: Image.Image, where: str = "photo") -> None:
    """Raise a DataError unless ``image`` has the size of a face photo (about square, 32 px or more a side)."""
    w, h = image.size
    if min(w, h) < MIN_SIDE:
        raise DataError(f"{where}: image is {w}x{h}; a face photo must be at least {MIN_SIDE}x{MIN_SIDE} pixels")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise DataError(f"{where}: image is {w}x{h}, more than {MAX_ASPECT:g} times as long as it is wide; "
                        "crop it to the face (about square) first")
    if w * h > MAX_PIXELS:
        raise DataError(f"{where}: image is {w}x{h}; at most {MAX_PIXELS // 1_000_000} megapixels: shrink it first")


@torch.no_grad()
def parse_face(photo: Image.Image, model: FaceParsingModel, size: int = OUTPUT_SIZE, where: str = "photo") -> np.ndarray:
    """The index mask (uint8 [size, size], class ids 0-18 in the released order) of the face in ``photo``."""
    check_photo(photo, where)
    square = fit_to_resolution(as_rgb(photo), model.input_size)
    device = next(model.network.parameters()).device
    logits = model.network(image_to_tensor(square).unsqueeze(0).to(device)).float()  # [1, 19, s, s]
    logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def mask_preview(photo: Image.Image, index: np.ndarray) -> np.ndarray:
    """[H, 3W, 3] uint8: the centre-cropped photo, the coloured mask and the two blended half and half."""
    size = index.shape[0]
    face = np.asarray(fit_to_resolution(as_rgb(photo), size), dtype=np.uint8)
    colours = colorize(index)
    blend = ((face.astype(np.uint16) + colours.astype(np.uint16)) // 2).astype(np.uint8)
    return np.concatenate([face, colours, blend], axis=1)


def preview_path(mask_path: str | os.PathLike) -> Path:
    """``MASK.png`` -> ``MASK_preview.png`` beside it."""
    path = Path(mask_path)
    return path.with_name(f"{path.stem}_preview.png")


def write_parsed_mask(index: np.ndarray, photo: Image.Image, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write the palette PNG (indices = class ids, colours = the palette) and its colour preview; atomically."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise DataError(f"{out}: the mask is written as a PNG; give a path ending in .png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{out.parent}: cannot create the folder ({err.strerror or err}); choose another --out") from None
    buffer = io.BytesIO()
    save_index_png(index, buffer)
    atomic_write_bytes(out, buffer.getvalue())
    preview = preview_path(out)
    save_png(mask_preview(photo, index), preview)
    return out, preview
