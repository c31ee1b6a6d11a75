"""The ceiling a VAE sets for every latent model over it: the FaceWorld evaluators on real test images
encoded and decoded by the VAE (posterior mean), scored by the same function as generated images
(:func:`ldm.evaluation.evaluators.measure`), beside the real images' own scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

import torch
from torch import nn

from ldm.evaluation.evaluators import measure


@dataclass
class CeilingScores:
    """Mean scores over the test images: mask accuracy (32²), per-attribute accuracy, mean absolute error."""

    mask_accuracy: float
    attributes: dict[str, float]
    l1: float
    images: int

    def as_row(self) -> dict[str, float]:
        return {"mask_accuracy": self.mask_accuracy, **self.attributes, "l1": self.l1, "images": self.images}


@torch.no_grad()
def reconstruct(vae: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Encode (posterior mean) and decode, clamped to [-1, 1]: ``[B, 3, H, W]``."""
    return vae.decode(vae.encode(images).mode()).clamp(-1.0, 1.0)


@torch.no_grad()
def ceiling_scores(parser: nn.Module, classifier: nn.Module, batches: Iterable[Mapping], labels_of,
                   vae: Optional[nn.Module] = None) -> CeilingScores:
    """Score the batches' images (``vae`` given: their reconstructions). ``labels_of(batch)`` gives the
    ``{attribute: LongTensor [B]}`` the classifier is checked against."""
    mask, l1, count = 0.0, 0.0, 0
    correct: dict[str, float] = {}
    for batch in batches:
        x = batch["image"]
        images = x if vae is None else reconstruct(vae, x)
        m = measure(parser, classifier, images, batch["seg_mask"], labels_of(batch))
        mask += float(m.mask_accuracy.sum())
        for name, c in m.correct.items():
            correct[name] = correct.get(name, 0.0) + float(c.sum())
        l1 += float((images - x).abs().mean(dim=(1, 2, 3)).sum())
        count += x.shape[0]
    count = max(count, 1)
    return CeilingScores(mask / count, {k: v / count for k, v in correct.items()}, l1 / count, count)
