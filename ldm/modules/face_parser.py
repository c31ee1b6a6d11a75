"""FaceParser: a small encoder-decoder that labels every pixel of a face with one of the 19 mask classes.

It is FaceWorld's stand-in for the BiSeNet face parser the paper measures mask accuracy with: trained on
FaceWorld's exact index masks, it reads a generated image back into a mask to compare with the condition.
Its globally pooled deepest features also serve as the embedding of the Fréchet distance.

Layout (``width`` = w): four encoder stages at full, 1/2, 1/4 and 1/8 resolution with w, 2w, 4w, 4w channels
(two 3x3 conv + GroupNorm + SiLU each), a decoder that upsamples and fuses the skip of each stage, and a
1x1 classifier. Input height and width must be divisible by 8.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by GroupNorm and SiLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
    )


class FaceParser(nn.Module):
    """Images [B, 3, H, W] in [-1, 1] -> per-pixel class logits [B, num_classes, H, W]."""

    def __init__(self, num_classes: int = 19, width: int = 32):
        super().__init__()
        chans = [width, 2 * width, 4 * width, 4 * width]
        self.feature_dim = chans[-1]
        self.down = nn.ModuleList()
        cin = 3
        for c in chans:
            self.down.append(conv_block(cin, c))
            cin = c
        self.up = nn.ModuleList(conv_block(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(len(chans) - 1)))
        self.classifier = nn.Conv2d(chans[0], num_classes, 1)

    def _encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        skips, h = [], images
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.avg_pool2d(h, 2))
            skips.append(h)  # resolutions H, H/2, H/4, H/8
        return skips

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips = self._encode(images)
        h = skips.pop()  # [B, 4w, H/8, W/8]
        for block in self.up:
            skip = skips.pop()
            h = block(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], dim=1))
        return self.classifier(h)  # [B, num_classes, H, W]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled deepest features [B, 4 * width] (the Fréchet-distance embedding)."""
        return self._encode(images)[-1].mean(dim=(2, 3))
