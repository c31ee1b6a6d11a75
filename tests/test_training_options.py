"""Training options off in the released configs: v-prediction experts, min-SNR-γ loss weighting, and an
exponential moving average of the weights (EMA) that survives resume bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ldm.checkpoints import load_state_dict
from ldm.diffusion.schedule import NoiseSchedule, min_snr_weight
from ldm.errors import ConfigError
from ldm.modules.expert import Expert

from conftest import script
from test_training import assert_same_weights, logged_losses, tiny, train_args  # noqa: F401 (fixture)

SCHEDULE = NoiseSchedule()


class Oracle(nn.Module):
    """A 'UNet' that returns a fixed tensor, standing in for a perfect network."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, x_t, t, context):
        return self.out


class NoEncoder(nn.Module):
    def encode(self, raw):
        return raw


def draw(batch=4):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(batch, 3, 8, 8, generator=g), torch.randn(batch, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])[:batch]
    return x0, noise, t, SCHEDULE.q_sample(x0, t, noise)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_expert_returns_eps_whatever_it_predicts(prediction):
    """A network that predicts its target exactly gives the true ε through ``forward``."""
    x0, noise, t, x_t = draw()
    probe = Expert(Oracle(torch.zeros_like(x0)), NoEncoder(), prediction=prediction)
    expert = Expert(Oracle(probe.target(x0, noise, t)), NoEncoder(), prediction=prediction)
    assert torch.allclose(expert(x_t, t, None), noise, atol=1e-4)
    assert torch.allclose(expert.predict(x_t, t, None), expert.target(x0, noise, t))


def test_v_expert_is_near_the_trivial_predictor_at_high_noise():
    """At t = 999 even a v-network that outputs zeros has ε-error ᾱ-small: no residual noise from large t."""
    x0, noise, _, _ = draw()
    t = torch.full((4,), 999)
    x_t = SCHEDULE.q_sample(x0, t, noise)
    lazy_v = Expert(Oracle(torch.zeros_like(x0)), NoEncoder(), prediction="v")
    lazy_eps = Expert(Oracle(torch.zeros_like(x0)), NoEncoder(), prediction="eps")
    assert ((lazy_v(x_t, t, None) - noise) ** 2).mean() < 1e-3
    assert ((lazy_eps(x_t, t, None) - noise) ** 2).mean() > 0.5


def test_unknown_prediction_is_refused():
    with pytest.raises(ConfigError, match="prediction 'x0'"):
        Expert(Oracle(torch.zeros(1)), NoEncoder(), prediction="x0")


def test_min_snr_weights():
    t = torch.tensor([0, 300, 999])
    snr = SCHEDULE.snr(t)
    eps_w, v_w = min_snr_weight(snr, 5.0, "eps"), min_snr_weight(snr, 5.0, "v")
    assert snr[0] > 5 and snr[2] < 5
    assert torch.allclose(eps_w, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert eps_w[2] == 1.0 and eps_w[0] < 1.0  # only the nearly clean steps are down-weighted
    assert torch.allclose(v_w, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    with pytest.raises(ValueError, match="gamma"):
        min_snr_weight(snr, 0.0)


def test_schedule_mismatch_between_expert_and_model_is_refused():
    from ldm.models.latent_diffusion import LatentDiffusion

    expert = Expert(Oracle(torch.zeros(1)), NoEncoder(), prediction="v", schedule=NoiseSchedule(1000, 0.001, 0.02))
    with pytest.raises(ConfigError, match="expert's schedule"):
        LatentDiffusion(expert, nn.Identity(), cond_key="text", scale_factor=1.0)


def test_condition_encoder_learning_rate_scale():
    from ldm.models.latent_diffusion import LatentDiffusion

    unet, encoder = nn.Linear(2, 2), nn.Linear(3, 3)
    encoder.encode = encoder.forward
    expert = Expert(unet, encoder)
    model = LatentDiffusion(expert, nn.Identity(), cond_key="text", scale_factor=1.0, learning_rate=1e-3, cond_encoder_lr_scale=4.0)
    unet_group, encoder_group = model.configure_optimizers().param_groups
    assert unet_group["lr"] == pytest.approx(1e-3) and encoder_group["lr"] == pytest.approx(4e-3)
    assert {id(p) for p in unet_group["params"]} == {id(p) for p in unet.parameters()}
    assert {id(p) for p in encoder_group["params"]} == {id(p) for p in encoder.parameters()}
    released = LatentDiffusion(expert, nn.Identity(), cond_key="text", scale_factor=1.0, learning_rate=1e-3)
    assert len(released.configure_optimizers().param_groups) == 1  # the released layout, for resuming old runs
    with pytest.raises(ConfigError, match="must be positive"):
        LatentDiffusion(expert, nn.Identity(), cond_key="text", scale_factor=1.0, cond_encoder_lr_scale=0.0)
    with pytest.raises(ConfigError, match="train_cond_encoder: true"):
        LatentDiffusion(expert, nn.Identity(), cond_key="text", scale_factor=1.0, cond_encoder_lr_scale=2.0, train_cond_encoder=False)


V_MIN_SNR = ["model.params.expert.params.prediction=v", "model.params.min_snr_gamma=5.0"]


def test_v_prediction_with_min_snr_trains_and_samples(tiny, tmp_path):
    run = tmp_path / "v"
    assert script("train_ldm").main(train_args(tiny, run, 3, 3, *V_MIN_SNR)) == 0
    losses = logged_losses(run)
    assert sorted(losses) == [0, 1, 2] and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    from ldm.pipeline import load_model

    model = load_model(run / "checkpoints" / "config.yaml", run / "checkpoints" / "last.ckpt")
    assert model.expert.prediction == "v" and model.min_snr_gamma == 5.0


def test_logit_normal_timesteps_train_end_to_end(tiny, tmp_path):
    from ldm.models.latent_diffusion import LatentDiffusion
    from ldm.pipeline import load_model

    run = tmp_path / "logit_t"
    # mean 6, std 0.1: every training t lies in [996, 999], which a uniform draw would almost never give
    args = ["model.params.timestep_logit_std=0.1", "model.params.timestep_logit_mean=6.0"]
    assert script("train_ldm").main(train_args(tiny, run, 2, 2, *args)) == 0
    model = load_model(run / "checkpoints" / "config.yaml", run / "checkpoints" / "last.ckpt")
    assert model.timestep_logit_normal == (6.0, 0.1)
    noisy = model.noisy_latents({"image": torch.zeros(64, 3, 32, 32)}, torch.Generator().manual_seed(0))
    assert noisy.t.min() >= 990

    unet, encoder = nn.Linear(2, 2), nn.Linear(3, 3)
    encoder.encode = encoder.forward
    with pytest.raises(ConfigError, match="timestep_logit_std must be positive"):
        LatentDiffusion(Expert(unet, encoder), nn.Identity(), cond_key="text", scale_factor=1.0, timestep_logit_std=0.0)
    with pytest.raises(ConfigError, match="needs timestep_logit_std"):
        LatentDiffusion(Expert(unet, encoder), nn.Identity(), cond_key="text", scale_factor=1.0, timestep_logit_mean=1.0)


def test_condition_encoder_learning_rate_scale_trains_end_to_end(tiny, tmp_path):
    run = tmp_path / "enc_lr"
    assert script("train_ldm").main(train_args(tiny, run, 2, 2, "model.params.cond_encoder_lr_scale=3.0")) == 0
    groups = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]["param_groups"]
    assert [g["name"] for g in groups] == ["unet", "cond_encoder"]
    assert groups[1]["lr"] == pytest.approx(3.0 * groups[0]["lr"])


def test_ema_checkpoint_holds_the_average_and_resumes_bit_for_bit(tiny, tmp_path):
    """train.ema_decay: each checkpoint has raw weights and their average; loading takes the average;
    a run resumed at step 2 of 5 ends with the uninterrupted run's raw weights and average (with a warm-up
    and cosine learning-rate schedule, which must resume exactly as well)."""
    ema = ["train.ema_decay=0.9", "train.lr_schedule=cosine", "train.warmup_steps=2"]  # the schedule resumes too
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert script("train_ldm").main(train_args(tiny, full, 5, 1, *ema)) == 0
    state = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False)
    raw, avg = state["state_dict"], state["ema_state_dict"]
    assert raw.keys() == avg.keys() and state["ema_updates"] == 5
    trained = [k for k in raw if k.startswith("expert.")]
    assert any(not torch.equal(raw[k], avg[k]) for k in trained)
    assert all(torch.equal(raw[k], avg[k]) for k in raw if k.startswith("vae."))  # frozen: not averaged
    loaded = load_state_dict(full / "checkpoints" / "last.ckpt")
    assert all(torch.equal(loaded[k], avg[k]) for k in avg)
    assert all(torch.equal(v, raw[k]) for k, v in load_state_dict(full / "checkpoints" / "last.ckpt", ema=False).items())

    assert script("train_ldm").main(train_args(tiny, resumed, 5, 1, *ema, "--resume", str(full / "checkpoints" / "step00000002.ckpt"))) == 0
    assert_same_weights(resumed / "checkpoints" / "last.ckpt", full / "checkpoints" / "last.ckpt")  # the averages
    again = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(torch.equal(again["state_dict"][k], raw[k]) for k in raw)
    assert again["ema_updates"] == 5
    group = state["optimizer_states"][0]["param_groups"][0]
    assert group["peak_lr"] == pytest.approx(1e-4) and group["lr"] < group["peak_lr"]  # cosine: below the peak at the end


def test_bad_ema_decay_is_refused(tiny, tmp_path, capsys):
    assert script("train_ldm").main(train_args(tiny, tmp_path / "bad", 2, 1, "train.ema_decay=1.5")) == 2
    assert "ema_decay" in capsys.readouterr().err


def test_learning_rate_schedule_shapes():
    from ldm.callbacks import LearningRateSchedule

    cosine = LearningRateSchedule("cosine", max_steps=102, warmup_steps=2, min_ratio=0.1)
    assert cosine.factor(0) == pytest.approx(0.5) and cosine.factor(1) == pytest.approx(1.0)
    assert cosine.factor(52) == pytest.approx(0.55) and cosine.factor(102) == pytest.approx(0.1)
    assert LearningRateSchedule("constant", 10, warmup_steps=4).factor(1) == pytest.approx(0.5)
    from ldm.errors import UserError

    with pytest.raises(UserError, match="linear"):
        LearningRateSchedule("linear", 10)
    with pytest.raises(UserError, match="max_steps"):
        LearningRateSchedule("cosine", 5, warmup_steps=5)


def test_vae_trains_on_random_windows(tiny, tmp_path, capsys):
    """model.params.train_crop: the VAE trains on crops (whole images at use); a crop over the image size is refused."""
    common = ["--config", "configs/tiny/vae.yaml", "--accelerator", "cpu", "--devices", "1", "--max-steps", "2",
              f"data.train.params.root={tiny['data']}", "train.log_every_n_steps=1"]
    assert script("train_vae").main([*common, "--run-dir", str(tmp_path / "crop"), "model.params.train_crop=16"]) == 0
    assert (tmp_path / "crop" / "checkpoints" / "last.ckpt").is_file()
    capsys.readouterr()
    assert script("train_vae").main([*common, "--run-dir", str(tmp_path / "big"), "model.params.train_crop=64"]) == 2
    assert "train_crop 64" in capsys.readouterr().err


def test_vae_decoder_only_through_the_script_keeps_the_encoder(tiny, tmp_path):
    """model.params.train_decoder_only: train_vae.py trains the decoder and leaves the encoder's weights as given."""
    from omegaconf import OmegaConf

    config = OmegaConf.load("configs/tiny/vae.yaml")
    config.model.params.vae = {"target": "ldm.checkpoints.pretrained",
                               "params": {"config": "configs/tiny/vae.yaml", "component": "vae", "ckpt": str(tiny["vae"])}}
    config.model.params.train_decoder_only = True
    OmegaConf.save(config, tmp_path / "vae_decoder.yaml")
    run = tmp_path / "decoder"
    argv = ["--config", str(tmp_path / "vae_decoder.yaml"), "--accelerator", "cpu", "--devices", "1", "--max-steps", "2",
            "--run-dir", str(run), f"data.train.params.root={tiny['data']}"]
    assert script("train_vae").main(argv) == 0
    given, trained = torch.load(tiny["vae"]), load_state_dict(run / "checkpoints" / "last.ckpt")
    encoder = [k for k in given if k.startswith(("vae.encoder.", "vae.quant_conv."))]
    assert encoder and all(torch.equal(trained[k], given[k]) for k in encoder)
    assert not torch.equal(trained["vae.decoder.conv_out.weight"], given["vae.decoder.conv_out.weight"])


def test_fused_optimizer_matches_the_default_and_resumes_bit_for_bit(tiny, tmp_path):
    """train.fused_optimizer: torch's fused AdamW, the same updates up to rounding, and exact resume."""
    plain, fused, resumed = tmp_path / "plain", tmp_path / "fused", tmp_path / "resumed"
    assert script("train_ldm").main(train_args(tiny, plain, 3, 1)) == 0
    assert script("train_ldm").main(train_args(tiny, fused, 3, 1, "train.fused_optimizer=true")) == 0
    groups = torch.load(fused / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]["param_groups"]
    assert groups[0]["fused"] is True
    assert not torch.load(plain / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]["param_groups"][0]["fused"]
    a, b = load_state_dict(plain / "checkpoints" / "last.ckpt"), load_state_dict(fused / "checkpoints" / "last.ckpt")
    first = load_state_dict(fused / "checkpoints" / "step00000001.ckpt")
    assert any(not torch.equal(b[k], first[k]) for k in b if k.startswith("expert."))  # the weights did train
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0.0, atol=1e-5), k
    step1 = str(fused / "checkpoints" / "step00000001.ckpt")
    assert script("train_ldm").main(train_args(tiny, resumed, 3, 1, "train.fused_optimizer=true", "--resume", step1)) == 0
    assert_same_weights(resumed / "checkpoints" / "last.ckpt", fused / "checkpoints" / "last.ckpt")


def test_fused_optimizer_reaches_the_vae(tiny, tmp_path):
    run = tmp_path / "vae"
    args = ["--config", "configs/tiny/vae.yaml", "--accelerator", "cpu", "--devices", "1", "--run-dir", str(run),
            "--max-steps", "1", f"data.train.params.root={tiny['data']}", "train.fused_optimizer=true"]
    assert script("train_vae").main(args) == 0
    groups = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]["param_groups"]
    assert all(g["fused"] is True for g in groups)


def test_fused_optimizer_is_refused_for_a_module_that_builds_its_own(tiny, tmp_path, capsys):
    import pytorch_lightning as pl

    from ldm.training import use_fused_optimizer

    with pytest.raises(ConfigError, match="remove train.fused_optimizer"):
        use_fused_optimizer(pl.LightningModule())
    assert script("train_ldm").main(train_args(tiny, tmp_path / "bad", 2, 1, "train.fused_optimizer=maybe")) == 2
    assert "fused_optimizer" in capsys.readouterr().err
