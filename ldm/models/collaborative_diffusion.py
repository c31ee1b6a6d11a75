"""Training the dynamic diffusers over frozen uni-modal experts, as thin Lightning glue."""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
import torch.nn as nn

from ldm.diffusion.collaborative import collaborative_loss
from ldm.diffusion.schedule import LOSS_SPACES, loss_space_weight
from ldm.errors import ConfigError
from ldm.models.common import BatchShard, LatentDiffusionBase, check_expert_schedule, freeze
from ldm.modules.autoencoder import AutoencoderKL
from ldm.modules.dynamic_diffuser import DynamicDiffuser
from ldm.modules.expert import Expert

logger = logging.getLogger(__name__)


class CollaborativeDiffusion(LatentDiffusionBase):
    """Collaborative Diffusion: frozen experts ε_θm, trainable dynamic diffusers D_φm.

    At each step, for every modality m: ε_m = expert_m(x_t, t, c_m) (frozen) and the influence logits
    I_m = D_φm(x_t, t, c_m); w = softmax_m(I) at every pixel; loss = ‖Σ_m w_m ε_m − ε‖². Only the
    diffusers train. Works for any number of modalities (keys of ``experts`` = keys of ``diffusers`` =
    batch keys of the conditions).

    ``loss_space``: ``"eps"`` (released: the error of the combined noise prediction), ``"v"`` or ``"x0"``: the
    same combination's error measured in v or x_0 (each sample's ε-error weighted by 1/ᾱ_t or 1/SNR_t,
    :func:`ldm.diffusion.schedule.loss_space_weight`), which gives the large timesteps their share of the loss.
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
        loss_space: str = "eps",
    ):
        super().__init__(vae, scale_factor, num_timesteps, linear_start, linear_end, learning_rate, weight_decay, seed)
        if loss_space not in LOSS_SPACES:
            raise ConfigError(f"CollaborativeDiffusion: loss_space must be one of {list(LOSS_SPACES)}, got {loss_space!r}")
        self.loss_space = loss_space
        if set(experts) != set(diffusers) or not experts:
            raise ConfigError(
                f"experts {sorted(experts)} and diffusers {sorted(diffusers)} must name the same modalities"
            )
        for m, e in experts.items():
            check_expert_schedule(e, self.schedule, f"CollaborativeDiffusion expert {m!r}")
        self.experts = nn.ModuleDict({m: freeze(e) for m, e in experts.items()})
        self.diffusers = nn.ModuleDict(dict(diffusers))

    @property
    def modalities(self) -> list[str]:
        return list(self.experts)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.experts]

    # ---- training -------------------------------------------------------------------------------------
    def diffusion_loss(self, batch: dict[str, Any], generator: torch.Generator, shard: BatchShard = BatchShard()) -> torch.Tensor:
        """‖Σ_m w_m ε_m − ε‖² with w = softmax_m(D_φm(x_t, t, c_m)) per pixel (each sample weighted for
        ``loss_space``); experts frozen."""
        x_t, t, noise, _ = self.noisy_latents(batch, generator, shard)
        eps, logits = {}, {}
        for m in self.modalities:
            with torch.no_grad():
                context = self.experts[m].encode(batch[m])  # [B, N, 640]
                eps[m] = self.experts[m](x_t, t, context)  # [B, 3, H, W]
            logits[m] = self.diffusers[m](x_t, t, context)  # [B, 1, H, W]
        weight = None if self.loss_space == "eps" else loss_space_weight(self.schedule, t, self.loss_space)  # [B]
        return collaborative_loss(eps, logits, noise, weight)

    def trainable_parameters(self) -> list[nn.Parameter]:
        trainable = [p for p in self.parameters() if p.requires_grad]
        diffuser_ids = {id(p) for p in self.diffusers.parameters()}
        assert all(id(p) in diffuser_ids for p in trainable), "only the dynamic diffusers may train"
        return trainable

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.trainable_parameters()
        logger.info("training %d diffuser parameters at lr %.3g", sum(p.numel() for p in params), self.learning_rate)
        return torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay, **self.optimizer_options())
