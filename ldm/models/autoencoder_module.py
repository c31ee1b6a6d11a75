"""Lightning glue that trains the first-stage autoencoder (:class:`ldm.modules.autoencoder.AutoencoderKL`)
with :class:`ldm.modules.vae_loss.VAELoss`.

One batch is one optimiser step of the autoencoder and of the discriminator together. The released code
used two Adam optimisers with the same learning rate and betas, stepped once each per batch; one Adam
with two parameter groups is the same update (Adam's state is per parameter), because the generator loss
sends no gradient to the discriminator and the discriminator loss none to the autoencoder (see VAELoss).
As released, the discriminator loss is weighted 0 before ``disc_start``: its Adam steps with zero
gradients, which leave the weights unchanged.

A single optimiser keeps Lightning's automatic optimisation, so ``global_step`` counts batches (as in the
released code, where ``disc_start`` is measured), and gradient accumulation, clipping, mixed precision and
DDP work as for the other models.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from ldm import seeding
from ldm.errors import ConfigError
from ldm.models.common import AdamOptions
from ldm.models.regenerated_latents import RegeneratedLatents
from ldm.modules.autoencoder import AutoencoderKL
from ldm.modules.vae_loss import VAELoss


class AutoencoderModule(AdamOptions, pl.LightningModule):
    checkpoint_kind = "vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        loss: VAELoss,
        learning_rate: float = 4.5e-6,
        betas: list[float] = [0.5, 0.9],  # noqa: B006 (never mutated)
        learn_logvar: bool = False,
        train_crop: Optional[int] = None,
        train_decoder_only: bool = False,
        regenerate: Optional[RegeneratedLatents] = None,
    ):
        """``learn_logvar``: the released optimiser leaves ``loss.logvar`` out (it stays at its initial
        0 and exists for the checkpoint layout); ``true`` trains it with the autoencoder.

        ``train_crop``: ``null`` (released) trains on whole images; a size S trains each batch on one random
        S x S window (the same for the whole batch, drawn from the step's generator). The autoencoder is
        convolutional, so it learns the same map from fewer pixels per image: more images per second on a
        CPU, and every window holds part of the (centred) face. Validation and use stay on whole images.

        ``train_decoder_only``: ``false`` (released) trains the whole autoencoder; ``true`` freezes the encoder
        and ``quant_conv`` (weights and mode) and trains ``post_quant_conv``, the decoder (and the discriminator):
        the latents stay exactly those of the ``vae`` given (e.g. a trained VAE loaded through a pretrained node),
        so every diffusion model trained on them stays valid while the decoder learns to render them better.

        ``regenerate``: ``null`` (released) decodes posterior samples; a :class:`RegeneratedLatents` replaces a
        share of each batch's posterior samples by latents a frozen diffusion model re-drew from them (SDEdit), so
        that the decoder learns to render the sampler's latents; it needs ``train_decoder_only`` (the latents must
        stay those the diffusion model was trained on) and the batch keys its methods condition on."""
        super().__init__()
        self.vae = vae
        self.loss = loss
        self.learning_rate = learning_rate
        self.betas = (float(betas[0]), float(betas[1]))
        self.learn_logvar = learn_logvar
        self.loss.logvar.requires_grad_(learn_logvar)
        if train_crop is not None and train_crop < 8:
            raise ConfigError(f"AutoencoderModule: train_crop must be at least 8 pixels (or null), got {train_crop}")
        self.train_crop = train_crop
        self.train_decoder_only = train_decoder_only
        if regenerate is not None and not train_decoder_only:
            raise ConfigError("AutoencoderModule: regenerate trains the decoder on a diffusion model's latents, which "
                              "must stay the encoder's; set train_decoder_only: true")
        if regenerate is not None and train_crop is not None:
            raise ConfigError("AutoencoderModule: regenerate re-draws whole latents under whole masks; set train_crop: null")
        self.regenerate = regenerate  # not an nn.Module: its frozen model is neither trained nor saved here
        # regenerate.anchor: the decoder as given, frozen, renders the posterior rows' targets (kept out of the
        # module's state like the frozen diffusion model: made before a resumed checkpoint is loaded, so it is
        # always the given decoder)
        self.anchor = FrozenDecoder(vae) if regenerate is not None and regenerate.anchor else None
        if train_decoder_only:
            for module in self.encoder_modules():
                module.requires_grad_(False)
        self._window_step, self._window_batch = -1, 0  # see next_micro_batch

    def encoder_modules(self) -> list[torch.nn.Module]:
        """The modules that map an image to its latent posterior."""
        return [self.vae.encoder, self.vae.quant_conv]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.train_decoder_only:
            for module in self.encoder_modules():
                module.eval()
        return self

    def next_micro_batch(self) -> int:
        """The run-wide index of the training micro-batch about to be drawn (call once per training step):
        ``global_step x accumulation + its place in the accumulation window``, the value of Lightning's
        ``fit_loop.total_batch_idx`` in an uninterrupted run.

        It is derived from ``global_step`` because a checkpoint restores that exactly, whereas the loop's batch
        counters come back one batch apart across Lightning releases when the checkpoint was written at the end
        of a training batch; a resumed run would then draw another batch's posterior samples. Checkpoints are
        written between accumulation windows, so a resumed run starts a window."""
        step = self.global_step
        if step != self._window_step:
            self._window_step, self._window_batch = step, 0
        index = step * self.trainer.accumulate_grad_batches + self._window_batch
        self._window_batch += 1
        return index

    def posterior_generator(self, device: torch.device, micro_batch: int) -> torch.Generator:
        """Seeded from (run seed, rank, micro-batch index): training is deterministic given the seed."""
        return seeding.generator(torch.initial_seed(), "vae-posterior", self.global_rank, micro_batch, device=device)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x = batch["image"]  # [B, 3, H, W] in [-1, 1]
        step = self.global_step
        generator = self.posterior_generator(x.device, self.next_micro_batch())
        if self.train_crop is not None:
            x = random_window(x, self.train_crop, generator)  # [B, 3, S, S]
        target, rows = x, None  # the pixel loss's target; the rows the GAN term judges (None: all)
        if self.regenerate is None:
            recon, posterior = self.vae(x, sample_posterior=True, generator=generator)
        else:
            posterior = self.vae.encode(x)
            z = self.regenerate(posterior.sample(generator), batch, generator, step)  # [B, C, h, w]
            recon = self.vae.decode(z)
            count = self.regenerate.count(x.shape[0])  # the first rows are re-drawn
            if self.regenerate.adversarial_rows_only:
                rows = count
            if self.anchor is not None:
                target = torch.cat([x[:count], self.anchor(z[count:])])
        loss, log = self.loss.generator_loss(target, recon, posterior, step, last_layer=self.vae.last_layer, adversarial_rows=rows)
        if self.loss.discriminator is not None:
            d_loss, d_log = self.loss.discriminator_loss(x, recon, step, adversarial_rows=rows)  # recon is detached inside
            loss = loss + d_loss
            log.update(d_log)
        self.log("train/total_loss", log.pop("total_loss"), prog_bar=True, batch_size=x.shape[0])
        self.log_dict({f"train/{k}": v for k, v in log.items()}, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Reconstruction from the posterior mean: ``val/l1`` and the released ``val/rec_loss``."""
        x = batch["image"]
        recon = self.vae(x, sample_posterior=False).reconstruction
        l1 = (x - recon).abs().mean()
        rec_loss = self.loss.reconstruction_loss(x, recon).mean()
        self.log("val/l1", l1, prog_bar=True, batch_size=x.shape[0])
        self.log("val/rec_loss", rec_loss, batch_size=x.shape[0])
        return l1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        vae_params = [p for p in self.vae.parameters() if p.requires_grad] + ([self.loss.logvar] if self.learn_logvar else [])
        groups = [{"params": vae_params, "name": "vae"}]
        if self.loss.discriminator is not None:
            groups.append({"params": list(self.loss.discriminator.parameters()), "name": "discriminator"})
        return torch.optim.Adam(groups, lr=self.learning_rate, betas=self.betas, **self.optimizer_options())


def random_window(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """One ``size`` x ``size`` window of ``images`` [B, C, H, W] at an offset drawn from ``generator``."""
    height, width = images.shape[-2:]
    if size > min(height, width):
        raise ConfigError(f"train_crop {size} is larger than the {height}x{width} training images; lower it or set it to null")
    top = int(torch.randint(0, height - size + 1, (), generator=generator, device=generator.device))
    left = int(torch.randint(0, width - size + 1, (), generator=generator, device=generator.device))
    return images[..., top : top + size, left : left + size]


class FrozenDecoder:
    """A frozen copy of a VAE's decoding half (``post_quant_conv``, ``decoder``), outside any module's state:
    ``z -> image`` as :meth:`AutoencoderKL.decode` rendered it when copied."""

    def __init__(self, vae: AutoencoderKL):
        self.decode = copy.deepcopy(torch.nn.Sequential(vae.post_quant_conv, vae.decoder)).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, z: Tensor) -> Tensor:
        if next(self.decode.parameters()).device != z.device:
            self.decode.to(z.device)
        return self.decode(z)
