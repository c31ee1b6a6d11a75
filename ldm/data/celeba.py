"""Face datasets: the reference system's preprocessed layout and the raw CelebAMask-HQ downloads.

Both datasets return the same sample dict, so a config switches data sources by path alone::

    {"image": FloatTensor[3, R, R] in [-1, 1], "text": str (lower-cased), "seg_mask": FloatTensor[19, 1024],
     "name": str}                                       # only the modalities listed in ``keys`` are loaded

``seg_mask`` is the index mask resized to 32x32 with PIL nearest-neighbour, one-hot, flattened row-major
(:func:`ldm.data.masks.index_mask_to_onehot`). ``name`` is the file stem (``"27000"``).

**Preprocessed layout** (:class:`PreprocessedFaces`; written by ``scripts/prepare_celeba.py`` and
``scripts/make_faceworld.py``; the first three entries are the released layout)::

    ROOT/image/image_{R}_downsampled_from_hq_1024/{N}.jpg         R x R RGB (R = 256, 512; FaceWorld: its size)
    ROOT/text/captions_hq_beard_and_age_2022-08-19.json           {"N.jpg": {"Beard_and_Age": str}}, in split order
    ROOT/mask/CelebAMask-HQ-mask-color-palette_32_nearest_downsampled_from_hq_512_one_hot_2d_tensor/{N}.pt
                                                                  [19, 1024] one-hot (torch.save)
    ROOT/mask/index_mask_{M}/{N}.png                              ours: M x M palette PNG of class ids
    ROOT/meta.json                                                ours: {"test_size": K, "index_mask_size": M, ...}

The caption file's keys define the samples and their order; the last ``test_size`` keys are the test split
(3,000 in the release, whose caption file has 29,999 keys: CelebA-Dialog has no caption for 5380.jpg, so
that image is left out, as in the release). ``test_size`` defaults to ``meta.json``'s value, else 3,000.

**Raw layout** (:class:`RawCelebAMaskHQ`)::

    ROOT/CelebA-HQ-img/{N}.jpg                                    1024 x 1024 RGB, N = 0..29999
    ROOT/CelebAMask-HQ-mask-anno/{N // 2000}/{N:05d}_{part}.png   512 x 512 binary, one per present part
    ROOT/captions_hq.json                                         CelebA-Dialog (or pass dialog_json)

The index mask paints the parts in ascending class id (``PART_PAINT_ORDER``), a later part winning where
two overlap; this is also the order of the CelebAMask-HQ authors' own mask-merging script.

Horizontal ``flip`` (probability 1/2, drawn from torch's global generator, which the DataLoader seeds per
worker) mirrors the image and the mask together and swaps the left/right classes (eyes, brows, ears).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ldm.data import masks
from ldm.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# ---- the preprocessed layout (paths relative to the root) ---------------------------------------------
IMAGE_DIR = "image/image_{size}_downsampled_from_hq_1024"
CAPTION_FILE = "text/captions_hq_beard_and_age_2022-08-19.json"
ONEHOT_MASK_DIR = "mask/CelebAMask-HQ-mask-color-palette_32_nearest_downsampled_from_hq_512_one_hot_2d_tensor"
INDEX_MASK_DIR = "mask/index_mask_{size}"
META_FILE = "meta.json"
CAPTION_KEY = "Beard_and_Age"
RELEASED_TEST_SIZE = 3000

# ---- the raw downloads ---------------------------------------------------------------------------------
RAW_IMAGE_DIR = "CelebA-HQ-img"
RAW_MASK_DIR = "CelebAMask-HQ-mask-anno"
RAW_DIALOG_FILE = "captions_hq.json"
RAW_MASK_SIZE = 512
PARTS_PER_FOLDER = 2000
# Parts painted in ascending class id: a later part wins where two overlap.
PART_PAINT_ORDER = tuple(sorted(masks.PART_TO_CLASS, key=masks.PART_TO_CLASS.__getitem__))
# CelebA-Dialog attribute captions kept for the text condition (supplementary B.1 drops Bangs, Eyeglasses, Smiling).
BEARD_KEY, AGE_KEY = "No_Beard", "Young"

KEYS = ("image", "text", "seg_mask")
# Extra keys of the preprocessed layout, for training and measuring the evaluator networks (FaceWorld):
# "index_mask" LongTensor[M, M] (class ids, from mask/index_mask_{M}/) and "labels" (the labels.json entry).
EVALUATOR_KEYS = ("index_mask", "labels")
LABELS_FILE = "labels.json"
SPLITS = ("train", "test", "all")
SEE_README = "see data/README.md"

# Class permutation of a horizontal flip: l_eye <-> r_eye, l_brow <-> r_brow, l_ear <-> r_ear (not the lips).
def _mirror_name(name: str) -> str:
    side = {"l_": "r_", "r_": "l_"}.get(name[:2])
    return side + name[2:] if side and side + name[2:] in masks.CLASS_NAMES else name


_FLIP_CLASSES = [masks.CLASS_NAMES.index(_mirror_name(n)) for n in masks.CLASS_NAMES]


# --------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------


def _load_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found; {SEE_README} for the expected layout") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the {what} ({err}); re-download or re-create it") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: the {what} must be a JSON object keyed by image file name ('0.jpg'); got {type(data).__name__}")
    return data


def read_meta(root: str | os.PathLike) -> dict:
    """``ROOT/meta.json`` (written by prepare_celeba and make_faceworld), or {} for the released layout."""
    path = Path(root) / META_FILE
    return _load_json(path, "meta file") if path.is_file() else {}


def split_names(names: list[str], split: str, test_size: int, where: str) -> list[str]:
    """The released split: the last ``test_size`` names are the test set, the rest the training set."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "all":
        return list(names)
    if not 0 <= test_size < len(names) or (split == "test" and test_size == 0):
        raise DataError(
            f"{where} lists {len(names)} samples, too few for a test split of {test_size}; "
            "pass a smaller test_size (a tiny tree needs a tiny test split)"
        )
    return names[len(names) - test_size :] if split == "test" else names[: len(names) - test_size]


def beard_and_age_caption(entry: dict, where: str = "caption entry") -> str:
    """The beard and age sentences of a CelebA-Dialog ``captions_hq.json`` entry, joined by a space.

    ``entry["attribute_wise_captions"]`` holds one caption per attribute; the ``No_Beard`` and ``Young``
    captions describe beard and age. Bangs, Eyeglasses and Smiling are dropped (supplementary B.1).
    """
    attrs = entry.get("attribute_wise_captions") if isinstance(entry, dict) else None
    if not isinstance(attrs, dict) or not all(isinstance(attrs.get(k), str) for k in (BEARD_KEY, AGE_KEY)):
        raise DataError(
            f"{where}: expected a CelebA-Dialog entry with attribute_wise_captions['{BEARD_KEY}'] and "
            f"['{AGE_KEY}'] strings; is this captions_hq.json from CelebA-Dialog?"
        )
    return " ".join(s.strip() for s in (attrs[BEARD_KEY], attrs[AGE_KEY]) if s.strip())


MODE_NAMES = {"L": "greyscale", "LA": "greyscale with alpha", "RGBA": "RGB with alpha", "P": "palette",
              "I;16": "16-bit", "I;16B": "16-bit", "I": "integer, 16-bit or 32-bit", "F": "32-bit float", "CMYK": "CMYK",
              "1": "1-bit"}


def read_image(path: Path, resolution: Optional[int] = None) -> Image.Image:
    """Open an RGB image; with ``resolution``, check it is ``resolution`` pixels square."""
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                raise DataError(
                    f"{path}: image mode {im.mode} ({MODE_NAMES.get(im.mode, 'not 8-bit RGB')}); faces must be "
                    "8-bit RGB: convert it (e.g. PIL Image.convert('RGB'), dropping alpha) and save it again"
                )
            image = im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image not found; {SEE_README}") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable image ({err}); re-download or re-create it") from None
    if resolution is not None and image.size != (resolution, resolution):
        w, h = image.size
        raise DataError(
            f"{path}: image is {w}x{h}, expected {resolution}x{resolution}; the folder for resolution "
            f"{resolution} must hold images of that size (re-run the preparation for this size)"
        )
    return image


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> FloatTensor [3, H, W] in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def read_onehot(path: Path) -> torch.Tensor:
    """A released ``{N}.pt`` mask: a one-hot [19, 1024] tensor, checked, as float."""
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: mask not found; {SEE_README}") from None
    except Exception as err:  # torch raises many types for a corrupt file
        raise DataError(f"{path}: unreadable mask tensor ({type(err).__name__}); re-create it with prepare_celeba") from None
    expected = (masks.NUM_CLASSES, masks.MASK_SIZE**2)
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected:
        got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise DataError(f"{path}: mask has shape {got}, expected {list(expected)} (one-hot of the 32x32 index mask)")
    t = t.float()
    if not (((t == 0) | (t == 1)).all() and (t.sum(0) == 1).all()):
        raise DataError(f"{path}: mask is not one-hot (each of the 1024 pixels needs exactly one class set to 1)")
    return t


def flip_sample(sample: dict) -> dict:
    """Mirror a sample horizontally; the left/right classes of the mask swap."""
    if "image" in sample:
        sample["image"] = sample["image"].flip(-1)
    if "seg_mask" in sample:
        m = sample["seg_mask"].view(masks.NUM_CLASSES, masks.MASK_SIZE, masks.MASK_SIZE).flip(-1)
        sample["seg_mask"] = m[_FLIP_CLASSES].reshape(masks.NUM_CLASSES, -1).contiguous()
    if "index_mask" in sample:
        sample["index_mask"] = torch.tensor(_FLIP_CLASSES)[sample["index_mask"].flip(-1)]
    return sample


def _missing(names: list[str], folder: Path, suffix: str) -> list[Path]:
    present = set(os.listdir(folder))
    return [folder / f"{n}{suffix}" for n in names if f"{n}{suffix}" not in present]


def _raise_missing(missing: list[Path], what: str, total: int, fix: str) -> None:
    if missing:
        more = f" (and {len(missing) - 1} more of {total})" if len(missing) > 1 else ""
        raise DataError(f"{missing[0]}: {what} not found{more}; {fix}")


class _FaceDataset(Dataset):
    """Shared plumbing: the split's names, the selected modalities and the flip."""

    def __init__(self, keys: Optional[list[str]], flip: bool, allowed: tuple[str, ...] = KEYS):
        keys = list(KEYS) if keys is None else list(keys)
        unknown = [k for k in keys if k not in allowed]
        if unknown or not keys:
            raise ConfigError(f"keys must be a non-empty subset of {list(allowed)}, got {keys}")
        self.keys = keys
        self.flip = flip
        self.names: list[str] = []
        self._loaders: dict[str, Callable[[str], object]] = {}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        sample = {key: self._loaders[key](name) for key in self.keys}
        sample["name"] = name
        if self.flip and torch.rand(()) < 0.5:
            flip_sample(sample)
        return sample


# --------------------------------------------------------------------------------------------------------
# The preprocessed layout (released data, prepare_celeba output, FaceWorld)
# --------------------------------------------------------------------------------------------------------


class PreprocessedFaces(_FaceDataset):
    """The reference system's preprocessed layout (module docstring), e.g. ``data/celeba`` or a FaceWorld.

    Args:
        root: the data folder.
        split: "train", "test" (the last ``test_size`` caption keys) or "all".
        resolution: image size; selects ``image/image_{resolution}_downsampled_from_hq_1024``.
        keys: modalities to load, a subset of ["image", "text", "seg_mask"] (default: all three), plus, for the
            evaluator networks, "index_mask" (LongTensor [M, M] read from ``index_mask_dir``) and "labels" (the
            sample's ``ROOT/labels.json`` entry, e.g. a FaceWorld's ``{"age": 2, "beard": 0, ...}``).
        flip: random horizontal flip of image and mask (training only).
        test_size: size of the test split; default ``meta.json``'s ``test_size``, else 3,000 (the release).
        mask_format: "onehot" reads the released ``.pt`` tensors; "png" reads the index-mask PNGs
            (``index_mask_dir``) and converts them the same way.
        image_dir, caption_file, mask_dir, index_mask_dir: override the folder names (relative to root).
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        resolution: int = 256,
        keys: Optional[list[str]] = None,
        flip: bool = False,
        test_size: Optional[int] = None,
        mask_format: str = "onehot",
        image_dir: Optional[str] = None,
        caption_file: Optional[str] = None,
        mask_dir: Optional[str] = None,
        index_mask_dir: Optional[str] = None,
    ):
        super().__init__(keys, flip, allowed=KEYS + EVALUATOR_KEYS)
        if mask_format not in ("onehot", "png"):
            raise ConfigError(f"mask_format must be 'onehot' or 'png', got {mask_format!r}")
        self.root = Path(root)
        self.resolution = resolution
        if not self.root.is_dir():
            raise DataError(
                f"{self.root}: no such data folder; expected the preprocessed layout ({IMAGE_DIR.format(size=resolution)}/, "
                f"{CAPTION_FILE}, {ONEHOT_MASK_DIR.split('/')[0]}/...one_hot_2d_tensor/); {SEE_README} "
                "(or make a FaceWorld with scripts/make_faceworld.py)"
            )
        meta = read_meta(self.root)
        self.image_dir = self.root / (image_dir or IMAGE_DIR.format(size=resolution))
        self.caption_file = self.root / (caption_file or CAPTION_FILE)
        self.index_mask_dir = self.root / (index_mask_dir or INDEX_MASK_DIR.format(size=meta.get("index_mask_size", RAW_MASK_SIZE)))
        if mask_format == "onehot":
            self.mask_dir, self._mask_suffix = self.root / (mask_dir or ONEHOT_MASK_DIR), ".pt"
        else:
            self.mask_dir, self._mask_suffix = self.index_mask_dir, ".png"

        captions = _load_json(self.caption_file, "caption file")
        for key, entry in captions.items():
            if not (isinstance(entry, dict) and isinstance(entry.get(CAPTION_KEY), str)):
                raise DataError(f"{self.caption_file}: entry {key!r} has no '{CAPTION_KEY}' string; re-create the caption file")
        self.captions = {Path(k).stem: v[CAPTION_KEY].lower() for k, v in captions.items()}
        self.image_files = {Path(k).stem: k for k in captions}
        test_size = int(meta.get("test_size", RELEASED_TEST_SIZE)) if test_size is None else test_size
        self.names = split_names(list(self.captions), split, test_size, str(self.caption_file))

        if "image" in self.keys:
            self._check_folder(self.image_dir, "image folder", f"prepare images of size {resolution}")
            present = set(os.listdir(self.image_dir))
            missing = [self.image_dir / self.image_files[n] for n in self.names if self.image_files[n] not in present]
            _raise_missing(missing, "image listed in the caption file", len(self.names), "the image folder is incomplete (re-run the preparation)")
            extra = len(present) - len(set(self.image_files.values()) & present)
            if extra:
                logger.info("%s: %d images have no caption and are not used (CelebA-Dialog lacks 5380.jpg)", self.image_dir, extra)
        if "seg_mask" in self.keys:
            self._check_folder(self.mask_dir, "mask folder", "prepare the masks")
            missing = _missing(self.names, self.mask_dir, self._mask_suffix)
            _raise_missing(missing, "mask of a captioned image", len(self.names), "the mask folder is incomplete (re-run the preparation)")
        if "index_mask" in self.keys:
            self._check_folder(self.index_mask_dir, "index-mask folder", "prepare the masks (make_faceworld writes them)")
            missing = _missing(self.names, self.index_mask_dir, ".png")
            _raise_missing(missing, "index mask of a captioned image", len(self.names), "the index-mask folder is incomplete (re-run the preparation)")
        self.labels: dict[str, dict] = {}
        if "labels" in self.keys:
            self.labels = _load_json(self.root / LABELS_FILE, "labels file (FaceWorld's labels.json)")
            absent = [n for n in self.names if n not in self.labels]
            if absent:
                raise DataError(f"{self.root / LABELS_FILE}: no labels for {len(absent)} samples (e.g. {absent[0]!r}); re-create the FaceWorld")
        self._loaders = {
            "image": self._image, "text": self.captions.__getitem__, "seg_mask": self._seg_mask,
            "index_mask": self._index_mask, "labels": self.labels.__getitem__,
        }

    def _index_mask(self, name: str) -> torch.Tensor:
        return torch.from_numpy(masks.load_mask_png(self.index_mask_dir / f"{name}.png").astype(np.int64))  # [M, M]

    def _check_folder(self, folder: Path, what: str, fix: str) -> None:
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} not found; {fix}, or pass the folder explicitly; {SEE_README}")

    def _image(self, name: str) -> torch.Tensor:
        return image_to_tensor(read_image(self.image_dir / self.image_files[name], self.resolution))

    def _seg_mask(self, name: str) -> torch.Tensor:
        path = self.mask_dir / f"{name}{self._mask_suffix}"
        if self._mask_suffix == ".pt":
            return read_onehot(path)
        return masks.index_mask_to_onehot(masks.load_mask_png(path))


# --------------------------------------------------------------------------------------------------------
# The raw downloads: CelebA-HQ images, CelebAMask-HQ part masks, CelebA-Dialog captions
# --------------------------------------------------------------------------------------------------------

_PART_FILE = re.compile(r"^(\d+)_([a-z_]+)\.png$")


class RawCelebAMaskHQ(_FaceDataset):
    """The raw public downloads (module docstring), converted on the fly.

    Args:
        root: folder holding ``CelebA-HQ-img/`` and ``CelebAMask-HQ-mask-anno/``.
        dialog_json: CelebA-Dialog ``captions_hq.json`` (default ``root/captions_hq.json``); its key order
            defines the split.
        split, keys, flip, test_size: as for :class:`PreprocessedFaces` (test_size default 3,000).
        resolution: output image size (the 1024 px images are resized with Lanczos filtering).
        mask_resolution: the size every part PNG must have (512 in CelebAMask-HQ).
    """

    def __init__(
        self,
        root: str,
        dialog_json: Optional[str] = None,
        split: str = "train",
        resolution: int = 256,
        keys: Optional[list[str]] = None,
        flip: bool = False,
        test_size: int = RELEASED_TEST_SIZE,
        mask_resolution: int = RAW_MASK_SIZE,
    ):
        super().__init__(keys, flip)
        self.root = Path(root)
        self.resolution = resolution
        self.mask_resolution = mask_resolution
        self.image_dir = self.root / RAW_IMAGE_DIR
        self.mask_root = self.root / RAW_MASK_DIR
        self.dialog_json = Path(dialog_json) if dialog_json else self.root / RAW_DIALOG_FILE
        layout = (
            f"expected {RAW_IMAGE_DIR}/{{N}}.jpg and {RAW_MASK_DIR}/{{N//2000}}/{{N:05d}}_{{part}}.png "
            f"(CelebAMask-HQ) and {RAW_DIALOG_FILE} (CelebA-Dialog); {SEE_README}"
        )
        for folder in (self.root, self.image_dir, self.mask_root):
            if not folder.is_dir():
                raise DataError(f"{folder}: no such folder; {layout}")

        dialog = _load_json(self.dialog_json, "CelebA-Dialog caption file")
        # As written to the caption file (mixed case, like the release); samples get them lower-cased.
        self.captions = {Path(k).stem: beard_and_age_caption(v, f"{self.dialog_json} entry {k!r}") for k, v in dialog.items()}
        self.image_files = {Path(k).stem: k for k in dialog}
        self.all_names = list(self.captions)
        self.names = split_names(self.all_names, split, test_size, str(self.dialog_json))

        if "image" in self.keys:
            present = set(os.listdir(self.image_dir))
            missing = [self.image_dir / self.image_files[n] for n in self.names if self.image_files[n] not in present]
            _raise_missing(missing, "image listed in the caption file", len(self.names), "the CelebA-HQ-img download is incomplete")
        self.parts: dict[str, list[tuple[int, Path]]] = {}
        if "seg_mask" in self.keys:
            self.parts = self._scan_parts()
            for n in self.names:
                if n not in self.parts:
                    where = self.mask_root / str(int(n) // PARTS_PER_FOLDER) if n.isdigit() else self.mask_root
                    raise DataError(f"{self.image_dir / self.image_files[n]}: image has no mask (no {where}/{n.zfill(5)}_<part>.png); {layout}")
        self._loaders = {"image": self._image, "text": self._text, "seg_mask": self._seg_mask}

    def _text(self, name: str) -> str:
        return self.captions[name].lower()

    def _scan_parts(self) -> dict[str, list[tuple[int, Path]]]:
        """{name: [(class id, part PNG), ...] in paint order}, from one listing of each mask folder."""
        parts: dict[str, list[tuple[int, Path]]] = {}
        for folder in sorted(p for p in self.mask_root.iterdir() if p.is_dir()):
            for entry in os.scandir(folder):
                m = _PART_FILE.match(entry.name)
                if m is None:
                    continue
                idx, part = m.groups()
                if part not in masks.PART_TO_CLASS:
                    raise DataError(f"{entry.path}: unknown part {part!r}; CelebAMask-HQ parts are {', '.join(PART_PAINT_ORDER)}")
                parts.setdefault(str(int(idx)), []).append((masks.PART_TO_CLASS[part], Path(entry.path)))
        for found in parts.values():
            found.sort(key=lambda cp: cp[0])
        return parts

    def raw_image(self, name: str) -> Image.Image:
        """The full-size RGB image (checked square)."""
        path = self.image_dir / self.image_files[name]
        image = read_image(path)
        if image.size[0] != image.size[1]:
            raise DataError(f"{path}: image is {image.size[0]}x{image.size[1]}, expected a square CelebA-HQ image")
        return image

    def index_mask(self, name: str) -> np.ndarray:
        """The uint8 index mask [M, M] painted from the part PNGs in ``PART_PAINT_ORDER``."""
        size = self.mask_resolution
        mask = np.zeros((size, size), np.uint8)
        for class_id, path in self.parts[name]:
            try:
                with Image.open(path) as im:
                    part = np.asarray(im.convert("L"))
            except (OSError, ValueError) as err:
                raise DataError(f"{path}: unreadable part mask ({err}); re-download CelebAMask-HQ") from None
            if part.shape != (size, size):
                raise DataError(f"{path}: part mask is {part.shape[1]}x{part.shape[0]}, expected {size}x{size}")
            mask[part > 127] = class_id
        return mask

    def _image(self, name: str) -> torch.Tensor:
        image = self.raw_image(name)
        if image.size != (self.resolution, self.resolution):
            image = image.resize((self.resolution, self.resolution), Image.Resampling.LANCZOS)
        return image_to_tensor(image)

    def _seg_mask(self, name: str) -> torch.Tensor:
        return masks.index_mask_to_onehot(self.index_mask(name))
