"""Training the FaceWorld evaluator networks (face parser, attribute classifier), as thin Lightning glue,
and measuring their accuracy on real images.

The batches come from :class:`ldm.data.celeba.PreprocessedFaces` with the evaluator keys: ``index_mask``
(LongTensor [B, M, M], the exact FaceWorld mask at image resolution) for the parser, ``labels`` (the
``labels.json`` entries, collated to ``{attribute: LongTensor [B]}``) for the classifier.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ldm.data import masks
from ldm.modules.attribute_classifier import AttributeClassifier
from ldm.modules.face_parser import FaceParser


class FaceParserModule(pl.LightningModule):
    """Per-pixel cross-entropy of :class:`FaceParser` against the index mask."""

    def __init__(self, parser: FaceParser, learning_rate: float = 1.0e-3, weight_decay: float = 0.0):
        super().__init__()
        self.parser = parser
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.parser(batch["image"])  # [B, 19, H, W]
        target = batch["index_mask"]  # [B, H, W]
        loss = F.cross_entropy(logits, target)
        accuracy = (logits.argmax(1) == target).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=target.shape[0])
        self.log("train/pixel_accuracy", accuracy, prog_bar=True, batch_size=target.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parser.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)


class AttributeClassifierModule(pl.LightningModule):
    """Sum over the heads of the cross-entropy of :class:`AttributeClassifier` against the labels."""

    def __init__(self, classifier: AttributeClassifier, learning_rate: float = 1.0e-3, weight_decay: float = 0.0):
        super().__init__()
        self.classifier = classifier
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.classifier(batch["image"])
        losses = {name: F.cross_entropy(out, batch["labels"][name].long()) for name, out in logits.items()}
        loss = sum(losses.values())
        b = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for name, out in logits.items():
            self.log(f"train/{name}_accuracy", (out.argmax(1) == batch["labels"][name]).float().mean(), batch_size=b)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.classifier.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)


# ---- accuracy on real images ---------------------------------------------------------------------------


def to_condition_grid(index_mask: torch.Tensor) -> torch.Tensor:
    """Index masks [B, H, W] -> [B, 32, 32] by the PIL nearest resize the mask condition uses."""
    out = [masks.onehot_to_index(masks.index_mask_to_onehot(m.cpu().numpy().astype(np.uint8))) for m in index_mask]
    return torch.stack(out)


@torch.no_grad()
def parser_pixel_accuracy(parser: FaceParser, batches: Iterable[dict[str, Any]]) -> float:
    """Pixel accuracy at 32x32 (the condition's grid) of the parser's argmax against the true index mask."""
    correct = total = 0
    for batch in batches:
        pred = to_condition_grid(parser(batch["image"]).argmax(1))
        true = to_condition_grid(batch["index_mask"])
        correct += int((pred == true).sum())
        total += true.numel()
    return correct / max(total, 1)


@torch.no_grad()
def classifier_accuracy(classifier: AttributeClassifier, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Per-attribute accuracy of the classifier's argmax against the labels."""
    correct: dict[str, int] = {}
    total = 0
    for batch in batches:
        logits = classifier(batch["image"])
        for name, out in logits.items():
            correct[name] = correct.get(name, 0) + int((out.argmax(1) == batch["labels"][name]).sum())
        total += batch["image"].shape[0]
    return {name: c / max(total, 1) for name, c in correct.items()}
