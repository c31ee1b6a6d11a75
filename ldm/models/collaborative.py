"""Training the dynamic diffusers over frozen uni-modal experts, as thin Lightning glue."""

from __future__ import annotations

import logging
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
import torch.nn as nn

from ldm.diffusion.collaborative import collaborative_loss
from ldm.diffusion.schedule import NoiseSchedule
from ldm.errors import ConfigError
from ldm.models.common import freeze, step_generator
from ldm.modules.autoencoder import AutoencoderKL
from ldm.modules.dynamic_diffuser import DynamicDiffuser
from ldm.modules.expert import Expert

logger = logging.getLogger(__name__)


class CollaborativeDiffusion(pl.LightningModule):
    """Collaborative Diffusion: frozen experts ε_θm, trainable dynamic diffusers D_φm.

    At each step, for every modality m: ε_m = expert_m(x_t, t, c_m) (frozen) and the influence logits
    I_m = D_φm(x_t, t, c_m); w = softmax_m(I) at every pixel; loss = ‖Σ_m w_m ε_m − ε‖². Only the
    diffusers train. Works for any number of modalities (keys of ``experts`` = keys of ``diffusers`` =
    batch keys of the conditions).
    """

    checkpoint_kind = "collaborative"  # what ldm.checkpoints.detect_kind calls this model's files

    def __init__(
        self,
        experts: Mapping[str, Expert],
        diffusers: Mapping[str, DynamicDiffuser],
        vae: AutoencoderKL,
        scale_factor: float,
        num_timesteps: int = 1000,
        linear_start: float = 0.0015,
        linear_end: float = 0.0195,
        learning_rate: float = 6.4e-5,
        weight_decay: float = 0.01,
        seed: int = 23,
    ):
        super().__init__()
        if set(experts) != set(diffusers) or not experts:
            raise ConfigError(
                f"experts {sorted(experts)} and diffusers {sorted(diffusers)} must name the same modalities"
            )
        self.experts = nn.ModuleDict({m: freeze(e) for m, e in experts.items()})
        self.diffusers = nn.ModuleDict(dict(diffusers))
        self.vae = freeze(vae)
        self.scale_factor = scale_factor
        self.schedule = NoiseSchedule(num_timesteps, linear_start, linear_end)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.seed = seed

    @property
    def modalities(self) -> list[str]:
        return list(self.experts)

    def train(self, mode: bool = True) -> "CollaborativeDiffusion":
        super().train(mode)
        self.experts.eval()
        self.vae.eval()
        return self

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.vae.encode(images).sample(generator=generator) * self.scale_factor

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scale_factor)

    # ---- training -------------------------------------------------------------------------------------
    def diffusion_loss(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        x0 = self.encode_images(batch["image"], generator)
        t = self.schedule.sample_timesteps(x0.shape[0], generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.schedule.q_sample(x0, t, noise)
        eps, logits = {}, {}
        for m in self.modalities:
            with torch.no_grad():
                context = self.experts[m].encode(batch[m])  # [B, N, 640]
                eps[m] = self.experts[m](x_t, t, context)  # [B, 3, H, W]
            logits[m] = self.diffusers[m](x_t, t, context)  # [B, 1, H, W]
        return collaborative_loss(eps, logits, noise)

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

    def trainable_parameters(self) -> list[nn.Parameter]:
        trainable = [p for p in self.parameters() if p.requires_grad]
        diffuser_ids = {id(p) for p in self.diffusers.parameters()}
        assert all(id(p) in diffuser_ids for p in trainable), "only the dynamic diffusers may train"
        return trainable

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.trainable_parameters()
        logger.info("training %d diffuser parameters at lr %.3g", sum(p.numel() for p in params), self.learning_rate)
        return torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)
