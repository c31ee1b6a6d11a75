"""Properties of the condition preprocessing over arbitrary inputs: mask PNGs and captions.

Every input either becomes a well-formed condition or is refused with a one-line user error, and
which of the two happens is decided by a simple rule stated in each test.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from ldm.data.masks import MASK_SIZE, NUM_CLASSES, PALETTE, index_mask_to_onehot, load_mask_png
from ldm.errors import DataError, UserError
from ldm.modules.encoders import CLS_ID, PAD_ID, SEP_ID, VOCAB_SIZE, BertTokenizer

# Fixed examples (derandomize), no example database written into the repository, no timing flakiness.
PROPERTY = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

sides = st.integers(1, 64)
PALETTE_19 = PALETTE.tobytes()
PALETTE_256 = PALETTE.tobytes() + bytes(range(256 - NUM_CLASSES)) * 3  # extra entries, never class colours


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


# ---------------------------------------------------------------------------------------------------------
# Index masks ("L" and "P" PNGs)


@st.composite
def index_arrays(draw) -> np.ndarray:
    """uint8 [H, W], 1 <= H, W <= 64; half the time only class ids 0-18, else any byte."""
    shape = (draw(sides), draw(sides))
    high = draw(st.sampled_from([NUM_CLASSES - 1, 255]))
    return draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, high)))


def save_index_png(array: np.ndarray, path, mode: str) -> None:
    image = Image.fromarray(array)  # mode "L"
    if mode == "P19":
        image.putpalette(PALETTE_19)
    elif mode == "P256":
        image.putpalette(PALETTE_256)
    image.save(path, format="PNG")
    with Image.open(path) as check:  # the file really has the mode under test
        assert check.mode == ("L" if mode == "L" else "P")


def check_onehot(onehot: torch.Tensor, ids: np.ndarray) -> None:
    assert onehot.dtype == torch.float32 and tuple(onehot.shape) == (NUM_CLASSES, MASK_SIZE * MASK_SIZE)
    assert onehot.is_contiguous()
    assert set(torch.unique(onehot).tolist()) <= {0.0, 1.0}
    assert torch.equal(onehot.sum(dim=0), torch.ones(MASK_SIZE * MASK_SIZE))  # one class per pixel, exactly
    used = set(torch.nonzero(onehot.sum(dim=1)).flatten().tolist())
    assert used <= set(np.unique(ids).tolist())  # nearest resizing never invents a class
    if ids.shape == (MASK_SIZE, MASK_SIZE):  # already 32x32: the one-hot is the mask itself, row-major
        assert torch.equal(onehot.argmax(dim=0), torch.from_numpy(ids.astype(np.int64)).flatten())
    if np.all(ids == ids.flat[0]):
        assert onehot[int(ids.flat[0])].sum() == MASK_SIZE * MASK_SIZE


@PROPERTY
@given(array=index_arrays(), mode=st.sampled_from(["L", "P19", "P256"]))
@example(array=np.full((1, 1), 18, np.uint8), mode="L")
@example(array=np.full((1, 1), 19, np.uint8), mode="P19")
@example(array=np.arange(256, dtype=np.uint8).reshape(16, 16), mode="P256")
@example(array=(np.arange(MASK_SIZE**2) % NUM_CLASSES).astype(np.uint8).reshape(MASK_SIZE, MASK_SIZE), mode="L")
def test_index_png_becomes_a_onehot_or_a_data_error(workdir, array, mode):
    path = workdir / f"mask_{mode}.png"
    save_index_png(array, path, mode)
    bad = np.unique(array[array >= NUM_CLASSES])
    event("refused" if bad.size else "accepted")
    if bad.size:
        with pytest.raises(DataError) as info:
            load_mask_png(path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message
        assert f"[{bad[0]}" in message  # names the first offending class id
        return
    ids = load_mask_png(path)
    assert ids.dtype == np.uint8 and np.array_equal(ids, array)
    check_onehot(index_mask_to_onehot(ids), ids)


@PROPERTY
@given(array=hnp.arrays(np.int16, st.tuples(sides, sides), elements=st.integers(-40, 40)))
def test_onehot_of_any_integer_mask(array):
    """Integer index masks of any dtype: a valid one-hot exactly when every id is in 0-18."""
    event("refused" if array.min() < 0 or array.max() >= NUM_CLASSES else "accepted")
    if array.min() < 0 or array.max() >= NUM_CLASSES:
        with pytest.raises(DataError, match="outside 0-18"):
            index_mask_to_onehot(array)
        return
    check_onehot(index_mask_to_onehot(array), array)


# ---------------------------------------------------------------------------------------------------------
# Colour masks ("RGB" and opaque "RGBA" PNGs)


@st.composite
def colour_masks(draw) -> np.ndarray:
    """uint8 [H, W, 3] in the palette, with up to 3 pixels repainted an arbitrary colour."""
    h, w = draw(sides), draw(sides)
    ids = draw(hnp.arrays(np.uint8, (h, w), elements=st.integers(0, NUM_CLASSES - 1)))
    rgb = PALETTE[ids].copy()
    for _ in range(draw(st.integers(0, 3))):
        y, x = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        rgb[y, x] = draw(hnp.arrays(np.uint8, 3))
    return rgb


@PROPERTY
@given(rgb=colour_masks(), alpha=st.booleans())
@example(rgb=np.array([[[204, 0, 0], [204, 0, 1]]], np.uint8), alpha=False)  # one step off a palette colour
@example(rgb=PALETTE[None].copy(), alpha=True)  # every class colour once
def test_colour_png_matches_the_palette_or_is_a_data_error(workdir, rgb, alpha):
    path = workdir / "colour.png"
    if alpha:  # as image editors save: an alpha channel that is fully opaque
        Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(path)
    else:
        Image.fromarray(rgb).save(path)
    palette_colours = {tuple(c) for c in PALETTE.tolist()}
    off_palette = [tuple(p) for p in rgb.reshape(-1, 3).tolist() if tuple(p) not in palette_colours]
    event("refused" if off_palette else "accepted")
    if off_palette:
        with pytest.raises(DataError, match="colours matching no class") as info:
            load_mask_png(path)
        assert f"{len(off_palette)} pixels" in str(info.value) and "\n" not in str(info.value)
        return
    ids = load_mask_png(path)
    assert ids.dtype == np.uint8 and ids.shape == rgb.shape[:2]
    assert np.array_equal(PALETTE[ids], rgb)
    check_onehot(index_mask_to_onehot(ids), ids)


# ---------------------------------------------------------------------------------------------------------
# Captions

# Special-token literals typed into a caption are read as those tokens (as BertTokenizerFast does), so a
# caption containing "[SEP]" has two [SEP]s; the invariants below are for captions without them.
SPECIAL_LITERALS = ("[cls]", "[sep]", "[pad]", "[mask]", "[unk]")

TOKENIZER = BertTokenizer()


def check_tokens(row: torch.Tensor) -> None:
    assert row.shape == (77,)
    assert bool(((row >= 0) & (row < VOCAB_SIZE)).all())
    assert row[0] == CLS_ID
    seps = torch.nonzero(row == SEP_ID).flatten().tolist()
    assert len(seps) == 1
    end = seps[0]
    assert bool((row[end + 1 :] == PAD_ID).all())  # padding after [SEP]
    assert bool((row[1:end] != PAD_ID).all()) and bool((row[1:end] != CLS_ID).all())


# Arbitrary unicode, and often only separators and control characters (some whitespace, some not).
captions = st.one_of(st.text(), st.text(st.characters(categories=["Zs", "Zl", "Zp", "Cc"]), max_size=8))


@PROPERTY
@given(text=captions)
@example(text="")
@example(text=" \t\n\r\u3000\u00a0")  # unicode whitespace is whitespace too
@example(text="a photograph of a smiling woman with blond hair " * 12)  # longer than 77 tokens: truncated
@example(text="这个人有黑色的头发" * 20)  # one token per CJK character
@example(text="Ça, c'est élégant! 😀")
@example(text="\x00\u200b")  # nothing the tokenizer keeps: just [CLS] [SEP]
def test_caption_becomes_77_ids_or_a_user_error(text):
    if any(literal in text.lower() for literal in SPECIAL_LITERALS):
        return
    event("refused" if not text.strip() else "accepted")
    if not text.strip():
        with pytest.raises(UserError, match="empty caption"):
            TOKENIZER([text])
        return
    tokens = TOKENIZER([text])
    assert tokens.dtype == torch.long and tuple(tokens.shape) == (1, 77)
    check_tokens(tokens[0])


@PROPERTY
@given(texts=st.lists(st.text(min_size=1).filter(lambda t: t.strip()), min_size=1, max_size=4))
def test_batch_rows_are_tokenized_independently(texts):
    if any(literal in text.lower() for text in texts for literal in SPECIAL_LITERALS):
        return
    batch = TOKENIZER(texts)
    assert tuple(batch.shape) == (len(texts), 77)
    for row, text in zip(batch, texts):
        assert torch.equal(row, TOKENIZER([text])[0])
