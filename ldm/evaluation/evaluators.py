"""The FaceWorld evaluators (face parser, attribute classifier): loading them and measuring them on real images.

A shipped evaluator is ``NAME.safetensors`` with its config ``NAME.yaml`` beside it (``checkpoints/faceworld/
parser.{safetensors,yaml}``). The config's ``model`` node builds the network (or a module holding it, e.g.
the LightningModule that trained it); the weights load strictly into what it builds, and the network of the
expected class (``FaceParser`` / ``AttributeClassifier``) is taken out of it. Without a config the network
is built with its defaults.

Interfaces used (``ldm/modules/face_parser.py``, ``ldm/modules/attribute_classifier.py``):
``FaceParser(images [B, 3, H, W] in [-1, 1]) -> logits [B, 19, H, W]``, ``FaceParser.features(images) ->
[B, D]``; ``AttributeClassifier(images) -> {attribute: logits [B, n]}``.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from ldm.checkpoints import load_state_dict, load_strict
from ldm.config import instantiate, load_config
from ldm.errors import CheckpointError, DataError
from ldm.evaluation import metrics

logger = logging.getLogger(__name__)

EVALUATORS = {
    "parser": ("ldm.modules.face_parser", "FaceParser", "--parser"),
    "classifier": ("ldm.modules.attribute_classifier", "AttributeClassifier", "--classifier"),
}
DEFAULT_DIR = Path("checkpoints/faceworld")
ATTRIBUTES = ("age", "beard")  # what the captions say, measured on the generated images
ACCURACY_FLOOR = 0.95  # below this an evaluator's verdicts are too noisy to rank methods


def evaluator_class(kind: str) -> type:
    module, name, _ = EVALUATORS[kind]
    return getattr(importlib.import_module(module), name)


def load_evaluator(path: str | os.PathLike, kind: str, device: str | torch.device = "cpu") -> nn.Module:
    """Build evaluator ``kind`` ("parser" or "classifier") from ``path`` and its ``.yaml`` beside it (for a
    training checkpoint, the run's ``config.yaml`` in the same folder)."""
    _, name, flag = EVALUATORS[kind]
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{name} weights {path} do not exist; train the FaceWorld evaluators (make train-faceworld) or pass {flag} PATH"
        )
    config = path.with_suffix(".yaml")
    if not config.is_file() and (path.parent / "config.yaml").is_file():
        config = path.parent / "config.yaml"  # a training checkpoint: its run's resolved config sits beside it
    cls = evaluator_class(kind)
    built = instantiate(load_config(config).model, load_weights=False) if config.is_file() else cls()
    load_strict(built, load_state_dict(path), source=str(path))
    network = next((m for m in built.modules() if isinstance(m, cls)), None)
    if network is None:
        raise CheckpointError(f"{config} builds a {type(built).__name__} holding no {name}; pass the {kind}'s own config")
    return network.to(device).eval().requires_grad_(False)


@dataclass
class Measured:
    """Per-sample measurements of a batch of images against their conditions (CPU tensors, each [B])."""

    mask_accuracy: torch.Tensor
    correct: dict[str, torch.Tensor]  # attribute -> 1/0
    text_accuracy: torch.Tensor
    joint_accuracy: torch.Tensor
    features: torch.Tensor  # [B, D] parser features (for the Fréchet distance)


@torch.no_grad()
def measure(parser: nn.Module, classifier: nn.Module, images: torch.Tensor, seg_mask: torch.Tensor,
            labels: Mapping[str, torch.Tensor]) -> Measured:
    """Mask, attribute, text and joint accuracy and parser features of ``images`` [B, 3, H, W] in [-1, 1]."""
    device = next(parser.parameters()).device
    images = images.to(device)
    mask_acc = metrics.parser_mask_accuracy(parser(images), seg_mask.to(device)).cpu()
    correct = metrics.attribute_correct(classifier(images.to(next(classifier.parameters()).device)), labels)
    text_acc = metrics.text_accuracy(correct)
    return Measured(mask_acc, correct, text_acc, metrics.joint_accuracy(mask_acc, text_acc),
                    parser.features(images).double().cpu())


def label_tensors(labels: Mapping[str, Mapping], names: Sequence[str], attributes: Sequence[str] = ATTRIBUTES) -> dict[str, torch.Tensor]:
    """``{attribute: LongTensor [B]}`` for the samples ``names`` from a FaceWorld ``labels.json``."""
    missing = [n for n in names if n not in labels]
    if missing:
        raise DataError(f"labels.json has no entry for samples {missing[:5]}; re-create the FaceWorld")
    return {a: torch.tensor([int(labels[n][a]) for n in names]) for a in attributes}


# ---- the evaluators' own accuracy on real images (the FaceWorld recipe's check) ----------------------------


def to_condition_grid(index_mask: torch.Tensor) -> torch.Tensor:
    """Index masks [B, H, W] -> [B, 32, 32] on the condition's grid (:func:`metrics.resize_index_masks`)."""
    return metrics.resize_index_masks(index_mask.long().cpu())


@torch.no_grad()
def parser_pixel_accuracy(parser: nn.Module, batches: Iterable[dict[str, Any]]) -> float:
    """Pixel accuracy at 32x32 (the condition's grid) of the parser's argmax against the true index mask,
    over all pixels of all batches. Each per-sample accuracy is k/1024 (exact in float32), so the float64
    sum below is the exact count and the result the exactly rounded correct / total."""
    correct, count = 0.0, 0
    for batch in batches:
        pred = to_condition_grid(parser(batch["image"]).argmax(1))
        acc = metrics.mask_pixel_accuracy(pred, to_condition_grid(batch["index_mask"]))
        correct += float(acc.double().sum())
        count += acc.numel()
    return correct / max(count, 1)


@torch.no_grad()
def classifier_accuracy(classifier: nn.Module, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Per-attribute accuracy of the classifier's argmax against the labels (every head of the classifier)."""
    correct: dict[str, int] = {}
    total = 0
    for batch in batches:
        logits = classifier(batch["image"])
        right = metrics.attribute_correct(logits, {name: batch["labels"][name] for name in logits})
        for name, r in right.items():
            correct[name] = correct.get(name, 0) + int(r.sum())
        total += batch["image"].shape[0]
    return {name: c / max(total, 1) for name, c in correct.items()}
