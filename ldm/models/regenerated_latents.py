"""Latents like a sampler's, each paired with the training image it came from, to train a VAE decoder on.

A decoder trained only on the encoder's posterior latents renders a sampler's latents smoother than real images:
generated latents lie off the encoder's manifold in ways the decoder never saw (on FaceWorld, samples decode to
0.55-0.67x the real images' high-frequency energy while reconstructions reach 0.94x). :class:`RegeneratedLatents`
makes training latents with the sampler's statistics that still show a known image: a fraction of the batch's
posterior latents z0 is noised to a random strength s and denoised again by the frozen diffusion model (SDEdit),
conditioned on the image's own mask and caption. The decoder is then trained on them against that image
(:class:`ldm.models.autoencoder_module.AutoencoderModule`, ``regenerate``). At small s the result is the image,
re-drawn; the encoder is untouched, so every diffusion model trained on its latents stays valid.

The frozen model is held outside the Lightning module's state (it is not trained and not saved with the decoder)
and follows the latents to their device at the first call.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
from torch import Tensor

from ldm.config import instantiate, load_config, loads_weights
from ldm.diffusion.collaborative import PAPER
from ldm.diffusion.samplers import SamplerOptions, partial_start, run_sampler
from ldm.errors import ConfigError, DataError
from ldm.pipeline import load_model, make_eps_fn

# method -> the batch keys (= modalities) its eps_fn reads
METHODS = {"collaborative": ("seg_mask", "text"), "composable": ("seg_mask", "text"), "mask": ("seg_mask",), "text": ("text",)}


class RegeneratedLatents:
    def __init__(
        self,
        model: nn.Module,
        fraction: float = 0.5,
        strength: list[float] = [0.05, 0.7],  # noqa: B006 (never mutated)
        steps: int = 20,
        methods: list[str] = ["collaborative", "mask", "text"],  # noqa: B006
        adversarial_rows_only: bool = False,
        anchor: bool = False,
    ):
        """``model``: a frozen latent or collaborative diffusion model (e.g. :func:`pretrained_model` of the
        collaborative run) with the experts the ``methods`` need; its ``scale_factor`` maps VAE latents to its own.

        ``fraction``: the share of each batch regenerated (the first rows; the rest stay posterior samples, so the
        decoder keeps rendering real latents). ``strength``: [low, high] of the uniform draw of s (one per batch).
        ``steps``: DDIM steps over the whole range (eta 1, as the evaluation samples), so s x steps run.
        ``methods``: cycled over the training steps, one per batch (``collaborative``, ``composable``, ``mask``,
        ``text``), so the decoder sees every sampler's latents.

        ``adversarial_rows_only``: the discriminator judges only the re-drawn rows (false: every row).
        ``anchor``: the kept posterior rows' pixel target is not the image but the decoder *as given* rendering the
        same latent, so the decoder keeps rendering the encoder's latents as it did (the reconstructions do not
        drift) while it learns the sampler's; :class:`ldm.models.autoencoder_module.AutoencoderModule` keeps the
        frozen copy. Together (recipe section 24): the samples sharpen and the VAE ceiling holds."""
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"RegeneratedLatents: fraction must be in (0, 1], got {fraction}")
        low, high = (float(s) for s in strength)
        if not 0.0 < low <= high < 1.0:
            raise ConfigError(f"RegeneratedLatents: strength must be [low, high] with 0 < low <= high < 1, got {list(strength)}")
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ConfigError(f"RegeneratedLatents: unknown methods {unknown or '(none)'}; choose from {sorted(METHODS)}")
        experts = getattr(model, "experts", None)
        if experts is None:
            raise ConfigError(f"RegeneratedLatents needs a diffusion model with experts, got a {type(model).__name__}")
        missing = sorted({k for m in methods for k in METHODS[m]} - set(experts))
        if missing:
            raise ConfigError(f"RegeneratedLatents: methods {list(methods)} need experts {missing}, which the model lacks")
        if "collaborative" in methods and set(getattr(model, "diffusers", {})) != set(experts):
            raise ConfigError("RegeneratedLatents: method collaborative needs a collaborative model (dynamic diffusers)")
        self.model = model.eval().requires_grad_(False)
        self.fraction = float(fraction)
        self.strength = (low, high)
        self.sampling = SamplerOptions("ddim", steps, None, 1.0)
        self.methods = list(methods)
        self.adversarial_rows_only = bool(adversarial_rows_only)
        self.anchor = bool(anchor)

    def count(self, batch_size: int) -> int:
        """How many rows of a batch are re-drawn (the first ones)."""
        return max(1, round(self.fraction * batch_size))

    def keys(self) -> list[str]:
        """The batch keys the methods condition on."""
        return sorted({k for m in self.methods for k in METHODS[m]})

    @torch.no_grad()
    def __call__(self, z: Tensor, batch: dict[str, Any], generator: torch.Generator, step: int) -> Tensor:
        """``z`` [B, C, h, w] (VAE latents, unscaled) with its first :meth:`count` rows regenerated; ``step`` picks
        the method."""
        absent = [k for k in self.keys() if k not in batch]
        if absent:
            raise DataError(f"RegeneratedLatents ({', '.join(self.methods)}) needs batch keys {absent}; add them to the "
                            "training data's keys")
        method = self.methods[step % len(self.methods)]
        keys = METHODS[method]
        count = self.count(z.shape[0])
        model = self.model
        if next(model.parameters()).device != z.device:
            model.to(z.device)
        conditions = {k: batch[k][:count] for k in keys}
        contexts = {k: model.experts[k].encode(v if torch.is_tensor(v) else list(v)) for k, v in conditions.items()}
        low, high = self.strength
        strength = low + (high - low) * float(torch.rand((), generator=generator, device=generator.device))
        timesteps = self.sampling.timesteps(model.schedule)
        x_t, timesteps = partial_start(z[:count] * model.scale_factor, timesteps, model.schedule, strength, generator)
        eps_fn = make_eps_fn(model, contexts, method=method, options=PAPER)  # the evaluation's preset
        regenerated = run_sampler(self.sampling.sampler, eps_fn, x_t, model.schedule, timesteps,
                                  eta=self.sampling.resolved_eta, generator=generator)
        return torch.cat([regenerated.to(z.dtype) / model.scale_factor, z[count:]])


@loads_weights
def pretrained_model(config: str, ckpt: Optional[str] = None, load_weights: bool = True) -> nn.Module:
    """The whole model of another config with its checkpoint, for a config node (e.g. the frozen collaborative model
    of :class:`RegeneratedLatents`); see :func:`ldm.pipeline.load_model`. ``load_weights=False`` reads no file."""
    if not load_weights:
        return instantiate(load_config(config).model, load_weights=False)
    if ckpt is None:
        raise ConfigError(f"pretrained_model({config}) needs a ckpt: the checkpoint of that config's model")
    return load_model(config, ckpt)
