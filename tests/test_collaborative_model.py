"""The collaborative Lightning module: only the dynamic diffusers train, experts stay frozen."""

from __future__ import annotations

import pytest
import torch

from ldm.errors import ConfigError
from ldm.models.collaborative_diffusion import CollaborativeDiffusion
from ldm.modules.autoencoder import AutoencoderKL
from ldm.modules.dynamic_diffuser import DynamicDiffuser
from ldm.modules.encoders import MaskEncoder, TextEncoder
from ldm.modules.expert import Expert
from ldm.modules.unet import UNetModel

UNET = dict(model_channels=32, num_res_blocks=1, attention_downsample_factors=[2], channel_mult=[1, 2], num_heads=4, context_dim=32)


def tiny_model(modalities=("seg_mask", "text")) -> CollaborativeDiffusion:
    torch.manual_seed(0)
    encoders = {"seg_mask": lambda: MaskEncoder(n_embed=32), "text": lambda: TextEncoder(n_embed=32, n_layer=1, n_heads=2, dim_head=16),
                "sketch": lambda: MaskEncoder(n_embed=32)}
    experts = {m: Expert(UNetModel(in_channels=3, out_channels=3, **UNET), encoders[m]()) for m in modalities}
    diffusers = {m: DynamicDiffuser(**UNET) for m in modalities}
    vae = AutoencoderKL(embed_dim=3, z_channels=3, ch=32, ch_mult=[1, 2], num_res_blocks=1, resolution=16)
    return CollaborativeDiffusion(experts, diffusers, vae, scale_factor=1.0, learning_rate=1e-3)


def batch(modalities, size=2):
    g = torch.Generator().manual_seed(1)
    out = {"image": torch.rand(size, 3, 16, 16, generator=g) * 2 - 1}
    onehot = torch.nn.functional.one_hot(torch.randint(0, 19, (size, 1024), generator=g), 19).permute(0, 2, 1).float()
    for m in modalities:
        out[m] = ["He is a teen."] * size if m == "text" else onehot
    return out


@pytest.mark.parametrize("modalities", [("seg_mask", "text"), ("seg_mask", "text", "sketch"), ("text",)])
def test_a_training_step_changes_only_the_diffusers(modalities):
    model = tiny_model(modalities)
    model.train()
    assert not model.experts.training and not model.vae.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = model.configure_optimizers()
    loss = model.diffusion_loss(batch(modalities), torch.Generator().manual_seed(2))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("diffusers.") for k in changed)
    for m in modalities:
        assert any(k.startswith(f"diffusers.{m}.") for k in changed)


def test_at_initialisation_all_modalities_weigh_the_same():
    model = tiny_model()
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([10, 900])
    context = torch.randn(2, 19, 32)
    assert torch.equal(model.diffusers["seg_mask"](x, t, context), torch.zeros(2, 1, 8, 8))


def test_mismatched_modalities_are_refused():
    model = tiny_model()
    with pytest.raises(ConfigError, match="same modalities"):
        CollaborativeDiffusion(dict(model.experts), {"text": model.diffusers["text"]}, model.vae, scale_factor=1.0)


def test_loss_space_weights_the_training_loss_and_is_checked():
    model = tiny_model()
    model.train()
    data = batch(("seg_mask", "text"))
    eps_loss = model.diffusion_loss(data, torch.Generator().manual_seed(2))
    model.loss_space = "v"
    v_loss = model.diffusion_loss(data, torch.Generator().manual_seed(2))  # same draws, each sample / ᾱ_t
    assert v_loss > eps_loss
    with pytest.raises(ConfigError, match="loss_space must be one of"):
        CollaborativeDiffusion(dict(model.experts), dict(model.diffusers), model.vae, scale_factor=1.0, loss_space="x_0")
