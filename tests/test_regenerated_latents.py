"""RegeneratedLatents (latents a frozen diffusion model re-drew from the encoder's, to train a VAE decoder on)
and the VAE trainer's ``regenerate`` option, on the tiny chain."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ldm.checkpoints import load_state_dict
from ldm.data.celeba import PreprocessedFaces
from ldm.errors import ConfigError, DataError
from ldm.models.regenerated_latents import RegeneratedLatents, pretrained_model

from conftest import script


def codiff(chain):
    run = chain["root"] / "runs" / "codiff" / "checkpoints"
    return pretrained_model(str(run / "config.yaml"), str(run / "last.ckpt"))


def batch_of(chain, n=4):
    data = PreprocessedFaces(str(chain["data"]), split="train", resolution=32, keys=["image", "text", "seg_mask"])
    items = [data[i] for i in range(n)]
    return {"image": torch.stack([x["image"] for x in items]), "text": [x["text"] for x in items],
            "seg_mask": torch.stack([x["seg_mask"] for x in items])}


def test_regenerates_the_first_rows_deterministically(tiny_chain):
    model = codiff(tiny_chain)
    batch = batch_of(tiny_chain)
    z = model.vae.encode(batch["image"]).mean  # [4, C, h, w], unscaled
    regenerate = RegeneratedLatents(model, fraction=0.5, strength=[0.3, 0.6], steps=10)
    first = regenerate(z, batch, torch.Generator().manual_seed(0), step=0)  # collaborative
    assert first.shape == z.shape
    assert torch.equal(first[2:], z[2:])  # the posterior rows are kept
    assert not torch.allclose(first[:2], z[:2])  # the first half is re-drawn
    again = regenerate(z, batch, torch.Generator().manual_seed(0), step=0)
    assert torch.equal(first, again)  # all randomness comes from the generator
    other = regenerate(z, batch, torch.Generator().manual_seed(0), step=1)  # the next method: mask-only
    assert not torch.equal(first[:2], other[:2])
    # a weak strength keeps the latent close, a strong one moves it further
    weak = RegeneratedLatents(model, fraction=1.0, strength=[0.06, 0.06], steps=20)(z, batch, torch.Generator().manual_seed(0), 0)
    strong = RegeneratedLatents(model, fraction=1.0, strength=[0.9, 0.9], steps=20)(z, batch, torch.Generator().manual_seed(0), 0)
    assert (weak - z).abs().mean() < (strong - z).abs().mean()
    assert regenerate.keys() == ["seg_mask", "text"]


@pytest.mark.parametrize("kwargs, message", [
    ({"fraction": 0.0}, "fraction must be in (0, 1]"),
    ({"strength": [0.5, 0.2]}, "0 < low <= high < 1"),
    ({"strength": [0.1, 1.0]}, "0 < low <= high < 1"),
    ({"methods": ["sketch"]}, "unknown methods ['sketch']"),
    ({"methods": []}, "unknown methods (none)"),
])
def test_bad_settings_fail_at_build(tiny_chain, kwargs, message):
    with pytest.raises(ConfigError) as err:
        RegeneratedLatents(codiff(tiny_chain), **kwargs)
    assert message in str(err.value)


def test_a_batch_without_the_condition_names_the_key(tiny_chain):
    model = codiff(tiny_chain)
    batch = batch_of(tiny_chain)
    z = model.vae.encode(batch["image"]).mean
    with pytest.raises(DataError, match=r"needs batch keys \['text'\]"):
        RegeneratedLatents(model, methods=["text"])(z, {"image": batch["image"]}, torch.Generator(), 0)


def decoder_config(chain, tmp_path, **params):
    """configs/tiny/vae.yaml as a decoder stage over the tiny chain's VAE, with a RegeneratedLatents."""
    run = chain["root"] / "runs" / "codiff" / "checkpoints"
    config = OmegaConf.load("configs/tiny/vae.yaml")
    config.model.params.vae = {"target": "ldm.checkpoints.pretrained",
                               "params": {"config": "configs/tiny/vae.yaml", "component": "vae", "ckpt": str(chain["ckpt"]["vae"])}}
    config.model.params.train_decoder_only = True
    config.model.params.regenerate = {"target": "ldm.models.regenerated_latents.RegeneratedLatents", "params": {
        "model": {"target": "ldm.models.regenerated_latents.pretrained_model",
                  "params": {"config": str(run / "config.yaml"), "ckpt": str(run / "last.ckpt")}},
        "fraction": 0.5, "strength": [0.2, 0.5], "steps": 10}}
    config.data.train.params.keys = ["image", "text", "seg_mask"]
    for key, value in params.items():
        OmegaConf.update(config, key, value)
    path = tmp_path / "decoder.yaml"
    OmegaConf.save(config, path)
    return path


def train(chain, config, run, steps=2, extra=()):
    return script("train_vae").main(["--config", str(config), "--accelerator", "cpu", "--devices", "1", "--max-steps", str(steps),
                                     "--run-dir", str(run), f"data.train.params.root={chain['data']}", *extra])


def test_decoder_stage_trains_the_decoder_on_regenerated_latents(tiny_chain, tmp_path):
    config = decoder_config(tiny_chain, tmp_path)
    assert train(tiny_chain, config, tmp_path / "a") == 0
    assert train(tiny_chain, config, tmp_path / "b") == 0
    given = load_state_dict(tiny_chain["ckpt"]["vae"])
    a, b = (load_state_dict(tmp_path / r / "checkpoints" / "last.ckpt") for r in ("a", "b"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # seeded: the same run twice
    assert not any(k.startswith("regenerate.") for k in a)  # the frozen diffusion model is not saved with the VAE
    encoder = [k for k in given if k.startswith(("vae.encoder.", "vae.quant_conv."))]
    assert encoder and all(torch.equal(a[k], given[k]) for k in encoder)
    assert not torch.equal(a["vae.decoder.conv_out.weight"], given["vae.decoder.conv_out.weight"])
    # it changes what the decoder learns: the same run on posterior latents only ends elsewhere
    assert train(tiny_chain, config, tmp_path / "c", extra=["model.params.regenerate=null"]) == 0
    c = load_state_dict(tmp_path / "c" / "checkpoints" / "last.ckpt")
    assert not torch.equal(a["vae.decoder.conv_out.weight"], c["vae.decoder.conv_out.weight"])


@pytest.mark.parametrize("override, message", [
    ("model.params.train_decoder_only=false", "set train_decoder_only: true"),
    ("model.params.train_crop=16", "set train_crop: null"),
])
def test_decoder_stage_settings_that_cannot_work_fail_before_training(tiny_chain, tmp_path, capsys, override, message):
    config = decoder_config(tiny_chain, tmp_path)
    assert train(tiny_chain, config, tmp_path / "run", extra=[override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_decoder_stage_without_the_condition_keys_names_them(tiny_chain, tmp_path, capsys):
    config = decoder_config(tiny_chain, tmp_path, **{"data.train.params.keys": ["image"]})
    assert train(tiny_chain, config, tmp_path / "run") == 2
    assert "needs batch keys ['seg_mask', 'text']" in capsys.readouterr().err


def test_anchored_adversarial_stage_trains_and_keeps_the_given_decoder_out_of_the_state(tiny_chain, tmp_path):
    """regenerate.anchor: the posterior rows' target is the decoder as given (a frozen copy, not in the checkpoint);
    adversarial_rows_only: the discriminator judges only the re-drawn rows."""
    from ldm.config import instantiate, load_config

    config = decoder_config(tiny_chain, tmp_path, **{"model.params.regenerate.params.anchor": True,
                                                     "model.params.regenerate.params.adversarial_rows_only": True})
    module = instantiate(load_config(config).model)
    z = torch.randn(2, *module.vae.latent_shape)
    given = module.vae.decode(z).detach()
    with torch.no_grad():
        module.vae.decoder.conv_out.weight.add_(1.0)  # as if trained
    assert torch.equal(module.anchor(z), given) and not torch.equal(module.vae.decode(z), given)
    assert not any(k.startswith("anchor") for k in module.state_dict())
    assert train(tiny_chain, config, tmp_path / "run") == 0
    trained = load_state_dict(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert not any(k.startswith(("anchor", "regenerate")) for k in trained)
    assert not torch.equal(trained["vae.decoder.conv_out.weight"], load_state_dict(tiny_chain["ckpt"]["vae"])["vae.decoder.conv_out.weight"])


def test_gan_terms_judge_only_the_adversarial_rows():
    from ldm.modules.discriminator import NLayerDiscriminator
    from ldm.modules.vae_loss import VAELoss

    torch.manual_seed(0)
    loss = VAELoss(perceptual=None, discriminator=NLayerDiscriminator(input_nc=3, ndf=8, n_layers=1), disc_start=0,
                   perceptual_weight=0.0, kl_weight=0.0)
    x, recon = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)

    class Posterior:
        def kl(self):
            return torch.zeros(4)

    _, first_two = loss.generator_loss(x, recon, Posterior(), 0, adversarial_rows=2)
    _, all_rows = loss.generator_loss(x, recon, Posterior(), 0)
    _, only_two = loss.generator_loss(x[:2], recon[:2], Posterior(), 0)
    assert torch.equal(first_two["g_loss"], only_two["g_loss"]) and not torch.equal(first_two["g_loss"], all_rows["g_loss"])
    assert torch.equal(first_two["nll_loss"], all_rows["nll_loss"])  # the pixel loss still covers every row
    _, d_two = loss.discriminator_loss(x, recon, 0, adversarial_rows=2)
    assert torch.equal(d_two["logits_fake"], loss.discriminator(recon[:2]).mean())
    assert torch.equal(d_two["logits_real"], loss.discriminator(x).mean())
