"""Tiny CPU tests of the noise schedule, DDIM and the collaborative step (2x3x8x8 tensors)."""

import math

import pytest
import torch

from ldm.diffusion.collaborative import (
    OFFICIAL,
    PAPER,
    CollaborativeOptions,
    adjust_weights,
    collaborative_loss,
    combine,
    composable_weights,
    cosine_decay_factor,
    influence_weights,
    make_collaborative_eps_fn,
    make_composable_eps_fn,
)
from ldm.diffusion.ddim import ddim_sample, ddim_timesteps
from ldm.diffusion.schedule import RELEASED_BUFFER_NAMES, NoiseSchedule

SHAPE = (2, 3, 8, 8)
SCHEDULE = NoiseSchedule()


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def linear_eps_fn(x, t):
    """A cheap deterministic 'network': depends on x and t."""
    return 0.5 * x + 1e-3 * t.to(x.dtype).reshape(-1, 1, 1, 1)


# ------------------------------------------------------------------------------------------------
# Schedule


def test_betas_are_sqrt_linear_with_the_paper_endpoints():
    betas = SCHEDULE.betas
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(0.0015, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.0195, rel=1e-12)
    steps = betas.sqrt().diff()
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=0, atol=1e-15)
    assert torch.allclose(SCHEDULE.alphas_cumprod, torch.cumprod(1 - betas, 0))
    assert SCHEDULE.alphas_cumprod_prev[0] == 1
    assert torch.equal(SCHEDULE.alphas_cumprod_prev[1:], SCHEDULE.alphas_cumprod[:-1])


def test_released_buffers():
    buffers = SCHEDULE.released_buffers()
    assert tuple(buffers) == RELEASED_BUFFER_NAMES and len(buffers) == 12
    assert all(v.dtype == torch.float32 and v.shape == (1000,) for v in buffers.values())
    b, a, a_prev = (SCHEDULE.betas, SCHEDULE.alphas_cumprod, SCHEDULE.alphas_cumprod_prev)
    assert buffers["alphas_cumprod_prev"][0] == 1
    variance = b * (1 - a_prev) / (1 - a)
    assert buffers["posterior_variance"][0] == 0
    assert torch.allclose(buffers["posterior_variance"].double(), variance, rtol=1e-6, atol=0)
    assert buffers["posterior_log_variance_clipped"][0].item() == pytest.approx(math.log(1e-20), rel=1e-6)
    assert torch.allclose(buffers["posterior_log_variance_clipped"][1:].double(), variance[1:].log(), rtol=1e-6)
    assert torch.allclose(buffers["sqrt_recipm1_alphas_cumprod"].double(), (1 / a - 1).sqrt(), rtol=1e-6)
    assert torch.allclose(buffers["log_one_minus_alphas_cumprod"].double(), (1 - a).log(), rtol=1e-6)
    # The posterior mean coefficients reproduce x_0 and x_t's weights in q(x_{t-1} | x_t, x_0).
    c1, c2 = buffers["posterior_mean_coef1"].double(), buffers["posterior_mean_coef2"].double()
    assert torch.allclose(c1, b * a_prev.sqrt() / (1 - a), rtol=1e-6)
    assert torch.allclose(c2, (1 - a_prev) * (1 - b).sqrt() / (1 - a), rtol=1e-6)


def test_q_sample_and_predictions_invert():
    x0, noise = randn(*SHAPE, seed=1), randn(*SHAPE, seed=2)
    t = torch.tensor([0, 999])
    x_t = SCHEDULE.q_sample(x0, t, noise)
    assert torch.allclose(SCHEDULE.predict_x0(x_t, t, noise), x0, atol=1e-4)
    assert torch.allclose(SCHEDULE.predict_eps(x_t, t, x0), noise, atol=1e-4)
    assert torch.allclose(SCHEDULE.q_sample(x0, 500, noise), SCHEDULE.q_sample(x0, torch.tensor([500, 500]), noise))
    snr = SCHEDULE.snr(t)
    assert snr.dtype == torch.float32 and snr[0] > snr[1] > 0
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        SCHEDULE.q_sample(x0, torch.tensor([0, 1000]), noise)


def test_sample_timesteps_uniform_and_reproducible():
    t1 = SCHEDULE.sample_timesteps(256, torch.Generator().manual_seed(3), "cpu")
    t2 = SCHEDULE.sample_timesteps(256, torch.Generator().manual_seed(3), "cpu")
    assert t1.dtype == torch.long and torch.equal(t1, t2) and 0 <= t1.min() and t1.max() < 1000


def test_sample_timesteps_logit_normal_draws_the_middle_more_often():
    n = 20000
    uniform = SCHEDULE.sample_timesteps(n, torch.Generator().manual_seed(0), "cpu")
    middle = SCHEDULE.sample_timesteps(n, torch.Generator().manual_seed(0), "cpu", logit_normal=(0.0, 1.0))
    assert middle.dtype == torch.long and 0 <= middle.min() and middle.max() < 1000
    share = lambda t: ((t >= 300) & (t < 700)).float().mean().item()  # noqa: E731
    # P(|logit(u)| < logit(0.7) = 0.847) = 0.603 for N(0, 1); 0.4 for the uniform draw
    assert share(uniform) == pytest.approx(0.40, abs=0.015) and share(middle) == pytest.approx(0.603, abs=0.015)
    assert middle.float().median().item() == pytest.approx(500, abs=10)
    late = SCHEDULE.sample_timesteps(n, torch.Generator().manual_seed(0), "cpu", logit_normal=(1.0, 1.0))
    assert late.float().median().item() == pytest.approx(1000 * torch.sigmoid(torch.tensor(1.0)).item(), abs=10)
    assert torch.equal(middle, SCHEDULE.sample_timesteps(n, torch.Generator().manual_seed(0), "cpu", logit_normal=(0.0, 1.0)))
    with pytest.raises(ValueError, match="std must be positive"):
        SCHEDULE.sample_timesteps(4, None, "cpu", logit_normal=(0.0, 0.0))


# ------------------------------------------------------------------------------------------------
# DDIM


def test_ddim_timesteps():
    ts = ddim_timesteps(50)
    assert ts.tolist() == list(range(1, 1000, 20)) and ts[0] == 1 and ts[-1] == 981
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="1..1000"):
            ddim_timesteps(bad)
    for n in (1, 3, 7, 333, 500, 999, 1000):  # any count: exactly n distinct steps inside 0..999
        ts = ddim_timesteps(n)
        assert len(ts) == n and int(ts.min()) >= 0 and int(ts.max()) <= 999 and bool((ts.diff() > 0).all())
    assert ddim_timesteps(1000).tolist() == list(range(1000))


def test_ddim_recovers_x0_with_the_oracle_eps():
    x0, noise = randn(*SHAPE, seed=1), randn(*SHAPE, seed=2)
    x_T = SCHEDULE.q_sample(x0, 999, noise)
    ts = ddim_timesteps(50)
    seen = []
    out = ddim_sample(lambda x, t: SCHEDULE.predict_eps(x, t, x0), x_T, SCHEDULE, ts,
                      callback=lambda i, t, x, x0_pred: seen.append((i, t, x0_pred)))
    assert [i for i, _, _ in seen] == list(range(50))
    assert [t for _, t, _ in seen] == list(range(981, 0, -20))
    assert torch.allclose(seen[-1][2], x0, atol=1e-4)
    # As released, the last step lands on alpha_bar[0] = 1 - beta_0, not on x_0 exactly.
    assert (out - x0).abs().mean() < 0.05


def test_ddim_eta0_is_deterministic_and_eta1_follows_the_generator():
    x_T, ts = randn(*SHAPE, seed=4), ddim_timesteps(10)
    a = ddim_sample(linear_eps_fn, x_T, SCHEDULE, ts)
    assert torch.equal(a, ddim_sample(linear_eps_fn, x_T, SCHEDULE, ts))

    def run(seed):
        return ddim_sample(linear_eps_fn, x_T, SCHEDULE, ts, eta=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0)) and not torch.allclose(run(0), run(1))
    with pytest.raises(ValueError, match="pass a torch.Generator"):
        ddim_sample(linear_eps_fn, x_T, SCHEDULE, ts, eta=1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_ddim_preserves_dtype(dtype):
    x_T = randn(*SHAPE, seed=5, dtype=dtype)
    ts = ddim_timesteps(5)
    out = ddim_sample(linear_eps_fn, x_T, SCHEDULE, ts, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    reference = ddim_sample(linear_eps_fn, x_T.float(), SCHEDULE, ts)
    assert torch.allclose(ddim_sample(linear_eps_fn, x_T, SCHEDULE, ts).float(), reference, rtol=0.03, atol=0.05)


# ------------------------------------------------------------------------------------------------
# Collaborative step


def logits_for(names, seed=0):
    return {m: 3 * randn(2, 1, 8, 8, seed=seed + i) for i, m in enumerate(names)}


@pytest.mark.parametrize("names", [["text"], ["seg_mask", "text"], ["seg_mask", "text", "sketch"]])
@pytest.mark.parametrize("options", [PAPER, OFFICIAL])
def test_weights_positive_and_sum_to_one(names, options):
    if "seg_mask" not in names and options is OFFICIAL:
        with pytest.raises(ValueError, match="seg_mask"):
            adjust_weights(influence_weights(logits_for(names)), torch.tensor([981, 981]), options)
        return
    for t in (1, 500, 981):
        weights = adjust_weights(influence_weights(logits_for(names)), torch.tensor([t, t]), options)
        assert list(weights) == names and all(w.shape == (2, 1, 8, 8) for w in weights.values())
        assert all((w > 0).all() for w in weights.values())
        assert torch.allclose(sum(weights.values()), torch.ones(2, 1, 8, 8), atol=1e-6)


def test_identical_experts_give_the_expert_eps():
    eps = randn(*SHAPE, seed=6)
    weights = influence_weights(logits_for(["a", "b", "c"]))
    assert torch.allclose(combine({"a": eps, "b": eps, "c": eps}, weights), eps, atol=1e-6)
    with pytest.raises(ValueError, match=r"missing for \['c'\]"):
        combine({"a": eps, "b": eps, "c": eps}, {"a": 0.5, "b": 0.5})


def test_single_modality_is_plain_ddim_bit_for_bit():
    x_T, ts = randn(*SHAPE, seed=7), ddim_timesteps(10)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = ddim_sample(linear_eps_fn, x_T, SCHEDULE, ts, eta=1.0, generator=gen())
    for options in (PAPER, OFFICIAL):
        diffusers = {"seg_mask": lambda x, t: x[:, :1] * 5}
        eps_fn = make_collaborative_eps_fn({"seg_mask": linear_eps_fn}, diffusers, options)
        assert torch.equal(ddim_sample(eps_fn, x_T, SCHEDULE, ts, eta=1.0, generator=gen()), plain)


def test_official_adjustments_match_the_released_formula():
    logits = logits_for(["seg_mask", "text"], seed=8)
    p = influence_weights(logits)["seg_mask"]
    for t in (1, 21, 500, 981, 999):
        c = (math.cos(math.pi * (1 - t / 1000)) + 1) / 2
        assert cosine_decay_factor(torch.tensor([t]))[0].item() == pytest.approx(c, rel=1e-12)
        seen = {}
        eps_fn = make_collaborative_eps_fn({"seg_mask": linear_eps_fn, "text": linear_eps_fn},
                                           {m: (lambda v: lambda x, t: v)(v) for m, v in logits.items()},
                                           OFFICIAL, on_weights=lambda t, w: seen.update(w))
        eps_fn(randn(*SHAPE), torch.tensor([t, t]))
        expected = 2 * p * c / (1 + p * c)
        assert torch.allclose(seen["seg_mask"], expected, rtol=1e-5, atol=1e-7)
        assert torch.allclose(seen["text"], 1 - expected, rtol=1e-5, atol=1e-7)


def test_presets():
    assert CollaborativeOptions.from_preset("paper") is PAPER
    assert CollaborativeOptions.from_preset("official") is OFFICIAL
    with pytest.raises(ValueError, match="unknown collaborative preset 'nope'"):
        CollaborativeOptions.from_preset("nope")
    with pytest.raises(ValueError, match="boost_modality"):
        CollaborativeOptions(boost=2.0)


def test_composable_equal_weights_are_the_mean():
    eps = {m: randn(*SHAPE, seed=i) for i, m in enumerate(["a", "b", "c"])}
    assert composable_weights(["a", "b"]) == {"a": 0.5, "b": 0.5}
    mean = torch.stack(list(eps.values())).mean(0)
    assert torch.allclose(combine(eps, composable_weights(list(eps))), mean, atol=1e-6)
    eps_fn = make_composable_eps_fn({m: (lambda v: lambda x, t: v)(v) for m, v in eps.items()})
    assert torch.allclose(eps_fn(eps["a"], torch.tensor([1, 1])), mean, atol=1e-6)
    with pytest.raises(ValueError, match="lambdas missing"):
        composable_weights(["a", "b"], {"a": 1.0})


def test_collaborative_loss_trains_the_logits():
    noise = randn(*SHAPE, seed=9)
    eps = {"a": noise, "b": randn(*SHAPE, seed=10)}
    logits = {m: torch.zeros(2, 1, 8, 8, requires_grad=True) for m in eps}
    loss = collaborative_loss(eps, logits, noise)
    expected = ((0.5 * noise + 0.5 * eps["b"] - noise) ** 2).mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert (logits["a"].grad <= 0).all() and logits["a"].grad.sum() < 0  # more weight on the exact expert


@pytest.mark.parametrize("space", ["v", "x0"])
def test_collaborative_loss_in_v_or_x0_is_the_combined_predictions_error_there(space):
    # Two v-predicting "experts" read as ε (as the sampler reads them); the weighted ε-loss must equal the
    # error of the softmax-combined v (or x_0) against the true one, sample by sample.
    from ldm.diffusion.schedule import loss_space_weight

    t = torch.tensor([5, 990])
    x0, noise = randn(*SHAPE, seed=11), randn(*SHAPE, seed=12)
    x_t = SCHEDULE.q_sample(x0, t, noise)
    a = SCHEDULE.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    v_hat = {"a": randn(*SHAPE, seed=13), "b": randn(*SHAPE, seed=14)}
    eps = {m: a.sqrt() * v + (1 - a).sqrt() * x_t for m, v in v_hat.items()}
    logits = {"a": randn(2, 1, 8, 8, seed=15), "b": randn(2, 1, 8, 8, seed=16)}
    loss = collaborative_loss(eps, logits, noise, loss_space_weight(SCHEDULE, t, space))
    w = influence_weights(logits)
    if space == "v":
        predicted, target = combine(v_hat, w), a.sqrt() * noise - (1 - a).sqrt() * x0
    else:
        predicted, target = SCHEDULE.predict_x0(x_t, t, combine(eps, w)), x0
    expected = ((predicted - target) ** 2).mean(dim=(1, 2, 3)).mean()
    assert torch.allclose(loss, expected, rtol=1e-3)
    # the large timestep carries a weight the ε-loss does not give it
    assert loss_space_weight(SCHEDULE, t, space)[1] > 100 * loss_space_weight(SCHEDULE, t, "eps")[1]


def test_loss_space_and_sample_weights_are_checked():
    from ldm.diffusion.schedule import loss_space_weight

    with pytest.raises(ValueError, match="loss space must be one of"):
        loss_space_weight(SCHEDULE, torch.tensor([1]), "x_0")
    eps = {"a": randn(*SHAPE, seed=1)}
    with pytest.raises(ValueError, match=r"sample_weight must have shape \[2\]"):
        collaborative_loss(eps, {"a": torch.zeros(2, 1, 8, 8)}, eps["a"], torch.ones(3))
