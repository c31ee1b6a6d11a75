"""Training the FaceWorld evaluator networks (face parser, attribute classifier), as thin Lightning glue.
Their accuracy on real images is measured by :mod:`ldm.evaluation.evaluators`.

The batches come from :class:`ldm.data.celeba.PreprocessedFaces` with the evaluator keys: ``index_mask``
(LongTensor [B, M, M], the exact FaceWorld mask at image resolution) for the parser, ``labels`` (the
``labels.json`` entries, collated to ``{attribute: LongTensor [B]}``) for the classifier.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ldm.models.common import AdamOptions
from ldm.modules.attribute_classifier import AttributeClassifier
from ldm.modules.face_parser import FaceParser


class FaceParserModule(AdamOptions, pl.LightningModule):
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
        return torch.optim.AdamW(self.parser.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay, **self.optimizer_options())


class AttributeClassifierModule(AdamOptions, pl.LightningModule):
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
        return torch.optim.AdamW(self.classifier.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay, **self.optimizer_options())
