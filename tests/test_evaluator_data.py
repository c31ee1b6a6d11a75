"""The dataset keys the evaluator networks train on: ``index_mask`` and ``labels`` of PreprocessedFaces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ldm.data import celeba, faceworld as fw, masks
from ldm.data.celeba import PreprocessedFaces
from ldm.errors import ConfigError, DataError

SIZE = 64


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return fw.make_faceworld(tmp_path_factory.mktemp("fw") / "world", 6, seed=5, size=SIZE, test_size=2, progress=False)


def test_index_mask_is_the_png_and_agrees_with_the_condition(world: Path):
    data = PreprocessedFaces(str(world), split="all", resolution=SIZE, keys=["index_mask", "seg_mask"])
    for i in range(len(data)):
        item = data[i]
        index = item["index_mask"]
        assert index.dtype == torch.int64 and tuple(index.shape) == (SIZE, SIZE)
        png = masks.load_mask_png(world / celeba.INDEX_MASK_DIR.format(size=SIZE) / f"{item['name']}.png")
        assert np.array_equal(index.numpy(), png)
        # the 32x32 condition is the PIL-nearest resize of exactly this mask
        assert torch.equal(masks.index_mask_to_onehot(index.numpy().astype(np.uint8)), item["seg_mask"])


def test_labels_are_the_labels_json_entries_and_collate(world: Path):
    labels = json.loads((world / celeba.LABELS_FILE).read_text())
    data = PreprocessedFaces(str(world), split="test", resolution=SIZE, keys=["image", "labels"])
    assert data[0]["labels"] == labels[data[0]["name"]]
    batch = next(iter(DataLoader(data, batch_size=2)))
    assert batch["labels"]["age"].tolist() == [labels[n]["age"] for n in batch["name"]]
    assert batch["labels"]["beard"].dtype == torch.int64 and batch["image"].shape == (2, 3, SIZE, SIZE)


def test_flip_mirrors_the_index_mask_with_left_right_classes_swapped(world: Path):
    data = PreprocessedFaces(str(world), split="all", resolution=SIZE, keys=["index_mask", "seg_mask"])
    item = data[0]
    flipped = celeba.flip_sample({k: v.clone() for k, v in item.items() if k != "name"})
    l_eye, r_eye = masks.CLASS_NAMES.index("l_eye"), masks.CLASS_NAMES.index("r_eye")
    original = item["index_mask"].flip(-1)
    assert torch.equal(flipped["index_mask"] == l_eye, original == r_eye)
    assert torch.equal(flipped["index_mask"] == r_eye, original == l_eye)
    hair = masks.CLASS_NAMES.index("hair")
    assert torch.equal(flipped["index_mask"] == hair, original == hair)


def test_errors_name_the_problem(world: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="subset of"):
        PreprocessedFaces(str(world), resolution=SIZE, keys=["image", "labelz"])
    with pytest.raises(ConfigError, match="subset of"):  # the raw layout has no evaluator keys
        celeba.RawCelebAMaskHQ(str(tmp_path), keys=["index_mask"])
    copy = tmp_path / "nolabels"
    import shutil

    shutil.copytree(world, copy)
    (copy / celeba.LABELS_FILE).unlink()
    with pytest.raises(DataError, match="labels.json"):
        PreprocessedFaces(str(copy), resolution=SIZE, keys=["labels"])
    shutil.rmtree(copy / celeba.INDEX_MASK_DIR.format(size=SIZE))
    with pytest.raises(DataError, match="index-mask folder"):
        PreprocessedFaces(str(copy), resolution=SIZE, keys=["index_mask"])
