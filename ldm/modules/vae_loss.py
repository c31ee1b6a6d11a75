"""The VAE's training loss (released name ``LPIPSWithDiscriminator``).

Generator (autoencoder) side, per sample, summed over pixels:

    rec    = |x - x_rec| + perceptual_weight * LPIPS(x, x_rec)          # pixel_weight = 1 as released
    nll    = rec / exp(logvar) + logvar                                    # released form; logvar = 0
    loss   = nll + kl_weight * KL(q(z|x) || N(0, I)) + lambda * disc_factor * (-E[D(x_rec)])

with lambda = disc_weight * ||grad nll|| / (||grad g|| + 1e-4) at the decoder's last layer, clamped
to [0, 1e4] and detached (the adaptive weight of Esser et al.). Discriminator side: hinge loss.
Both GAN terms are off (disc_factor = 0) before ``disc_start`` (released: 50001). The generator loss
gives the discriminator no gradient and the discriminator loss gives the autoencoder none, so the two
may simply be added and optimised together (as :class:`ldm.models.autoencoder_module.AutoencoderModule` does).

Sub-modules are named as released (``logvar``, ``perceptual_loss.*``, ``discriminator.*``) so a
released VAE checkpoint's ``loss.*`` keys load strictly.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ldm.errors import ConfigError
from ldm.modules.autoencoder import DiagonalGaussian
from ldm.modules.discriminator import NLayerDiscriminator, hinge_loss
from ldm.modules.lpips import LPIPS


class VAELoss(nn.Module):
    def __init__(
        self,
        *,
        perceptual: Optional[LPIPS],
        discriminator: Optional[NLayerDiscriminator],
        disc_start: int = 50001,
        kl_weight: float = 1e-6,
        pixel_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        disc_weight: float = 0.5,
        disc_factor: float = 1.0,
        logvar_init: float = 0.0,
    ):
        super().__init__()
        if perceptual is None and perceptual_weight > 0:
            raise ConfigError(
                f"VAELoss: perceptual_weight is {perceptual_weight} but no LPIPS network was given; "
                "pass one or set perceptual_weight: 0"
            )
        self.perceptual_loss = perceptual
        self.discriminator = discriminator
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)))
        self.disc_start = disc_start
        self.kl_weight = kl_weight
        self.pixel_weight = pixel_weight
        self.perceptual_weight = perceptual_weight
        self.disc_weight = disc_weight
        self.disc_factor = disc_factor

    def gan_factor(self, global_step: int) -> float:
        """``disc_factor`` from ``disc_start`` on, 0 before."""
        return self.disc_factor if global_step >= self.disc_start else 0.0

    def gan_active(self, global_step: int) -> bool:
        return self.discriminator is not None and self.gan_factor(global_step) > 0

    def reconstruction_loss(self, inputs: Tensor, recon: Tensor) -> Tensor:
        """Per-pixel ``|x - x_rec| + perceptual_weight * LPIPS``: ``[B, C, H, W]``."""
        rec = self.pixel_weight * (inputs - recon).abs()
        if self.perceptual_loss is not None and self.perceptual_weight > 0:
            rec = rec + self.perceptual_weight * self.perceptual_loss(inputs, recon)  # + [B, 1, 1, 1]
        return rec

    def critic(self, recon: Tensor) -> Tensor:
        """The discriminator as a fixed critic: gradients reach ``recon`` but not its parameters, so
        the generator loss never trains the discriminator (whatever optimizer setup is used)."""
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, frozen, (recon,))

    def adaptive_weight(self, nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor) -> Tensor:
        """disc_weight * ||d nll / d W|| / (||d g / d W|| + 1e-4), clamped to [0, 1e4], detached."""
        nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
        return weight.clamp(0.0, 1e4).detach() * self.disc_weight

    def generator_loss(
        self,
        inputs: Tensor,
        recon: Tensor,
        posterior: DiagonalGaussian,
        global_step: int,
        last_layer: Optional[Tensor] = None,
        adversarial_rows: Optional[int] = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """NLL (+ KL) of every row against ``inputs``, plus the adaptive-weighted GAN term of the first
        ``adversarial_rows`` rows (default: all, as released)."""
        batch = inputs.shape[0]
        rec = self.reconstruction_loss(inputs, recon)
        nll = rec / torch.exp(self.logvar) + self.logvar
        nll_loss = nll.sum() / batch
        kl_loss = posterior.kl().sum() / batch
        loss = nll_loss + self.kl_weight * kl_loss

        zero = torch.zeros((), device=inputs.device)
        g_loss, d_weight, factor = zero, zero, self.gan_factor(global_step)
        if self.gan_active(global_step):
            g_loss = -self.critic(recon[:adversarial_rows]).mean()
            # The adaptive weight needs gradients; in evaluation (no graph) it is 0, as released.
            if last_layer is not None and torch.is_grad_enabled() and nll_loss.requires_grad:
                d_weight = self.adaptive_weight(nll_loss, g_loss, last_layer)
            loss = loss + d_weight * factor * g_loss

        log = {
            "total_loss": loss.detach(),
            "logvar": self.logvar.detach(),
            "kl_loss": kl_loss.detach(),
            "nll_loss": nll_loss.detach(),
            "rec_loss": rec.detach().mean(),
            "d_weight": d_weight.detach(),
            "disc_factor": torch.tensor(float(factor), device=inputs.device),
            "g_loss": g_loss.detach(),
        }
        return loss, log

    def discriminator_loss(self, inputs: Tensor, recon: Tensor, global_step: int,
                           adversarial_rows: Optional[int] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Hinge loss of the discriminator: every input is real, the first ``adversarial_rows`` reconstructions
        (default: all) fake."""
        if self.discriminator is None:
            raise RuntimeError("VAELoss.discriminator_loss needs a discriminator; this loss was built without one")
        logits_real = self.discriminator(inputs.detach())
        logits_fake = self.discriminator(recon[:adversarial_rows].detach())
        loss = self.gan_factor(global_step) * hinge_loss(logits_real, logits_fake)
        log = {
            "disc_loss": loss.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }
        return loss, log
