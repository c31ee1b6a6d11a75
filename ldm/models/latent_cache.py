"""Encode each training image once: the VAE is frozen while the experts and the dynamic diffusers train.

Every expert or diffuser step starts by encoding its batch with the frozen VAE (0.071 s of a 0.82 s FaceWorld
text-expert step on 2 CPU cores, docs/faceworld_recipe.md section 6). With ``train.cache_latents: true`` the training set
hands out sample indices (:class:`IndexedSamples`) and :class:`LatentCache` keeps the posterior's moments
(mean, std) of every image the first time it is seen; later passes read them back. The posterior *sample*
is still drawn at every step from the step's generator (``x0 = mean + std·n``), so a cached run draws
exactly what an uncached run draws; they differ only by float rounding, because an image encoded in another
batch can round differently.

Random augmentations (a flip) change the image between passes, so they cannot be cached:
:func:`check_cacheable` refuses a training set with ``flip`` on.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from ldm.errors import ConfigError

INDEX_KEY = "index"


class IndexedSamples(Dataset):
    """``dataset`` whose samples also carry their position (``sample["index"]``), the cache's key."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = dict(self.dataset[i])
        sample[INDEX_KEY] = i
        return sample


def check_cacheable(dataset: Dataset) -> None:
    """Raise ConfigError when the training set augments at random (its images change between passes)."""
    if getattr(dataset, "flip", False):
        raise ConfigError(
            "train.cache_latents is true but data.train flips images at random, so an image's latent changes "
            "between passes; set data.train.params.flip: false or train.cache_latents: false"
        )


class LatentCache:
    """The posterior moments (mean, std) of ``num_samples`` images, filled as batches arrive.

    Storage is allocated on the first batch's device and dtype: ``2 x num_samples x C x h x w`` floats
    (FaceWorld, 9,000 x 3 x 16 x 16: 55 MB; CelebA-HQ, 27,000 x 3 x 64 x 64: 2.7 GB)."""

    def __init__(self, num_samples: int):
        if num_samples < 1:
            raise ValueError(f"LatentCache needs at least one sample, got {num_samples}")
        self.num_samples = num_samples
        self.mean: torch.Tensor | None = None  # [N, C, h, w]
        self.std: torch.Tensor | None = None  # [N, C, h, w]
        self.filled: torch.Tensor | None = None  # [N] bool

    @property
    def num_filled(self) -> int:
        return 0 if self.filled is None else int(self.filled.sum())

    def moments(
        self, indices: torch.Tensor, images: torch.Tensor, encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) for the batch: encodes only the images not seen before (``encode(images[missing])``)."""
        indices = indices.to(images.device, torch.long)
        if indices.min() < 0 or indices.max() >= self.num_samples:
            raise ValueError(f"sample index out of range 0..{self.num_samples - 1}: {indices.tolist()}")
        if self.filled is None:
            missing = torch.ones_like(indices, dtype=torch.bool)
        else:
            missing = ~self.filled[indices]
        if bool(missing.any()):
            mean, std = encode(images[missing])
            if self.mean is None:
                shape = (self.num_samples, *mean.shape[1:])
                self.mean = mean.new_zeros(shape)
                self.std = std.new_zeros(shape)
                self.filled = torch.zeros(self.num_samples, dtype=torch.bool, device=mean.device)
            self.mean[indices[missing]] = mean
            self.std[indices[missing]] = std
            self.filled[indices[missing]] = True
        return self.mean[indices], self.std[indices]
