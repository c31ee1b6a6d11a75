"""Raw CelebAMask-HQ + CelebA-Dialog downloads -> the preprocessed layout (see :mod:`ldm.data.celeba`).

For every captioned image ``N`` this writes

* ``image/image_{R}_downsampled_from_hq_1024/N.jpg`` for each requested size R (Lanczos, JPEG quality 95),
* ``mask/index_mask_512/N.png``: the 19-class index mask, parts painted in ``PART_PAINT_ORDER``,
* ``mask/..._one_hot_2d_tensor/N.pt``: its 32x32 nearest one-hot [19, 1024] (float32),

then ``text/captions_hq_beard_and_age_2022-08-19.json`` (beard and age sentences, in the CelebA-Dialog key
order, which keeps the released split: the last 3,000 keys are the test set) and ``meta.json``.

Resumable and safe to interrupt: each file is written to a temporary name and renamed, and a sample whose
files all exist is skipped. The caption and meta files are written last.
"""

from __future__ import annotations

import io
import json
import logging
import os
from multiprocessing import get_context
from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from ldm.data import celeba, masks
from ldm.errors import DataError
from ldm.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)

JPEG_QUALITY = 95


def atomic_write(path: Path, data: bytes) -> None:
    """:func:`ldm.fileio.atomic_write_bytes`, with a write failure reported as a one-line DataError."""
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise DataError(f"{path}: cannot write ({err.strerror or err}); check the output folder") from None


def encode_jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def encode_index_png(mask) -> bytes:
    buf = io.BytesIO()
    masks.save_index_png(mask, buf)
    return buf.getvalue()


def encode_tensor(t: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save(t.contiguous(), buf)
    return buf.getvalue()


def output_paths(out: Path, name: str, sizes: Sequence[int], mask_size: int) -> dict[str, Path]:
    """Every file one sample gets in the preprocessed layout."""
    paths = {f"image_{s}": out / celeba.IMAGE_DIR.format(size=s) / f"{name}.jpg" for s in sizes}
    paths["index_mask"] = out / celeba.INDEX_MASK_DIR.format(size=mask_size) / f"{name}.png"
    paths["onehot"] = out / celeba.ONEHOT_MASK_DIR / f"{name}.pt"
    return paths


_worker: dict = {}


def _init_worker(raw: celeba.RawCelebAMaskHQ, out: Path, sizes: tuple[int, ...], pooled: bool = True) -> None:
    if pooled:  # one thread per pool process; never change the calling process's setting
        torch.set_num_threads(1)
    _worker.update(raw=raw, out=out, sizes=sizes)


def _prepare_one(name: str) -> str:
    raw, out, sizes = _worker["raw"], _worker["out"], _worker["sizes"]
    paths = output_paths(out, name, sizes, raw.mask_resolution)
    todo = {k: p for k, p in paths.items() if not p.is_file()}
    if any(k.startswith("image_") for k in todo):
        image = raw.raw_image(name)
        for s in sizes:
            if f"image_{s}" in todo:
                small = image if image.size == (s, s) else image.resize((s, s), Image.Resampling.LANCZOS)
                atomic_write(todo[f"image_{s}"], encode_jpeg(small))
    if "index_mask" in todo or "onehot" in todo:
        mask = raw.index_mask(name)
        if "index_mask" in todo:
            atomic_write(todo["index_mask"], encode_index_png(mask))
        if "onehot" in todo:
            atomic_write(todo["onehot"], encode_tensor(masks.index_mask_to_onehot(mask)))
    return name


def prepare_celeba(
    raw_root: str | os.PathLike,
    out_root: str | os.PathLike,
    dialog_json: Optional[str] = None,
    sizes: Sequence[int] = (256, 512),
    workers: int = 1,
    test_size: int = celeba.RELEASED_TEST_SIZE,
    mask_resolution: int = celeba.RAW_MASK_SIZE,
    progress: bool = True,
) -> int:
    """Convert the raw downloads under ``raw_root`` into the preprocessed layout under ``out_root``.

    Returns the number of samples that had files written (0 when everything was already there).
    """
    sizes = tuple(dict.fromkeys(int(s) for s in sizes))
    if not sizes or min(sizes) < 1:
        raise DataError(f"--sizes must be positive image sizes, got {list(sizes)}")
    raw = celeba.RawCelebAMaskHQ(
        str(raw_root), dialog_json, split="all", resolution=max(sizes), mask_resolution=mask_resolution
    )
    if not 0 <= test_size < len(raw.all_names):
        raise DataError(f"--test-size {test_size} leaves no training images out of {len(raw.all_names)}")
    out = Path(out_root)
    for p in output_paths(out, "0", sizes, mask_resolution).values():
        p.parent.mkdir(parents=True, exist_ok=True)
    (out / celeba.CAPTION_FILE).parent.mkdir(parents=True, exist_ok=True)

    todo = [n for n in raw.all_names if not all(p.is_file() for p in output_paths(out, n, sizes, mask_resolution).values())]
    logger.info("%s -> %s: %d of %d samples to prepare", raw_root, out, len(todo), len(raw.all_names))
    bar = tqdm(total=len(todo), desc="prepare", unit="img", disable=not progress)
    if workers > 1 and len(todo) > 1:
        with get_context("fork").Pool(workers, _init_worker, (raw, out, sizes)) as pool:
            for _ in pool.imap_unordered(_prepare_one, todo, chunksize=8):
                bar.update()
    else:
        _init_worker(raw, out, sizes, pooled=False)
        for name in todo:
            _prepare_one(name)
            bar.update()
    bar.close()

    captions = {raw.image_files[n]: {celeba.CAPTION_KEY: raw.captions[n]} for n in raw.all_names}
    atomic_write(out / celeba.CAPTION_FILE, json.dumps(captions, indent=1).encode())
    meta = {"kind": "celeba", "test_size": test_size, "index_mask_size": mask_resolution, "sizes": list(sizes)}
    atomic_write(out / celeba.META_FILE, json.dumps(meta, indent=1).encode())
    return len(todo)
