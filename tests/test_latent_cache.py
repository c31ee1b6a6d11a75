"""train.cache_latents: each training image is encoded once by the frozen VAE; the run draws what the
uncached run draws (the posterior sample still comes from each step's generator)."""

from __future__ import annotations

import pytest
import torch

from ldm.errors import ConfigError
from ldm.models.latent_cache import IndexedSamples, LatentCache, check_cacheable

from conftest import script
from test_training import logged_losses, one_error_line, tiny, train_args  # noqa: F401 (fixture)


class CountingEncoder:
    """mean = image sums per channel, std = 1 + mean; counts the images it was asked to encode."""

    def __init__(self):
        self.seen = 0

    def __call__(self, images):
        self.seen += images.shape[0]
        mean = images.sum(dim=(2, 3), keepdim=True).expand(-1, -1, 2, 2).clone()
        return mean, 1.0 + mean.abs()


def test_cache_encodes_each_image_once_and_returns_its_moments():
    images = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    encode, cache = CountingEncoder(), LatentCache(6)
    first = torch.tensor([0, 2, 4])
    mean, std = cache.moments(first, images[first], encode)
    assert encode.seen == 3 and cache.num_filled == 3
    again = torch.tensor([4, 1, 0, 5])  # two known, two new
    mean2, std2 = cache.moments(again, images[again], encode)
    assert encode.seen == 5 and cache.num_filled == 5
    want_mean, want_std = CountingEncoder()(images[again])
    assert torch.equal(mean2, want_mean) and torch.equal(std2, want_std)
    assert torch.equal(mean2[0], mean[2]) and torch.equal(mean2[2], mean[0])
    with pytest.raises(ValueError, match="out of range"):
        cache.moments(torch.tensor([6]), images[:1], encode)


def test_indexed_samples_add_the_position():
    data = [{"image": torch.zeros(1)}, {"image": torch.ones(1)}]
    indexed = IndexedSamples(data)
    assert len(indexed) == 2 and indexed[1]["index"] == 1 and "index" not in data[1]


def test_a_flipping_training_set_is_refused():
    class Flipping:
        flip = True

    with pytest.raises(ConfigError, match="flip"):
        check_cacheable(Flipping())
    check_cacheable([])  # no flip attribute: nothing random to refuse


def test_cached_training_matches_uncached(tiny, tmp_path):
    """8 steps of batch 4 over 24 images: passes 2+ read the cache. Same losses and weights up to rounding."""
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    assert script("train_ldm").main(train_args(tiny, plain, 8, 8)) == 0
    assert script("train_ldm").main(train_args(tiny, cached, 8, 8, "train.cache_latents=true")) == 0
    a, b = logged_losses(plain), logged_losses(cached)
    assert sorted(a) == sorted(b) == list(range(8))
    assert all(b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6) for k in a)
    from ldm.checkpoints import load_state_dict

    wa, wb = load_state_dict(plain / "checkpoints" / "last.ckpt"), load_state_dict(cached / "checkpoints" / "last.ckpt")
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-5) for k in wa)


def test_cache_latents_on_a_vae_run_is_refused(tiny, tmp_path, capsys):
    argv = [
        "--config", "configs/tiny/vae.yaml", "--accelerator", "cpu", "--devices", "1", "--run-dir", str(tmp_path / "vae"),
        "--max-steps", "1", f"data.train.params.root={tiny['data']}", "train.cache_latents=true",
    ]
    assert script("train_vae").main(argv) == 2
    assert "cache_latents" in one_error_line(capsys.readouterr().err)


def test_cache_latents_with_flip_is_refused(tiny, tmp_path, capsys):
    argv = train_args(tiny, tmp_path / "flip", 1, 1, "train.cache_latents=true", "data.train.params.flip=true")
    assert script("train_ldm").main(argv) == 2
    assert "flip" in one_error_line(capsys.readouterr().err)


def test_model_reads_the_cache_and_draws_what_the_uncached_model_draws(tiny):
    """The second visit of an image does not touch the VAE, and x_t, t, ε, x0 equal the uncached draw."""
    from ldm.config import instantiate, load_config
    from ldm.data.celeba import PreprocessedFaces
    from ldm.models.common import step_generator

    cfg = load_config("configs/tiny/text.yaml", [f"model.params.vae.params.ckpt={tiny['vae']}"])
    model = instantiate(cfg.model, learning_rate=1e-4)
    data = IndexedSamples(PreprocessedFaces(tiny["data"], "train", resolution=32, keys=["image", "text"]))
    batch = torch.utils.data.default_collate([data[i] for i in (3, 0, 7)])
    want = model.noisy_latents(batch, step_generator(5, 0, 0, torch.device("cpu")))

    model.use_latent_cache(len(data))
    model.noisy_latents(batch, step_generator(5, 0, 0, torch.device("cpu")))  # fills the cache
    assert model.latent_cache.num_filled == 3

    def no_encoding(images):
        raise AssertionError("the VAE was called for a cached image")

    model.vae.encode = no_encoding
    got = model.noisy_latents(batch, step_generator(5, 0, 0, torch.device("cpu")))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=0, atol=1e-6)
