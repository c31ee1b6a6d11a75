"""Training one uni-modal expert (text- or mask-driven latent diffusion), as thin Lightning glue."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.diffusion.schedule import NoiseSchedule
from ldm.models.common import freeze, step_generator
from ldm.modules.autoencoder import AutoencoderKL
from ldm.modules.expert import Expert

logger = logging.getLogger(__name__)


class LatentDiffusion(pl.LightningModule):
    """ε-prediction in the latent space of a frozen VAE, conditioned on one modality.

    Args:
        expert: the UNet and its condition encoder (both trained, as released).
        vae: the pre-trained autoencoder (frozen).
        cond_key: the batch key of this expert's condition (``text`` or ``seg_mask``).
        scale_factor: latents are multiplied by it before diffusion (0.058 at 256², 0.141 at 512²).
        learning_rate: the effective learning rate (the training script scales the base rate).
        seed: seeds the per-step generator that draws t, ε and the posterior sample.
    """

    checkpoint_kind = "ldm"  # what ldm.checkpoints.detect_kind calls this model's files

    def __init__(
        self,
        expert: Expert,
        vae: AutoencoderKL,
        cond_key: str,
        scale_factor: float,
        num_timesteps: int = 1000,
        linear_start: float = 0.0015,
        linear_end: float = 0.0195,
        learning_rate: float = 2.0e-6,
        weight_decay: float = 0.01,
        train_cond_encoder: bool = True,
        seed: int = 23,
    ):
        super().__init__()
        self.expert = expert
        self.vae = freeze(vae)
        self.cond_key = cond_key
        self.scale_factor = scale_factor
        self.schedule = NoiseSchedule(num_timesteps, linear_start, linear_end)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.seed = seed
        if not train_cond_encoder:
            freeze(self.expert.cond_encoder)
        self.train_cond_encoder = train_cond_encoder

    # ---- modalities, in the form the sampling pipeline takes -----------------------------------------
    @property
    def experts(self) -> dict[str, Expert]:
        return {self.cond_key: self.expert}

    @property
    def diffusers(self) -> dict[str, nn.Module]:
        return {}

    def train(self, mode: bool = True) -> "LatentDiffusion":
        super().train(mode)
        self.vae.eval()  # frozen parts stay in eval mode under Lightning's .train()
        if not self.train_cond_encoder:
            self.expert.cond_encoder.eval()
        return self

    # ---- latents --------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        posterior = self.vae.encode(images)
        return posterior.sample(generator=generator) * self.scale_factor  # [B, 3, 64, 64]

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scale_factor)

    # ---- training -------------------------------------------------------------------------------------
    def diffusion_loss(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        images = batch["image"]
        x0 = self.encode_images(images, generator)
        t = self.schedule.sample_timesteps(x0.shape[0], generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.schedule.q_sample(x0, t, noise)
        context = self.expert.encode(batch[self.cond_key])  # [B, N, 640]
        return F.mse_loss(self.expert(x_t, t, context).float(), noise.float())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        generator = step_generator(self.seed, self.global_step, self.global_rank, self.device)
        loss = self.diffusion_loss(batch, generator)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        generator = step_generator(self.seed + 1, batch_idx, self.global_rank, self.device)
        loss = self.diffusion_loss(batch, generator)
        self.log("val/loss", loss, sync_dist=True, batch_size=batch["image"].shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.expert.parameters() if p.requires_grad]
        logger.info("training %d expert parameters at lr %.3g", sum(p.numel() for p in params), self.learning_rate)
        return torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)
