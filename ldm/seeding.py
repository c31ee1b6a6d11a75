"""Every seed the package derives from (seed, purpose, indices), in one place.

A derived seed is a pure function of the run's seed, what it is for and the indices that tell its draws
apart (step, rank, batch, ...), so a resumed, sharded or repeated run draws exactly what the original drew.
Each purpose keeps the arithmetic it was introduced with: shipped results, training runs and tests depend on
the exact values (``tests/test_seeding.py`` pins them), so a purpose's scheme never changes; a new purpose
may use any scheme, ``"eval-batch"``'s SeedSequence being the default choice.

=====================  ==========================  ===============================================================
purpose                indices                     scheme
=====================  ==========================  ===============================================================
``"training-step"``    step, rank                  ``(seed * 0x9E3779B97F4A7C15 + step * 1_000_003 + rank * 7919)
                                                   mod (2**63 - 1)``: timesteps and noise of a training step
``"data-pass"``        pass                        ``seed * 100_003 + pass``: the shuffle of one pass over the data
``"vae-posterior"``    rank, micro_batch           ``blake2b("{seed}:{rank}:{micro_batch}", 8 bytes, little) >> 1``:
                                                   the VAE's posterior samples and crops
``"edit-stage"``       modality, stage             ``crc32("{seed}/{modality}/{stage}")``: an Imagic stage's t and ε
``"eval-batch"``       unit                        ``SeedSequence([seed, unit]).generate_state(1, uint64)[0] >> 1``:
                                                   x_T and the sampler's noise of one evaluation batch
=====================  ==========================  ===============================================================

:func:`numpy_rng` is the one numpy stream: FaceWorld draws sample ``i``'s factors and render noise from
``default_rng(SeedSequence(seed, spawn_key=(i, stream)))``.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Optional, Union

import numpy as np
import torch

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads (seed, step, rank) over the seed space


def _training_step(seed: int, step: int, rank: int) -> int:
    return (seed * _MIX + step * 1_000_003 + rank * 7919) % (2**63 - 1)


def _data_pass(seed: int, pass_index: int) -> int:
    return seed * 100_003 + pass_index


def _vae_posterior(seed: int, rank: int, micro_batch: int) -> int:
    key = f"{seed}:{rank}:{micro_batch}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def _edit_stage(seed: int, modality: str, stage: str) -> int:
    return zlib.crc32(f"{seed}/{modality}/{stage}".encode())


def _eval_batch(seed: int, unit: int) -> int:
    # shift a Python int: numpy 1.x has no uint64 >> int
    return int(np.random.SeedSequence([seed, unit]).generate_state(1, np.uint64)[0]) >> 1


SCHEMES = {
    "training-step": _training_step,
    "data-pass": _data_pass,
    "vae-posterior": _vae_posterior,
    "edit-stage": _edit_stage,
    "eval-batch": _eval_batch,
}


def derive_seed(seed: int, purpose: str, *indices: Union[int, str]) -> int:
    """The seed for ``purpose`` (a key of :data:`SCHEMES`, see the table above) at ``indices``."""
    try:
        scheme = SCHEMES[purpose]
    except KeyError:
        raise ValueError(f"unknown seed purpose {purpose!r}; use one of {sorted(SCHEMES)}") from None
    return scheme(int(seed), *indices)


def generator(seed: int, purpose: str, *indices: Union[int, str], device: Optional[Union[str, torch.device]] = None) -> torch.Generator:
    """A ``torch.Generator`` (CPU unless ``device``) seeded with :func:`derive_seed`."""
    g = torch.Generator() if device is None else torch.Generator(device=device)
    return g.manual_seed(derive_seed(seed, purpose, *indices))


def batch_seed(seed: int, unit: int) -> int:
    """The seed of global evaluation batch ``unit``: every method and every world size draws the same noise for it."""
    return derive_seed(seed, "eval-batch", unit)


def numpy_rng(seed: int, *spawn_key: int) -> np.random.Generator:
    """The numpy generator of child ``spawn_key`` of ``SeedSequence(seed)``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(spawn_key)))
