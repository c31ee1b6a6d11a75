"""The derived seeds keep their values: shipped results, training runs and tests depend on them."""

from __future__ import annotations

import pytest
import torch

from ldm.seeding import batch_seed, derive_seed, generator, numpy_rng


@pytest.mark.parametrize("purpose, seed, indices, value", [
    ("training-step", 0, (0, 0), 0),
    ("training-step", 1, (2, 3), 2177342782470446441),
    ("training-step", 1234, (10**6, 7), 2839731841296880248),
    ("data-pass", 7, (3,), 700024),
    ("vae-posterior", 0, (0, 0), 9044811311333822937),
    ("vae-posterior", 42, (1, 5), 1580363674348780530),
    ("edit-stage", 0, ("text", "embed"), 2201899395),
    ("edit-stage", 3, ("seg_mask", "finetune"), 3386346151),
    ("eval-batch", 0, (0,), 7896617691693857887),
    ("eval-batch", 1234, (7,), 6572324068835722780),
])
def test_derived_seeds_keep_their_values(purpose, seed, indices, value):
    assert derive_seed(seed, purpose, *indices) == value
    assert torch.equal(torch.randn(3, generator=generator(seed, purpose, *indices)),
                       torch.randn(3, generator=torch.Generator().manual_seed(value)))


def test_batch_seed_is_the_eval_batch_scheme():
    assert batch_seed(1234, 7) == derive_seed(1234, "eval-batch", 7)


def test_numpy_stream_keeps_its_values():
    assert numpy_rng(0, 0, 0).integers(0, 2**31) == 36989502
    assert numpy_rng(5, 17, 1).integers(0, 2**31) == 1671255516


def test_unknown_purpose_is_refused():
    with pytest.raises(ValueError, match="unknown seed purpose"):
        derive_seed(0, "nope", 1)
