"""Face datasets on tiny fake trees: the preprocessed layout, the raw downloads, and prepare_celeba."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data import celeba, masks
from ldm.data.celeba import PreprocessedFaces, RawCelebAMaskHQ, beard_and_age_caption, flip_sample
from ldm.data.prepare import prepare_celeba
from ldm.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["0", "1", "2", "3", "2001"]  # 2001 lives in mask folder 1
RAW_IMG, RAW_MASK = 32, 16


def _rgb(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _smooth_rgb(seed: int, size: int) -> np.ndarray:
    """A colour gradient: survives JPEG and resizing almost unchanged."""
    c0, c1 = np.random.default_rng(seed).integers(0, 256, (2, 3))
    t = np.linspace(0, 1, size)[:, None, None] * np.ones((1, size, 1))
    return (c0 * (1 - t) + c1 * t).astype(np.uint8)


def _index_mask(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, masks.NUM_CLASSES, (size, size), dtype=np.uint8)


def _dialog_entry(i: int) -> dict:
    return {
        "attribute_wise_captions": {
            "Bangs": "Her bangs cover the forehead.",
            "Eyeglasses": "She wears eyeglasses.",
            "No_Beard": f"This Person has no beard {i}.",
            "Smiling": "She is smiling.",
            "Young": "She is in her Thirties.",
        },
        "overall_caption": "She has bangs and glasses, no beard, smiles, thirties.",
    }


# ---- fake trees ---------------------------------------------------------------------------------------


@pytest.fixture
def raw_tree(tmp_path: Path) -> Path:
    """CelebA-HQ-img (32 px), CelebAMask-HQ-mask-anno (16 px parts: skin, hair overlapping it, l_eye), captions."""
    root = tmp_path / "raw"
    (root / celeba.RAW_IMAGE_DIR).mkdir(parents=True)
    for i, n in enumerate(NAMES):
        Image.fromarray(_smooth_rgb(i, RAW_IMG)).save(root / celeba.RAW_IMAGE_DIR / f"{n}.jpg", quality=95)
        folder = root / celeba.RAW_MASK_DIR / str(int(n) // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        skin = np.zeros((RAW_MASK, RAW_MASK), np.uint8)
        skin[4:14, 3:13] = 255
        hair = np.zeros_like(skin)
        hair[0 : 6 + i % 2, :] = 255  # overlaps the skin's top rows
        eye = np.zeros_like(skin)
        eye[8, 5] = 255
        for part, arr in (("skin", skin), ("hair", hair), ("l_eye", eye)):
            Image.fromarray(arr).save(folder / f"{int(n):05d}_{part}.png")
    Image.fromarray(_rgb(99, RAW_IMG)).save(root / celeba.RAW_IMAGE_DIR / "4.jpg")  # like 5380.jpg: no caption
    dialog = {f"{n}.jpg": _dialog_entry(i) for i, n in enumerate(NAMES)}
    (root / celeba.RAW_DIALOG_FILE).write_text(json.dumps(dialog))
    return root


def _make_preprocessed(root: Path, size: int = 32) -> Path:
    (root / celeba.IMAGE_DIR.format(size=size)).mkdir(parents=True)
    (root / celeba.ONEHOT_MASK_DIR).mkdir(parents=True)
    (root / celeba.INDEX_MASK_DIR.format(size=size)).mkdir(parents=True)
    (root / "text").mkdir()
    captions = {}
    for i, n in enumerate(NAMES):
        Image.fromarray(_rgb(i, size)).save(root / celeba.IMAGE_DIR.format(size=size) / f"{n}.jpg", quality=95)
        mask = _index_mask(i, size)
        masks.save_index_png(mask, root / celeba.INDEX_MASK_DIR.format(size=size) / f"{n}.png")
        torch.save(masks.index_mask_to_onehot(mask), root / celeba.ONEHOT_MASK_DIR / f"{n}.pt")
        captions[f"{n}.jpg"] = {"Beard_and_Age": f"This Man has No Beard. He is in his Thirties {i}."}
    (root / celeba.CAPTION_FILE).write_text(json.dumps(captions))
    return root


@pytest.fixture
def prep_tree(tmp_path: Path) -> Path:
    return _make_preprocessed(tmp_path / "celeba")


# ---- PreprocessedFaces --------------------------------------------------------------------------------


def test_preprocessed_fields_and_split(prep_tree: Path):
    train = PreprocessedFaces(str(prep_tree), "train", resolution=32, test_size=2)
    test = PreprocessedFaces(str(prep_tree), "test", resolution=32, test_size=2)
    assert train.names == ["0", "1", "2"] and test.names == ["3", "2001"]
    s = test[1]
    assert set(s) == {"image", "text", "seg_mask", "name"} and s["name"] == "2001"
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert -1.0 <= s["image"].min() and s["image"].max() <= 1.0 and s["image"].std() > 0.3
    assert s["text"] == "this man has no beard. he is in his thirties 4."
    assert s["seg_mask"].shape == (19, 1024) and s["seg_mask"].dtype == torch.float32
    assert torch.equal(s["seg_mask"], masks.index_mask_to_onehot(_index_mask(4, 32)))
    jpeg = np.asarray(Image.open(prep_tree / celeba.IMAGE_DIR.format(size=32) / "2001.jpg"))
    assert torch.allclose(s["image"], torch.from_numpy(jpeg.copy()).permute(2, 0, 1).float() / 127.5 - 1)
    assert len(PreprocessedFaces(str(prep_tree), "all", resolution=32)) == 5


def test_preprocessed_png_masks_match_onehot(prep_tree: Path):
    kw = dict(resolution=32, split="all", keys=["seg_mask"])
    png = PreprocessedFaces(str(prep_tree), mask_format="png", index_mask_dir=celeba.INDEX_MASK_DIR.format(size=32), **kw)
    onehot = PreprocessedFaces(str(prep_tree), **kw)
    assert set(png[0]) == {"seg_mask", "name"}
    assert torch.equal(png[2]["seg_mask"], onehot[2]["seg_mask"])


def test_preprocessed_test_size_from_meta_and_keys(prep_tree: Path):
    (prep_tree / "meta.json").write_text(json.dumps({"test_size": 1}))
    assert len(PreprocessedFaces(str(prep_tree), "test", resolution=32)) == 1
    # a text-only dataset needs neither images nor masks
    for folder in (celeba.IMAGE_DIR.format(size=32), celeba.ONEHOT_MASK_DIR):
        for f in (prep_tree / folder).iterdir():
            f.unlink()
    text_only = PreprocessedFaces(str(prep_tree), resolution=32, keys=["text"])
    assert text_only[0] == {"text": "this man has no beard. he is in his thirties 0.", "name": "0"}


def test_flip_mirrors_and_swaps_left_right():
    index = torch.zeros(32, 32, dtype=torch.long)
    index[5, 2] = masks.CLASS_NAMES.index("l_eye")
    index[6, 3] = masks.CLASS_NAMES.index("u_lip")
    sample = {"image": torch.arange(6.0).view(1, 1, 6).expand(3, 2, 6).clone(), "seg_mask": masks.index_mask_to_onehot(index.numpy())}
    out = masks.onehot_to_index(flip_sample(sample)["seg_mask"])
    assert out[5, 29] == masks.CLASS_NAMES.index("r_eye") and out[6, 28] == masks.CLASS_NAMES.index("u_lip")
    assert sample["image"][0, 0].tolist() == [5, 4, 3, 2, 1, 0]


def test_dataset_flip_is_mirror_or_identity(prep_tree: Path):
    plain = PreprocessedFaces(str(prep_tree), "all", resolution=32)[0]
    flipping = PreprocessedFaces(str(prep_tree), "all", resolution=32, flip=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(8):
        s = flipping[0]
        flipped = torch.equal(s["image"], plain["image"].flip(-1))
        assert flipped or torch.equal(s["image"], plain["image"])
        seen.add(flipped)
    assert seen == {True, False}


@pytest.mark.parametrize(
    "breakage, match",
    [
        ("no_root", r"no such data folder.*data/README.md"),
        ("no_captions", r"captions_hq_beard_and_age_2022-08-19.json: caption file not found"),
        ("bad_captions", r"caption file"),
        ("no_caption_field", r"entry '1.jpg' has no 'Beard_and_Age'"),
        ("missing_image", r"3.jpg: image listed in the caption file not found"),
        ("missing_mask", r"2.pt: mask of a captioned image not found"),
        ("no_image_dir", r"image_32_downsampled_from_hq_1024: image folder not found"),
        ("tiny_split", r"too few for a test split of 3000"),
    ],
)
def test_preprocessed_construction_errors(prep_tree: Path, breakage: str, match: str):
    root, kw = prep_tree, {}
    if breakage == "no_root":
        root = prep_tree / "nowhere"
    elif breakage == "no_captions":
        (prep_tree / celeba.CAPTION_FILE).unlink()
    elif breakage == "bad_captions":
        (prep_tree / celeba.CAPTION_FILE).write_text("{not json")
    elif breakage == "no_caption_field":
        (prep_tree / celeba.CAPTION_FILE).write_text(json.dumps({"0.jpg": {"Beard_and_Age": "x"}, "1.jpg": {"Overall": "x"}}))
    elif breakage == "missing_image":
        (prep_tree / celeba.IMAGE_DIR.format(size=32) / "3.jpg").unlink()
    elif breakage == "missing_mask":
        (prep_tree / celeba.ONEHOT_MASK_DIR / "2.pt").unlink()
    elif breakage == "no_image_dir":
        os.rename(prep_tree / celeba.IMAGE_DIR.format(size=32), prep_tree / "elsewhere")
    split = "test" if breakage == "tiny_split" else "all"
    with pytest.raises(DataError, match=match):
        PreprocessedFaces(str(root), split, resolution=32, **kw)


@pytest.mark.parametrize(
    "breakage, match",
    [
        ("garbage_image", r"3.jpg: unreadable image"),
        ("wrong_size_image", r"3.jpg: image is 16x16, expected 32x32"),
        ("wrong_shape_mask", r"3.pt: mask has shape \[19, 512\], expected \[19, 1024\]"),
        ("not_onehot", r"3.pt: mask is not one-hot"),
        ("garbage_mask", r"3.pt: unreadable mask tensor"),
        ("class_ids", r"3.png: class ids \[25\] are outside 0-18"),
    ],
)
def test_preprocessed_item_errors(prep_tree: Path, breakage: str, match: str):
    image = prep_tree / celeba.IMAGE_DIR.format(size=32) / "3.jpg"
    onehot = prep_tree / celeba.ONEHOT_MASK_DIR / "3.pt"
    kw = {}
    if breakage == "garbage_image":
        image.write_bytes(b"not a jpeg")
    elif breakage == "wrong_size_image":
        Image.fromarray(_rgb(0, 16)).save(image)
    elif breakage == "wrong_shape_mask":
        torch.save(torch.zeros(19, 512), onehot)
    elif breakage == "not_onehot":
        torch.save(torch.zeros(19, 1024), onehot)
    elif breakage == "garbage_mask":
        onehot.write_bytes(b"garbage")
    elif breakage == "class_ids":
        Image.fromarray(np.full((32, 32), 25, np.uint8)).save(prep_tree / celeba.INDEX_MASK_DIR.format(size=32) / "3.png")
        kw = dict(mask_format="png", index_mask_dir=celeba.INDEX_MASK_DIR.format(size=32))
    ds = PreprocessedFaces(str(prep_tree), "all", resolution=32, **kw)
    ds[2]  # other items still load
    with pytest.raises(DataError, match=match):
        ds[3]


def test_bad_keys_and_split(prep_tree: Path):
    with pytest.raises(ConfigError, match="keys must be"):
        PreprocessedFaces(str(prep_tree), resolution=32, keys=["image", "sketch"])
    with pytest.raises(ConfigError, match="split must be"):
        PreprocessedFaces(str(prep_tree), "val", resolution=32)


# ---- the raw layout -----------------------------------------------------------------------------------


def test_beard_and_age_caption_drops_other_attributes():
    caption = beard_and_age_caption(_dialog_entry(7))
    assert caption == "This Person has no beard 7. She is in her Thirties."
    with pytest.raises(DataError, match="x.json entry: expected a CelebA-Dialog entry"):
        beard_and_age_caption({"attribute_wise_captions": {"Young": "a"}}, "x.json entry")


def test_raw_fields_and_paint_order(raw_tree: Path):
    ds = RawCelebAMaskHQ(str(raw_tree), split="all", resolution=16, mask_resolution=RAW_MASK)
    assert ds.names == NAMES  # 4.jpg has no caption and is left out
    s = ds[4]
    assert s["name"] == "2001" and s["image"].shape == (3, 16, 16)
    assert s["text"] == "this person has no beard 4. she is in her thirties."
    index = ds.index_mask(NAMES[0])
    assert index.shape == (RAW_MASK, RAW_MASK)
    hair, skin, eye = (masks.PART_TO_CLASS[p] for p in ("hair", "skin", "l_eye"))
    assert index[5, 5] == hair and index[8, 5] == eye and index[10, 5] == skin and index[15, 15] == 0
    assert ds.parts[NAMES[0]][0][0] == skin  # painted in ascending class id: hair over skin
    assert torch.equal(s["seg_mask"], masks.index_mask_to_onehot(ds.index_mask("2001")))
    train = RawCelebAMaskHQ(str(raw_tree), split="train", resolution=16, test_size=2, mask_resolution=RAW_MASK)
    assert train.names == NAMES[:3]


@pytest.mark.parametrize(
    "breakage, match",
    [
        ("no_root", r"raw/CelebA-HQ-img: no such folder; expected CelebA-HQ-img/\{N\}.jpg"),
        ("no_dialog", r"captions_hq.json: CelebA-Dialog caption file not found"),
        ("no_parts", r"2.jpg: image has no mask \(no .*anno/0/00002_<part>.png\)"),
        ("unknown_part", r"00001_tail.png: unknown part 'tail'"),
        ("missing_image", r"1.jpg: image listed in the caption file not found"),
        ("bad_entry", r"entry '3.jpg': expected a CelebA-Dialog entry"),
    ],
)
def test_raw_construction_errors(raw_tree: Path, breakage: str, match: str):
    anno = raw_tree / celeba.RAW_MASK_DIR / "0"
    if breakage == "no_root":
        os.rename(raw_tree / celeba.RAW_IMAGE_DIR, raw_tree / "moved")
    elif breakage == "no_dialog":
        (raw_tree / celeba.RAW_DIALOG_FILE).unlink()
    elif breakage == "no_parts":
        for f in anno.glob("00002_*.png"):
            f.unlink()
    elif breakage == "unknown_part":
        Image.fromarray(np.zeros((RAW_MASK, RAW_MASK), np.uint8)).save(anno / "00001_tail.png")
    elif breakage == "missing_image":
        (raw_tree / celeba.RAW_IMAGE_DIR / "1.jpg").unlink()
    elif breakage == "bad_entry":
        dialog = json.loads((raw_tree / celeba.RAW_DIALOG_FILE).read_text())
        del dialog["3.jpg"]["attribute_wise_captions"]["Young"]
        (raw_tree / celeba.RAW_DIALOG_FILE).write_text(json.dumps(dialog))
    with pytest.raises(DataError, match=match):
        RawCelebAMaskHQ(str(raw_tree), split="all", mask_resolution=RAW_MASK)


def test_raw_item_errors(raw_tree: Path):
    ds = RawCelebAMaskHQ(str(raw_tree), split="all", resolution=16, mask_resolution=RAW_MASK)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(raw_tree / celeba.RAW_MASK_DIR / "0" / "00001_skin.png")
    with pytest.raises(DataError, match=r"00001_skin.png: part mask is 8x8, expected 16x16"):
        ds[1]
    (raw_tree / celeba.RAW_IMAGE_DIR / "2.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match=r"2.jpg: unreadable image"):
        ds[2]


# ---- prepare_celeba -----------------------------------------------------------------------------------


def test_prepare_gives_what_the_loader_reads_and_resumes(raw_tree: Path, tmp_path: Path):
    out = tmp_path / "prepared"
    assert prepare_celeba(raw_tree, out, sizes=[16, 32], test_size=2, mask_resolution=RAW_MASK, progress=False) == 5
    raw = RawCelebAMaskHQ(str(raw_tree), split="test", resolution=16, test_size=2, mask_resolution=RAW_MASK)
    prepared = PreprocessedFaces(str(out), "test", resolution=16)  # test_size comes from meta.json
    assert prepared.names == raw.names == ["3", "2001"]
    for a, b in zip(prepared, raw):
        assert a["name"] == b["name"] and a["text"] == b["text"]
        assert torch.equal(a["seg_mask"], b["seg_mask"])
        assert (a["image"] - b["image"]).abs().mean() < 0.02  # JPEG round trip
    assert PreprocessedFaces(str(out), "all", resolution=32)[0]["image"].shape == (3, 32, 32)
    png = PreprocessedFaces(str(out), "all", resolution=16, mask_format="png")  # index_mask_16 from meta.json
    assert torch.equal(png[4]["seg_mask"], prepared[1]["seg_mask"])
    captions = json.loads((out / celeba.CAPTION_FILE).read_text())
    assert list(captions) == [f"{n}.jpg" for n in NAMES]
    assert captions["0.jpg"] == {"Beard_and_Age": "This Person has no beard 0. She is in her Thirties."}
    assert not [p for p in out.rglob(".*tmp*")]  # no temporary files left

    files = sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png", ".pt"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert prepare_celeba(raw_tree, out, sizes=[16, 32], test_size=2, mask_resolution=RAW_MASK, progress=False) == 0
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    (out / celeba.ONEHOT_MASK_DIR / "1.pt").unlink()
    assert prepare_celeba(raw_tree, out, sizes=[16, 32], test_size=2, mask_resolution=RAW_MASK, progress=False) == 1
    assert (out / celeba.ONEHOT_MASK_DIR / "1.pt").is_file()


# ---- the script ---------------------------------------------------------------------------------------


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_script_help_run_and_error(raw_tree: Path, tmp_path: Path, capsys):
    script = _script("prepare_celeba")
    with pytest.raises(SystemExit) as exit_:
        script.main(["--help"])
    assert exit_.value.code == 0 and "Examples:" in capsys.readouterr().out
    out = tmp_path / "out"
    argv = ["--raw", str(raw_tree), "--out", str(out), "--sizes", "16", "--test-size", "1", "--mask-resolution", "16", "--workers", "2", "--quiet"]
    assert script.main(argv) == 0
    assert len(PreprocessedFaces(str(out), "train", resolution=16)) == 4
    assert script.main(["--raw", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing" in err and "\n" not in err


@pytest.mark.parametrize("mode, what", [("L", "greyscale"), ("RGBA", "alpha"), ("I;16", "16-bit")])
def test_read_image_refuses_non_rgb(tmp_path, mode, what):
    path = tmp_path / "face.png"
    Image.new(mode, (8, 8)).save(path)
    with pytest.raises(DataError, match=what):
        celeba.read_image(path)


def test_read_image_unreadable(tmp_path):
    path = tmp_path / "face.jpg"
    path.write_bytes(b"not an image")
    with pytest.raises(DataError, match="unreadable"):
        celeba.read_image(path)
