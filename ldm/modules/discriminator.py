"""PatchGAN discriminator (pix2pix's ``NLayerDiscriminator``) used by the VAE loss.

Image ``[B, input_nc, H, W]`` -> one realness logit per overlapping patch ``[B, 1, H', W']``
(70x70 receptive field for ``n_layers = 3``). Layout as released: ``main.{N}`` indexes a flat
Sequential of conv / BatchNorm / LeakyReLU; convs followed by BatchNorm carry no bias.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def init_weights(module: nn.Module) -> None:
    """The released initialisation: conv weights ~ N(0, 0.02); BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        kernel, pad = 4, 1
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel, stride=2, padding=pad),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last hidden conv keeps the resolution
            layers += [
                nn.Conv2d(width, out, kernel, stride=stride, padding=pad, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, kernel, stride=1, padding=pad))
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def hinge_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss: 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
    return 0.5 * (torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean())
