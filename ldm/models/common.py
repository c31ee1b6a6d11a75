"""Pieces shared by the Lightning modules."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn as nn

from ldm.diffusion.schedule import NoiseSchedule
from ldm import seeding
from ldm.errors import ConfigError
from ldm.models.latent_cache import INDEX_KEY, LatentCache


class AdamOptions:
    """Mixin of every training module: which implementation of Adam/AdamW its ``configure_optimizers`` builds.

    ``train.fused_optimizer: true`` (:func:`ldm.training.run` calls :meth:`use_fused_optimizer`) takes torch's
    fused kernel, one pass over all parameters instead of a few small kernels per tensor: the same algorithm
    up to float rounding, and the optimiser step of the FaceWorld text expert goes from 27 to 6 ms on a
    2-core CPU (docs/faceworld_recipe.md, section 20). Off by default: torch's own choice, as released.
    """

    fused_optimizer: bool = False

    def use_fused_optimizer(self) -> None:
        self.fused_optimizer = True

    def optimizer_options(self) -> dict[str, Any]:
        """Keyword arguments for ``torch.optim.Adam``/``AdamW``."""
        return {"fused": True} if self.fused_optimizer else {}


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """A generator for one training step, a pure function of (seed, step, rank).

    Training draws its timesteps and noise from it instead of the global RNG, so a run resumed at step
    k draws exactly what the uninterrupted run drew at step k, on any number of workers.
    """
    return seeding.generator(seed, "training-step", step, rank, device=device)


class BatchShard(NamedTuple):
    """The rows of the global batch one process holds: rank r of W holds rows r, r+W, r+2W, ... (as
    ``ldm.training.StepBatchSampler`` deals a global batch out).

    A training step draws each random tensor for the whole global batch from a generator that is the same on
    every rank and keeps this rank's rows, so W processes with batch b draw exactly what one process with
    batch W*b draws, and DDP trains to the same weights as one process with the same global batch.
    """

    rank: int = 0
    world_size: int = 1

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.rank :: self.world_size]

    def randn(self, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """N(0, I) shaped like ``like`` (this rank's rows of one draw for the global batch)."""
        shape = (like.shape[0] * self.world_size, *like.shape[1:])
        return self.rows(torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype))


class NoisyLatents(NamedTuple):
    """One training draw: x_t = q_sample(x0, t, noise)."""

    x_t: torch.Tensor  # [B, C, H, W]
    t: torch.Tensor  # [B] long
    noise: torch.Tensor  # ε, like x_t
    x0: torch.Tensor  # the scaled clean latent, like x_t


def check_expert_schedule(expert: nn.Module, schedule: NoiseSchedule, where: str) -> None:
    """A v-predicting expert converts with its own ᾱ_t: it must be the schedule the model trains and samples with."""
    theirs = expert.schedule
    if (theirs.num_timesteps, theirs.linear_start, theirs.linear_end) != (schedule.num_timesteps, schedule.linear_start, schedule.linear_end):
        raise ConfigError(
            f"{where}: the expert's schedule (num_timesteps {theirs.num_timesteps}, linear_start {theirs.linear_start}, "
            f"linear_end {theirs.linear_end}) differs from the model's ({schedule.num_timesteps}, {schedule.linear_start}, "
            f"{schedule.linear_end}); give the expert's schedule node the model's values"
        )


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients: for the frozen VAE and the frozen experts."""
    module.eval()
    module.requires_grad_(False)
    return module


class LatentDiffusionBase(AdamOptions, pl.LightningModule):
    """What the expert and the collaborative modules share: the frozen VAE, the latent scaling, the noise
    schedule, and steps that draw their randomness from :func:`step_generator`. A subclass defines
    ``diffusion_loss(batch, generator, shard=BatchShard())`` and ``configure_optimizers``."""

    def __init__(
        self,
        vae: nn.Module,
        scale_factor: float,
        num_timesteps: int,
        linear_start: float,
        linear_end: float,
        learning_rate: float,
        weight_decay: float,
        seed: int,
        timestep_logit_normal: tuple[float, float] | None = None,
    ):
        super().__init__()
        self.vae = freeze(vae)
        self.scale_factor = scale_factor
        self.schedule = NoiseSchedule(num_timesteps, linear_start, linear_end)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.seed = seed
        self.timestep_logit_normal = timestep_logit_normal  # None: t ~ U{0..T-1}, as released
        self.latent_cache: LatentCache | None = None  # see use_latent_cache

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that stay in eval mode when Lightning calls ``.train()``."""
        return [self.vae]

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.vae.encode(images).sample(generator=generator) * self.scale_factor  # [B, 3, 64, 64]

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scale_factor)

    def use_latent_cache(self, num_samples: int) -> None:
        """Keep the VAE posterior of each training image after its first encoding (``train.cache_latents``);
        batches must then carry ``index`` (:class:`ldm.models.latent_cache.IndexedSamples`)."""
        self.latent_cache = LatentCache(num_samples)

    @torch.no_grad()
    def posterior_moments(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of q(z | image) for the batch's images, from the latent cache when it is on."""

        def encode(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            posterior = self.vae.encode(images)
            return posterior.mean, posterior.std

        if self.latent_cache is None or INDEX_KEY not in batch:  # no cache, or a validation batch
            return encode(batch["image"])
        return self.latent_cache.moments(batch[INDEX_KEY], batch["image"], encode)

    def noisy_latents(self, batch: dict[str, Any], generator: torch.Generator, shard: BatchShard = BatchShard()) -> NoisyLatents:
        """x0 = E(image)·scale; t ~ U{0..T-1} (or logit-normal, see ``NoiseSchedule.sample_timesteps``); ε ~ N(0, I);
        x_t = q_sample(x0, t, ε).

        The posterior sample, t and ε are drawn for the global batch and ``shard`` keeps this rank's rows."""
        with torch.no_grad():
            mean, std = self.posterior_moments(batch)
            x0 = (mean + std * shard.randn(mean, generator)) * self.scale_factor
        t = shard.rows(self.schedule.sample_timesteps(x0.shape[0] * shard.world_size, generator, x0.device, self.timestep_logit_normal))
        noise = shard.randn(x0, generator)
        return NoisyLatents(self.schedule.q_sample(x0, t, noise), t, noise, x0)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # one generator for all ranks; each keeps its rows of the global batch's draws (see BatchShard)
        generator = step_generator(self.seed, self.global_step, 0, self.device)
        loss = self.diffusion_loss(batch, generator, BatchShard(self.global_rank, self.trainer.world_size))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # every rank evaluates the whole validation set with the same draws, so the synced loss is exact
        generator = step_generator(self.seed + 1, batch_idx, 0, self.device)
        loss = self.diffusion_loss(batch, generator)
        self.log("val/loss", loss, sync_dist=True, batch_size=batch["image"].shape[0])
        return loss
