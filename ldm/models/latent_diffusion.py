"""Training one uni-modal expert (text- or mask-driven latent diffusion), as thin Lightning glue."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from ldm.diffusion.schedule import min_snr_weight
from ldm.errors import ConfigError
from ldm.models.common import BatchShard, LatentDiffusionBase, check_expert_schedule, freeze
from ldm.modules.autoencoder import AutoencoderKL
from ldm.modules.expert import Expert

logger = logging.getLogger(__name__)


class LatentDiffusion(LatentDiffusionBase):
    """Diffusion in the latent space of a frozen VAE, conditioned on one modality.

    Args:
        expert: the UNet and its condition encoder (both trained, as released).
        vae: the pre-trained autoencoder (frozen).
        cond_key: the batch key of this expert's condition (``text`` or ``seg_mask``).
        scale_factor: latents are multiplied by it before diffusion (0.058 at 256², 0.141 at 512²).
        learning_rate: the effective learning rate (the training script scales the base rate).
        seed: seeds the per-step generator that draws t, ε and the posterior sample.
        min_snr_gamma: ``null`` (released): the plain mean squared error of the expert's own target (ε, or v
            for a v-predicting expert); a number γ weights each sample by min-SNR-γ
            (:func:`ldm.diffusion.schedule.min_snr_weight`).
        timestep_logit_std: ``null`` (released): training timesteps uniform in [0, T); a number s draws them
            logit-normal, t = ⌊T·sigmoid(m + s·n)⌋ with m = ``timestep_logit_mean``, which trains the middle
            timesteps (where the caption's and the mask's effect on the noise is largest) more often
            (:meth:`ldm.diffusion.schedule.NoiseSchedule.sample_timesteps`).
        cond_encoder_lr_scale: 1 (released): one learning rate for the UNet and the condition encoder; a
            factor s trains the condition encoder at s × the UNet's rate (its own parameter group, which the
            learning-rate schedule scales like the UNet's).
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
        min_snr_gamma: float | None = None,
        cond_encoder_lr_scale: float = 1.0,
        timestep_logit_mean: float = 0.0,
        timestep_logit_std: float | None = None,
    ):
        if timestep_logit_std is not None and not timestep_logit_std > 0:
            raise ConfigError(f"LatentDiffusion: timestep_logit_std must be positive or null, got {timestep_logit_std}")
        if timestep_logit_std is None and timestep_logit_mean != 0.0:
            raise ConfigError("LatentDiffusion: timestep_logit_mean needs timestep_logit_std (null keeps the uniform timesteps)")
        logit_normal = None if timestep_logit_std is None else (float(timestep_logit_mean), float(timestep_logit_std))
        super().__init__(vae, scale_factor, num_timesteps, linear_start, linear_end, learning_rate, weight_decay, seed, logit_normal)
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ConfigError(f"LatentDiffusion: min_snr_gamma must be positive or null, got {min_snr_gamma}")
        if cond_encoder_lr_scale <= 0:
            raise ConfigError(f"LatentDiffusion: cond_encoder_lr_scale must be positive, got {cond_encoder_lr_scale}")
        if cond_encoder_lr_scale != 1.0 and not train_cond_encoder:
            raise ConfigError(
                "LatentDiffusion: cond_encoder_lr_scale needs a trained condition encoder; "
                "set train_cond_encoder: true or leave the scale at 1"
            )
        check_expert_schedule(expert, self.schedule, "LatentDiffusion")
        self.expert = expert
        self.cond_key = cond_key
        self.min_snr_gamma = min_snr_gamma
        self.train_cond_encoder = train_cond_encoder
        self.cond_encoder_lr_scale = cond_encoder_lr_scale
        if not train_cond_encoder:
            freeze(self.expert.cond_encoder)

    # ---- modalities, in the form the sampling pipeline takes -----------------------------------------
    @property
    def experts(self) -> dict[str, Expert]:
        return {self.cond_key: self.expert}

    @property
    def diffusers(self) -> dict[str, nn.Module]:
        return {}

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae] + ([] if self.train_cond_encoder else [self.expert.cond_encoder])

    # ---- training -------------------------------------------------------------------------------------
    def diffusion_loss(self, batch: dict[str, Any], generator: torch.Generator, shard: BatchShard = BatchShard()) -> torch.Tensor:
        """‖target − f_θ(x_t, t, c)‖² for the batch's images and conditions (target ε, or v for a v-expert),
        optionally min-SNR weighted per sample."""
        x_t, t, noise, x0 = self.noisy_latents(batch, generator, shard)
        context = self.expert.encode(batch[self.cond_key])  # [B, N, 640]
        error = (self.expert.predict(x_t, t, context).float() - self.expert.target(x0, noise, t).float()) ** 2
        if self.min_snr_gamma is None:
            return error.mean()
        weight = min_snr_weight(self.schedule.snr(t), self.min_snr_gamma, self.expert.prediction)  # [B]
        return (weight * error.mean(dim=(1, 2, 3))).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.expert.parameters() if p.requires_grad]
        logger.info("training %d expert parameters at lr %.3g", sum(p.numel() for p in params), self.learning_rate)
        if self.cond_encoder_lr_scale == 1.0:  # the released optimiser: one group
            return torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay, **self.optimizer_options())
        encoder = {id(p) for p in self.expert.cond_encoder.parameters()}
        groups = [
            {"params": [p for p in params if id(p) not in encoder], "lr": self.learning_rate, "name": "unet"},
            {"params": [p for p in params if id(p) in encoder], "lr": self.learning_rate * self.cond_encoder_lr_scale, "name": "cond_encoder"},
        ]
        logger.info("condition encoder at lr %.3g (%g x)", groups[1]["lr"], self.cond_encoder_lr_scale)
        return torch.optim.AdamW(groups, lr=self.learning_rate, weight_decay=self.weight_decay, **self.optimizer_options())
