"""First stage: AutoencoderKL, LPIPS, PatchGAN discriminator, VAE loss and its Lightning module.

Tiny CPU configs only; the paper-scale VAEs are built on the meta device to count parameters.
"""

import logging

import pytest
import pytorch_lightning as pl
import torch

from ldm.errors import CheckpointError, ConfigError
from ldm.models.autoencoder_module import AutoencoderModule
from ldm.modules import lpips as lpips_module
from ldm.modules.autoencoder import AutoencoderKL, DiagonalGaussian
from ldm.modules.discriminator import NLayerDiscriminator, hinge_loss
from ldm.modules.lpips import LPIPS, VGG16_CFG
from ldm.modules.vae_loss import VAELoss

TINY = dict(embed_dim=3, z_channels=3, ch=32, num_res_blocks=1, resolution=16)


def tiny_vae(ch_mult=(1, 2, 2)):
    torch.manual_seed(0)
    return AutoencoderKL(ch_mult=list(ch_mult), **TINY)


def count(module):
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------
# AutoencoderKL


@pytest.mark.parametrize("ch_mult, factor", [((1, 2, 2), 4), ((1, 2, 2, 2), 8)])
def test_encode_decode_shapes(ch_mult, factor):
    vae = tiny_vae(ch_mult)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    posterior = vae.encode(x)
    assert posterior.mean.shape == (2, 3, 16 // factor, 16 // factor)
    assert vae.decode(posterior.mode()).shape == (2, 3, 16, 16)
    out = vae(x, generator=torch.Generator().manual_seed(1))
    assert out.reconstruction.shape == x.shape and out.posterior is not None


@pytest.mark.parametrize(
    "ch_mult, resolution, expected",
    [([1, 2, 4], 256, 55_312_063), ([1, 2, 4, 4], 512, 83_639_999)],
)
def test_paper_vae_param_counts(ch_mult, resolution, expected):
    with torch.device("meta"):
        vae = AutoencoderKL(embed_dim=3, z_channels=3, ch=128, ch_mult=ch_mult, num_res_blocks=2,
                            resolution=resolution)
    total = count(vae)
    assert total == expected
    # FACTS.md: 55.3M (256) and 83.6M (512); quant_conv + post_quant_conv add only 54 parameters.
    target = 55.3e6 if resolution == 256 else 83.6e6
    assert abs(total - target) < 0.1e6
    assert total - count(vae.encoder) - count(vae.decoder) == 54


def test_released_key_layout():
    with torch.device("meta"):
        vae = AutoencoderKL(embed_dim=3, z_channels=3, ch=128, ch_mult=[1, 2, 4], num_res_blocks=2, resolution=256)
    keys = vae.state_dict()
    shapes = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.1.conv2.weight": (128, 128, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.1.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.weight": (6, 512, 3, 3),
        "quant_conv.weight": (6, 6, 1, 1),
        "post_quant_conv.weight": (3, 3, 1, 1),
        "decoder.conv_in.weight": (512, 3, 3, 3),
        "decoder.mid.block_2.norm2.bias": (512,),
        "decoder.up.2.block.2.conv1.weight": (512, 512, 3, 3),
        "decoder.up.2.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for key, shape in shapes.items():
        assert tuple(keys[key].shape) == shape, key
    assert "encoder.down.2.downsample.conv.weight" not in keys
    assert "decoder.up.0.upsample.conv.weight" not in keys
    assert "decoder.up.0.block.3.conv1.weight" not in keys
    assert not any(".attn." in k for k in keys)  # attention only in the mid block
    assert len(keys) == 204  # 88 encoder + 112 decoder + 4 quant convs


def test_attention_backends_agree():
    vae = tiny_vae()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    ref = vae(x, sample_posterior=False).reconstruction
    for module in vae.modules():
        if hasattr(module, "backend"):
            module.backend = "math"
    torch.testing.assert_close(vae(x, sample_posterior=False).reconstruction, ref, atol=1e-5, rtol=1e-4)


def test_diagonal_gaussian():
    moments = torch.cat([torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 50.0)], dim=1)
    posterior = DiagonalGaussian(moments)
    assert torch.all(posterior.logvar == 20.0)  # clamped
    standard = DiagonalGaussian(torch.zeros(2, 6, 4, 4))
    assert torch.allclose(standard.kl(), torch.zeros(2))
    a = standard.sample(torch.Generator().manual_seed(3))
    b = standard.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, standard.mode())
    shifted = DiagonalGaussian(torch.cat([torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)], dim=1))
    assert torch.allclose(shifted.kl(), torch.tensor([0.5 * 12]))


def test_double_z_required():
    with pytest.raises(ConfigError, match="double_z"):
        AutoencoderKL(double_z=False, ch_mult=[1, 2], **TINY)


# ----------------------------------------------------------------------------------------------
# LPIPS


def vgg_file_state():
    """torchvision's vgg16 state_dict layout, with tiny random values of the real shapes."""
    state, width, index = {}, 3, 0
    for item in VGG16_CFG:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, width, 3, 3) * 0.05
        state[f"features.{index}.bias"] = torch.randn(item) * 0.01
        width, index = item, index + 2
    state["classifier.0.weight"] = torch.zeros(1)  # ignored
    return state


def lin_file_state():
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate([64, 128, 256, 512, 512])}


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    """An empty torch hub cache and no network."""
    monkeypatch.setattr(lpips_module, "hub_checkpoint_dirs", lambda: [tmp_path / "hub" / "checkpoints"])
    monkeypatch.setattr(lpips_module, "lpips_package_files", lambda: [])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub" / "checkpoints"


def test_lpips_loads_standard_files(tmp_path, no_cache):
    vgg, lin = vgg_file_state(), lin_file_state()
    torch.save(vgg, tmp_path / "vgg16-397923af.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    model = LPIPS.from_pretrained(str(tmp_path / "vgg16-397923af.pth"), str(tmp_path / "vgg.pth"))
    state = model.state_dict()
    assert torch.equal(state["net.slice1.0.weight"], vgg["features.0.weight"])
    assert torch.equal(state["net.slice3.14.bias"], vgg["features.14.bias"])
    assert torch.equal(state["net.slice5.28.weight"], vgg["features.28.weight"])
    assert torch.equal(state["lin4.model.1.weight"], lin["lin4.model.1.weight"])
    assert not any(p.requires_grad for p in model.parameters()) and not model.training

    # The hub cache is found without explicit paths.
    no_cache.mkdir(parents=True)
    torch.save(vgg, no_cache / "vgg16-397923af.pth")
    torch.save(lin, no_cache / "lpips_vgg_v0.1.pth")
    cached = LPIPS.from_pretrained()
    assert torch.equal(cached.state_dict()["net.slice2.7.weight"], vgg["features.7.weight"])


def test_lpips_missing_file_message(tmp_path, no_cache):
    with pytest.raises(CheckpointError) as err:
        LPIPS.from_pretrained()
    message = str(err.value)
    assert str(no_cache / "vgg16-397923af.pth") in message and "https://download.pytorch.org" in message
    assert str(no_cache / "lpips_vgg_v0.1.pth") in message and "\n" not in message
    torch.save(vgg_file_state(), tmp_path / "vgg16.pth")
    with pytest.raises(CheckpointError, match="lpips_vgg_v0.1.pth"):
        LPIPS.from_pretrained(vgg_path=str(tmp_path / "vgg16.pth"), offline=True)
    with pytest.raises(CheckpointError, match="nowhere.pth"):
        LPIPS.from_pretrained(vgg_path=str(tmp_path / "nowhere.pth"))


def test_lpips_wrong_file_message(tmp_path, no_cache):
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    torch.save(lin_file_state(), tmp_path / "vgg.pth")
    with pytest.raises(CheckpointError, match="bad.pth"):
        LPIPS.from_pretrained(str(tmp_path / "bad.pth"), str(tmp_path / "vgg.pth"))


def test_pretrained_lpips_factory(no_cache):
    assert isinstance(lpips_module.pretrained_lpips(load_weights=False), LPIPS)
    with pytest.raises(CheckpointError, match="vgg16-397923af.pth"):
        lpips_module.pretrained_lpips()


def test_lpips_distance():
    torch.manual_seed(0)
    model = LPIPS()
    for k in range(5):  # the released heads are non-negative
        getattr(model, f"lin{k}").model[1].weight.abs_()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.all(model(x, x) == 0)
    d = model(x, x.flip(0))
    assert d.shape == (2, 1, 1, 1) and torch.all(d > 0)


# ----------------------------------------------------------------------------------------------
# Discriminator and loss


def test_discriminator_layout():
    disc = NLayerDiscriminator()
    keys = disc.state_dict()
    assert tuple(keys["main.0.weight"].shape) == (64, 3, 4, 4) and "main.0.bias" in keys
    assert tuple(keys["main.2.weight"].shape) == (128, 64, 4, 4) and "main.2.bias" not in keys
    assert "main.3.running_var" in keys and tuple(keys["main.8.weight"].shape) == (512, 256, 4, 4)
    assert tuple(keys["main.11.weight"].shape) == (1, 512, 4, 4)
    # 3136 + 131072 + 256 + 524288 + 512 + 2097152 + 1024 + 8193 (convs and BatchNorms in order)
    assert sum(p.numel() for p in disc.parameters()) == 2_765_633
    small = NLayerDiscriminator(ndf=8, n_layers=2)
    assert small(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 6, 6)
    assert hinge_loss(torch.ones(3), -torch.ones(3)) == 0


def test_vae_loss_adaptive_weight_and_disc_start():
    vae = tiny_vae()
    loss = VAELoss(perceptual=None, discriminator=NLayerDiscriminator(ndf=8, n_layers=2),
                   disc_start=5, perceptual_weight=0.0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    recon, posterior = vae(x, generator=torch.Generator().manual_seed(0))

    before, log = loss.generator_loss(x, recon, posterior, 4, last_layer=vae.last_layer)
    assert log["d_weight"] == 0 and log["disc_factor"] == 0
    nll = (x - recon).abs().sum() / 2
    torch.testing.assert_close(before, nll + 1e-6 * posterior.kl().sum() / 2)

    after, log = loss.generator_loss(x, recon, posterior, 5, last_layer=vae.last_layer)
    g_nll = torch.autograd.grad(nll, vae.last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(-loss.discriminator(recon).mean(), vae.last_layer, retain_graph=True)[0]
    expected = (g_nll.norm() / (g_gan.norm() + 1e-4)).clamp(0, 1e4) * 0.5
    torch.testing.assert_close(log["d_weight"], expected)
    assert log["disc_factor"] == 1.0 and torch.isfinite(after)
    after.backward()
    assert vae.decoder.conv_out.weight.grad is not None
    assert all(p.grad is None for p in loss.discriminator.parameters())  # the critic is fixed here

    d_loss, d_log = loss.discriminator_loss(x, recon, 5)
    assert torch.isfinite(d_loss) and d_loss > 0 and set(d_log) == {"disc_loss", "logits_real", "logits_fake"}
    vae.zero_grad(set_to_none=True)
    d_loss.backward()
    assert vae.decoder.conv_out.weight.grad is None  # and the autoencoder gets nothing from D's loss
    assert loss.discriminator.main[0].weight.grad is not None
    assert loss.discriminator_loss(x, recon, 4)[0] == 0


def test_vae_loss_needs_lpips_when_weighted():
    with pytest.raises(ConfigError, match="perceptual_weight"):
        VAELoss(perceptual=None, discriminator=None)


def test_released_loss_keys():
    loss = VAELoss(perceptual=LPIPS(), discriminator=NLayerDiscriminator())
    keys = set(loss.state_dict())
    assert {"logvar", "perceptual_loss.scaling_layer.shift", "perceptual_loss.scaling_layer.scale",
            "perceptual_loss.net.slice1.0.weight", "perceptual_loss.net.slice5.28.bias",
            "perceptual_loss.lin0.model.1.weight", "perceptual_loss.lin4.model.1.weight",
            "discriminator.main.0.weight", "discriminator.main.11.bias"} <= keys
    assert len([k for k in keys if k.startswith("perceptual_loss.")]) == 2 + 26 + 5


# ----------------------------------------------------------------------------------------------
# Lightning module


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, 16, 16, generator=g) * 2 - 1, "name": str(i)}


def train_tiny(with_disc, seed=0, disc_start=1, accumulate=1, decoder_only=False):
    pl.seed_everything(seed, verbose=False)
    vae = AutoencoderKL(ch_mult=[1, 2], embed_dim=3, z_channels=3, ch=32, num_res_blocks=1, resolution=16)
    disc = NLayerDiscriminator(ndf=8, n_layers=2) if with_disc else None
    loss = VAELoss(perceptual=LPIPS(), discriminator=disc, disc_start=disc_start)
    module = AutoencoderModule(vae, loss, learning_rate=1e-3, train_decoder_only=decoder_only)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    loader = torch.utils.data.DataLoader(Images(), batch_size=2)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         accumulate_grad_batches=accumulate)
    trainer.fit(module, loader, loader)
    assert trainer.global_step == 3  # optimiser steps = batches / accumulate, as released
    return before, module.state_dict(), trainer.callback_metrics


@pytest.mark.parametrize("with_disc", [False, True])
def test_training_steps(with_disc, caplog):
    caplog.set_level(logging.WARNING)
    before, after, metrics = train_tiny(with_disc)
    assert not torch.equal(after["vae.decoder.conv_out.weight"], before["vae.decoder.conv_out.weight"])
    assert not torch.equal(after["vae.encoder.conv_in.weight"], before["vae.encoder.conv_in.weight"])
    lin = "loss.perceptual_loss.lin0.model.1.weight"
    assert torch.equal(after[lin], before[lin])  # LPIPS stays frozen
    assert after["loss.logvar"] == 0  # not optimised, as released
    assert torch.isfinite(metrics["train/total_loss"]) and torch.isfinite(metrics["val/l1"])
    if with_disc:
        disc = "loss.discriminator.main.0.weight"
        assert not torch.equal(after[disc], before[disc])
        assert torch.isfinite(metrics["train/disc_loss"]) and metrics["train/d_weight"] > 0


def test_discriminator_waits_for_disc_start():
    before, after, metrics = train_tiny(with_disc=True, disc_start=100, accumulate=2)
    for key in before:
        if key.startswith("loss.discriminator.main.") and key.endswith(("weight", "bias")):
            assert torch.equal(after[key], before[key]), key
    assert metrics["train/disc_factor"] == 0 and metrics["train/disc_loss"] == 0
    assert not torch.equal(after["vae.decoder.conv_out.weight"], before["vae.decoder.conv_out.weight"])


@pytest.mark.parametrize("with_disc", [False, True])
def test_decoder_only_training_keeps_the_latents(with_disc):
    before, after, metrics = train_tiny(with_disc, decoder_only=True)
    encoder = [k for k in before if k.startswith(("vae.encoder.", "vae.quant_conv."))]
    assert encoder and all(torch.equal(after[k], before[k]) for k in encoder)  # the same latents as before
    assert not torch.equal(after["vae.decoder.conv_out.weight"], before["vae.decoder.conv_out.weight"])
    assert not torch.equal(after["vae.post_quant_conv.weight"], before["vae.post_quant_conv.weight"])
    if with_disc:
        assert not torch.equal(after["loss.discriminator.main.0.weight"], before["loss.discriminator.main.0.weight"])
    assert torch.isfinite(metrics["train/total_loss"])


def test_training_is_deterministic():
    _, first, _ = train_tiny(with_disc=False, seed=1)
    _, second, _ = train_tiny(with_disc=False, seed=1)
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("name", ["256_vae", "512_vae", "tiny/vae"])
def test_configs_build(name):
    from ldm.config import instantiate, load_config

    cfg = load_config(f"configs/{name}.yaml")
    with torch.device("meta"):
        module = instantiate(cfg.model, load_weights=False, learning_rate=1e-4)
    assert isinstance(module, AutoencoderModule) and module.checkpoint_kind == "vae"
    paper = {"256_vae": 55_312_063, "512_vae": 83_639_999}
    if name in paper:
        assert count(module.vae) == paper[name]
        keys = set(module.state_dict())
        assert "loss.perceptual_loss.lin4.model.1.weight" in keys and "loss.discriminator.main.11.bias" in keys
