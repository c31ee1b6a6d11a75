"""AttributeClassifier: a small CNN that reads FaceWorld's caption attributes (age, beard, gender) off a face.

FaceWorld's stand-in for CLIP text similarity: the text accuracy of a generated image is how often this
classifier recovers the attributes its caption names. A shared trunk of four stages at full, 1/2, 1/4 and 1/8
resolution (w, 2w, 4w, 4w channels; two 3x3 conv + BatchNorm + SiLU each), global average pooling, and one
linear head per attribute. BatchNorm, not GroupNorm: the attributes are partly global colour (blush, grey hair,
skin desaturation), which a per-image normalisation divides out (with GroupNorm the same network stayed at
chance for 500 steps on FaceWorld).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_HEADS = {"age": 5, "beard": 4, "gender": 2}


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by BatchNorm and SiLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU(),
    )


class AttributeClassifier(nn.Module):
    """Images [B, 3, H, W] in [-1, 1] -> ``{attribute: logits [B, n_classes]}``."""

    def __init__(self, width: int = 32, heads: dict[str, int] = DEFAULT_HEADS):  # noqa: B006 (never mutated)
        super().__init__()
        chans = [width, 2 * width, 4 * width, 4 * width]
        self.stages = nn.ModuleList()
        cin = 3
        for c in chans:
            self.stages.append(conv_block(cin, c))
            cin = c
        self.heads = nn.ModuleDict({name: nn.Linear(chans[-1], int(n)) for name, n in heads.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        h = images
        for i, stage in enumerate(self.stages):
            h = stage(h if i == 0 else F.avg_pool2d(h, 2))  # H, H/2, H/4, H/8
        return h.mean(dim=(2, 3))  # [B, 4w]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {name: head(f) for name, head in self.heads.items()}
