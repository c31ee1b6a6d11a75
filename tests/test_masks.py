"""Mask PNG loading (P / L / RGB), the released one-hot preprocessing, the palette and every error message."""

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data import masks
from ldm.errors import DataError

TEST_DATA = Path(__file__).resolve().parent / "assets"  # copies of ../shared/test_data
REAL_MASKS = [
    TEST_DATA / "256_masks/29980.png",
    TEST_DATA / "512_masks/27007.png",
    TEST_DATA / "test_mask_edit/256_edited_masks/27044_0_remove_smile_and_rings.png",
]


def small_mask():
    rng = np.random.default_rng(0)
    return rng.integers(0, masks.NUM_CLASSES, size=(40, 48), dtype=np.uint8)


def test_class_table():
    assert masks.NUM_CLASSES == 19 == len(masks.CLASS_NAMES) == len(masks.PALETTE)
    assert masks.CLASS_NAMES[:4] == ("background", "skin", "nose", "eye_g")
    assert masks.CLASS_NAMES[13] == "hair" and masks.CLASS_NAMES[18] == "cloth"
    assert masks.PART_TO_CLASS["skin"] == 1 and masks.PART_TO_CLASS["l_brow"] == 6
    assert masks.PART_TO_CLASS["neck_l"] == 16 and len(masks.PART_TO_CLASS) == 18
    assert len({tuple(c) for c in masks.PALETTE}) == 19  # colours are distinct


@pytest.mark.parametrize("path", REAL_MASKS, ids=lambda p: p.name)
def test_real_masks_match_the_released_preprocessing(path):
    mask = masks.load_mask_png(path)
    assert mask.dtype == np.uint8 and mask.shape == Image.open(path).size[::-1]
    # The released mask2image.py: resize the palette image itself, nearest, then one-hot over its pixels.
    by_hand = np.array(Image.open(path).resize((32, 32), Image.NEAREST)).reshape(-1)
    expected = torch.nn.functional.one_hot(torch.from_numpy(by_hand).long(), 19).T.float()
    onehot = masks.index_mask_to_onehot(mask)
    assert onehot.dtype == torch.float32 and onehot.shape == (19, 1024)
    assert torch.equal(onehot, expected)
    assert torch.equal(masks.onehot_to_index(onehot), torch.from_numpy(by_hand).long().reshape(32, 32))
    # The released file's own palette is ours (its first 19 entries).
    assert Image.open(path).getpalette()[:57] == masks.PALETTE.reshape(-1).tolist()


def test_p_l_and_rgb_pngs_give_the_same_ids(tmp_path):
    mask = small_mask()
    masks.save_index_png(mask, tmp_path / "p.png")
    Image.fromarray(mask).save(tmp_path / "l.png")
    Image.fromarray(masks.colorize(mask)).save(tmp_path / "rgb.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    for name in ("p.png", "l.png", "rgb.png"):
        np.testing.assert_array_equal(masks.load_mask_png(tmp_path / name), mask)


def test_onehot_is_row_major():
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:2, 2:4] = 13  # maps to pixel (row 0, col 1) of the 32x32 grid
    onehot = masks.index_mask_to_onehot(mask)
    assert onehot[13].nonzero().flatten().tolist() == [1]
    assert torch.equal(onehot.sum(0), torch.ones(1024))


def test_colorize():
    rgb = masks.colorize(torch.tensor([[0, 1], [13, 18]]))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 1].tolist() == [204, 0, 0] and rgb[1, 0].tolist() == [0, 0, 204]


# --- errors -------------------------------------------------------------------------------------------------


def test_ids_out_of_range(tmp_path):
    mask = small_mask()
    mask[0, :3] = [19, 22, 19]
    Image.fromarray(mask).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad\.png: class ids \[19, 22\] are outside 0-18"):
        masks.load_mask_png(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"class ids \[19, 22\] are outside 0-18"):
        masks.index_mask_to_onehot(mask)


def test_unknown_colour(tmp_path):
    rgb = masks.colorize(small_mask())
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour\.png: 1 pixels have colours matching no class, e\.g\. \(1, 2, 3\)"):
        masks.load_mask_png(tmp_path / "colour.png")


@pytest.mark.parametrize("mode", ["I;16", "LA", "1"])
def test_wrong_mode(tmp_path, mode):
    Image.new(mode, (8, 8)).save(tmp_path / "mode.png")
    with pytest.raises(DataError, match=r"mode\.png: unsupported PNG mode"):
        masks.load_mask_png(tmp_path / "mode.png")


def test_sixteen_bit_is_named(tmp_path):
    Image.new("I;16", (8, 8)).save(tmp_path / "deep.png")
    with pytest.raises(DataError, match=r"\(16-bit\)"):
        masks.load_mask_png(tmp_path / "deep.png")


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"junk\.png: cannot read the mask"):
        masks.load_mask_png(tmp_path / "junk.png")
    with pytest.raises(DataError, match=r"missing\.png: no such mask file"):
        masks.load_mask_png(tmp_path / "missing.png")


def test_bad_onehot_shape():
    with pytest.raises(DataError, match=r"expected \[19, 1024\]"):
        masks.onehot_to_index(torch.zeros(19, 32, 32))
