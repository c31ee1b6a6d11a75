"""The FaceWorld evaluator networks: shapes, their accuracy helpers, and a few training steps from their configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ldm.config import instantiate, load_config
from ldm.data import faceworld as fw
from ldm.evaluation.evaluators import classifier_accuracy, load_evaluator, parser_pixel_accuracy, to_condition_grid
from ldm.modules.attribute_classifier import AttributeClassifier
from ldm.modules.face_parser import FaceParser
from ldm.training import LaunchOptions, train

ROOT = Path(__file__).resolve().parents[1]


def test_face_parser_shapes():
    parser = FaceParser(num_classes=19, width=8)
    for size in (32, 64):
        x = torch.rand(2, 3, size, size) * 2 - 1
        assert parser(x).shape == (2, 19, size, size)
        assert parser.features(x).shape == (2, 32)


def test_attribute_classifier_shapes():
    clf = AttributeClassifier(width=8)
    out = clf(torch.rand(3, 3, 64, 64) * 2 - 1)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"age": (3, 5), "beard": (3, 4), "gender": (3, 2)}
    assert set(AttributeClassifier(width=8, heads={"x": 7})(torch.zeros(1, 3, 32, 32))) == {"x"}


class Oracle(torch.nn.Module):
    """A 'parser' that returns the true mask as logits, and a 'classifier' that returns the true labels."""

    def __init__(self, batches):
        super().__init__()
        self.queue = list(batches)

    def forward(self, images):
        batch = self.queue.pop(0)
        if "index_mask" in batch:
            return F.one_hot(batch["index_mask"], 19).permute(0, 3, 1, 2).float()
        return {k: F.one_hot(batch["labels"][k], n).float() for k, n in (("age", 5), ("beard", 4))}


def test_accuracy_helpers_on_exact_predictions():
    mask = torch.randint(0, 19, (2, 64, 64))
    assert to_condition_grid(mask).shape == (2, 32, 32)
    batches = [{"image": torch.zeros(2, 3, 64, 64), "index_mask": mask}]
    assert parser_pixel_accuracy(Oracle(batches), batches) == 1.0
    batches = [{"image": torch.zeros(2, 3, 64, 64), "labels": {"age": torch.tensor([0, 4]), "beard": torch.tensor([3, 0])}}]
    assert classifier_accuracy(Oracle(batches), batches) == {"age": 1.0, "beard": 1.0}


@pytest.mark.parametrize("size", [32, 33, 63, 64, 100, 128, 256, 512])
def test_the_condition_grid_is_the_pil_nearest_resize_of_the_data_pipeline(size):
    """One resize path for every mask accuracy: the torch resize picks exactly the pixels of the PIL nearest
    resize that made the 32x32 conditions (masks.index_mask_to_onehot), at every size."""
    import numpy as np

    from ldm.data import masks

    index = torch.randint(0, 19, (3, size, size), generator=torch.Generator().manual_seed(size))
    pil = torch.stack([masks.onehot_to_index(masks.index_mask_to_onehot(m.numpy().astype(np.uint8))) for m in index])
    assert torch.equal(to_condition_grid(index), pil)


def test_pooled_parser_accuracy_is_the_exact_pixel_fraction():
    target = torch.randint(0, 19, (5, 64, 64), generator=torch.Generator().manual_seed(0))
    noisy = torch.where(torch.rand(5, 64, 64, generator=torch.Generator().manual_seed(1)) < 0.3, 0, target)
    batches = [{"image": torch.zeros(5, 3, 64, 64), "index_mask": target}]

    class Noisy(torch.nn.Module):
        def forward(self, images):
            return F.one_hot(noisy, 19).permute(0, 3, 1, 2).float()

    correct = int((to_condition_grid(noisy) == to_condition_grid(target)).sum())
    assert parser_pixel_accuracy(Noisy(), batches) == correct / (5 * 32 * 32)


@pytest.mark.parametrize("name", ["parser", "classifier"])
def test_a_few_training_steps_from_the_config(name: str, tmp_path: Path):
    world = fw.make_faceworld(tmp_path / "world", 8, seed=1, size=64, test_size=2, progress=False)
    overrides = [f"data.train.params.root={world}", "train.batch_size=2", "train.max_steps=3", "train.log_every_n_steps=1"]
    overrides.append(f"model.params.{name}.params.width=8")
    cfg = load_config(ROOT / "configs" / "faceworld" / f"{name}.yaml", overrides)
    ckpt_dir = train(cfg, name, LaunchOptions(accelerator="cpu", devices="1", run_dir=str(tmp_path / "run")))
    state = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 3 and any(k.startswith(f"{name}.") for k in state["state_dict"])
    first, last = (float(v) for v in _losses(tmp_path / "run")[::2][:2])
    assert first > 0 and last == last  # logged, finite
    # the training checkpoint scores images as it is: its run's config.yaml beside it builds the network
    network = load_evaluator(ckpt_dir / "last.ckpt", name)
    assert isinstance(network, FaceParser if name == "parser" else AttributeClassifier)
    expected = state["state_dict"][f"{name}.{next(iter(network.state_dict()))}"]
    assert torch.equal(next(iter(network.state_dict().values())), expected)


def _losses(run: Path) -> list[str]:
    import csv

    rows = list(csv.DictReader(open(next(run.glob("logs/version_*/metrics.csv")))))
    return [r["train/loss"] for r in rows if r.get("train/loss")]


def test_every_faceworld_config_builds():
    for name in ("vae", "text", "mask", "codiff", "parser", "classifier"):
        cfg = load_config(ROOT / "configs" / "faceworld" / f"{name}.yaml")
        assert instantiate(cfg.model, load_weights=False) is not None
