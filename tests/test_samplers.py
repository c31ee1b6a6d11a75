"""The fewer-step samplers (DPM-Solver++(2M), its SDE variant, UniPC) and the registry that runs every sampler
by name: against diffusers' schedulers on a fixed eps function, on a Gaussian where the exact eps is known,
and the registry's contract (one network call per step, DDIM unchanged, one-line errors). CPU, tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from ldm.diffusion.ddim import ddim_sample, ddim_timesteps
from ldm.diffusion.dpm_solver import dpmpp_2m_sample
from ldm.diffusion.samplers import (
    RECOMMENDED,
    RELEASED,
    SamplerOptions,
    get_sampler,
    partial_start,
    partial_timesteps,
    run_sampler,
    sampler_names,
    spacing_names,
)
from ldm.diffusion.schedule import NoiseSchedule
from ldm.diffusion.spacing import karras_timesteps, spaced_timesteps
from ldm.diffusion.unipc import unipc_sample

SCHEDULE = NoiseSchedule()  # the paper's: sqrt-linear betas 0.0015 -> 0.0195, 1000 steps
SHAPE = (4, 3, 8, 8)
TOLERANCE = 1e-5  # relative L2 distance of every intermediate sample, fp32


def eps_formula(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed, smooth, nonlinear eps(x, t) (diffusers' scheduler tests use such formulas)."""
    c = (t.to(x.dtype) / 1000).view(-1, *([1] * (x.dim() - 1)))
    return torch.tanh(x) * (0.5 + c) + 0.3 * torch.sin(3 * x + c)


def x_T(seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)).to(dtype)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# ------------------------------------------------------------------------------------------------
# Against diffusers (the dev extra installs it)

diffusers = pytest.importorskip("diffusers", reason="the dev extra installs diffusers, the peer implementation")

PEER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                   prediction_type="epsilon")
STEP_COUNTS = (1, 2, 3, 5, 10, 15, 25, 50)


def peer(kind: str, **config):
    if kind == "unipc":
        return diffusers.UniPCMultistepScheduler(**PEER_CONFIG, solver_type="bh2", solver_order=2, predict_x0=True, **config)
    algorithm = "sde-dpmsolver++" if kind == "dpmpp_2m_sde" else "dpmsolver++"
    return diffusers.DPMSolverMultistepScheduler(**PEER_CONFIG, algorithm_type=algorithm, solver_order=2,
                                                 solver_type="midpoint", **config)


def peer_trajectory(scheduler, x: torch.Tensor, noises=None) -> list[torch.Tensor]:
    out = []
    for k, t in enumerate(scheduler.timesteps):
        extra = {} if noises is None else {"variance_noise": noises[k]}
        x = scheduler.step(eps_formula(x, t.expand(x.shape[0])), t, x, **extra).prev_sample
        out.append(x)
    return out


def our_trajectory(name: str, x: torch.Tensor, timesteps, **kw) -> list[torch.Tensor]:
    out = []
    run_sampler(name, eps_formula, x, SCHEDULE, timesteps, callback=lambda i, t, xx, x0: out.append(xx), **kw)
    return out


def assert_same_trajectory(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    assert len(ours) == len(theirs)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert relative(a, b) < TOLERANCE, f"step {k}: relative distance {relative(a, b):.2e}"


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc"])
def test_same_trajectory_as_diffusers(name, spacing, steps):
    scheduler = peer(name, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    timesteps = spaced_timesteps(spacing, steps, SCHEDULE)
    assert scheduler.timesteps.tolist() == timesteps.flip(0).tolist()
    assert_same_trajectory(our_trajectory(name, x_T(), timesteps), peer_trajectory(scheduler, x_T()))


@pytest.mark.parametrize("steps", [2, 5, 10, 25])
def test_sde_variant_same_trajectory_as_diffusers_with_the_same_noise(steps):
    scheduler = peer("dpmpp_2m_sde", timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    draws = torch.Generator().manual_seed(5)  # ours draws one z per step but the last (whose z has weight 0)
    noises = [torch.randn(SHAPE, generator=draws) for _ in range(steps - 1)] + [torch.zeros(SHAPE)]
    ours = our_trajectory("dpmpp_2m_sde", x_T(), spaced_timesteps("trailing", steps, SCHEDULE),
                          generator=torch.Generator().manual_seed(5))
    assert_same_trajectory(ours, peer_trajectory(scheduler, x_T(), noises))


@pytest.mark.parametrize("steps", [2, 5, 10, 15, 25, 50, 61])
def test_karras_timesteps_are_diffusers_rounded_karras_timesteps(steps):
    for kind in ("dpmpp_2m", "unipc"):
        scheduler = peer(kind, use_karras_sigmas=True)
        scheduler.set_timesteps(steps)
        assert scheduler.timesteps.tolist() == spaced_timesteps("karras", steps, SCHEDULE).flip(0).tolist()


@pytest.mark.parametrize("steps", [5, 10, 15, 25])
@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc"])
def test_karras_spacing_same_trajectory_as_diffusers_at_those_timesteps(name, steps):
    """diffusers keeps the unrounded Karras sigmas while calling the model at the rounded timesteps; ours uses
    the schedule's sigma at the timestep the model is called with. So the peer is given our timesteps and the
    schedule's sigmas there (DPM-Solver: its custom-timesteps option; UniPC has none, so they are set)."""
    timesteps = karras_timesteps(steps, SCHEDULE)
    scheduler = peer(name)
    if name == "dpmpp_2m":
        scheduler.set_timesteps(timesteps=timesteps.flip(0).tolist())
    else:
        scheduler.set_timesteps(steps)
        a = scheduler.alphas_cumprod[timesteps.flip(0)].double()
        scheduler.timesteps = timesteps.flip(0)
        scheduler.sigmas = torch.cat([((1 - a) / a).sqrt(), torch.zeros(1, dtype=torch.float64)]).float()
    assert_same_trajectory(our_trajectory(name, x_T(), timesteps), peer_trajectory(scheduler, x_T()))


def test_the_eps_formula_tells_the_solvers_apart():
    """The agreement above means something: UniPC's corrector moves the trajectory far more than the tolerance."""
    timesteps = spaced_timesteps("trailing", 10, SCHEDULE)
    a = dpmpp_2m_sample(eps_formula, x_T(), SCHEDULE, timesteps)
    b = unipc_sample(eps_formula, x_T(), SCHEDULE, timesteps)
    assert relative(a, b) > 100 * TOLERANCE


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_spacings_equal_diffusers_for_every_step_count(spacing):
    """For some counts (61, 103, 121, ...) numpy's arange overshoots and diffusers' trailing spacing gets one
    timestep too many, -1; ours has exactly ``steps``, equal to diffusers' first ``steps``."""
    scheduler = peer("dpmpp_2m", timestep_spacing=spacing)
    overshoot = []
    for steps in range(1, 131):
        scheduler.set_timesteps(steps)
        theirs = scheduler.timesteps.tolist()
        if len(theirs) == steps + 1 and theirs[-1] == -1:
            overshoot.append(steps)
            theirs = theirs[:-1]
        assert theirs == spaced_timesteps(spacing, steps, SCHEDULE).flip(0).tolist(), steps
    assert overshoot == ([] if spacing == "linspace" else [61, 103, 121, 122])


# ------------------------------------------------------------------------------------------------
# Closed form: Gaussian data, where eps(x_t, t) = E[eps | x_t] is known exactly

MU = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
SD = torch.tensor([0.8, 0.3, 1.5], dtype=torch.float64)


def exact_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_0 ~ N(MU, SD^2) per column: E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) MU) / (a SD^2 + 1 - a)."""
    a = SCHEDULE.alphas_cumprod[t.cpu()].to(x).unsqueeze(-1)
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * SD**2 + 1 - a)


def marginal(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of x_t."""
    a = float(SCHEDULE.alphas_cumprod[t])
    return math.sqrt(a) * MU, (a * SD**2 + 1 - a).sqrt()


def deterministic_error(name: str, spacing: str, steps: int) -> float:
    """Start from the exact marginal at the first timestep. A deterministic solver is an affine map per column
    here, so the image of (mean, mean + sd) gives the output's exact mean and sd; the error is the largest
    |mean - MU| + |sd - SD| (DDIM stops at alpha_bar[0], so its target is the t = 0 marginal)."""
    timesteps = spaced_timesteps(spacing, steps, SCHEDULE)
    m, sd = marginal(int(timesteps[-1]))
    y = run_sampler(name, exact_eps, torch.stack([m, m + sd]), SCHEDULE, timesteps, **({"eta": 0.0} if name == "ddim" else {}))
    mean, sd_out = y[0], (y[1] - y[0]).abs()
    target_mean, target_sd = marginal(0) if name == "ddim" else (MU, SD)
    return float(((mean - target_mean).abs() + (sd_out - target_sd).abs()).max())


@pytest.mark.parametrize("name,spacing,counts,final", [
    ("dpmpp_2m", "karras", (10, 25, 50), 5e-3),
    ("unipc", "karras", (10, 25, 50), 5e-3),
    ("dpmpp_2m", "trailing", (10, 50, 200), 1.5e-2),
    ("unipc", "trailing", (10, 50, 200), 1.5e-2),
    ("dpmpp_2m", "linspace", (10, 50, 200), 1.5e-2),
    ("ddim", "uniform", (10, 50, 200), 1.5e-2),
])
def test_deterministic_solvers_converge_to_the_data_distribution(name, spacing, counts, final):
    errors = [deterministic_error(name, spacing, n) for n in counts]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[-1] < final, errors


def test_second_order_solvers_beat_first_order_at_equal_steps():
    """At 25 Karras steps both multistep solvers land several times closer than a first-order solver would
    (DPM-Solver++'s first-order step is DDIM's; here: the same solver's error at 25 vs DDIM's at 25)."""
    for name in ("dpmpp_2m", "unipc"):
        assert deterministic_error(name, "karras", 25) < deterministic_error("ddim", "karras", 25) / 3


def test_sde_variant_converges_to_the_data_distribution():
    timesteps = spaced_timesteps("karras", 50, SCHEDULE)
    m, sd = marginal(int(timesteps[-1]))
    errors = []
    for steps in (10, 50):
        timesteps = spaced_timesteps("karras", steps, SCHEDULE)
        m, sd = marginal(int(timesteps[-1]))
        x = m + sd * torch.randn(40000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        y = run_sampler("dpmpp_2m_sde", exact_eps, x, SCHEDULE, steps, generator=torch.Generator().manual_seed(1))
        errors.append((float((y.mean(0) - MU).abs().max()), float((y.std(0) - SD).abs().max())))
    assert errors[1][1] < errors[0][1] / 3, errors
    assert errors[1][0] < 0.03 and errors[1][1] < 0.03, errors  # Monte-Carlo error of 40,000 draws: ~0.01


# ------------------------------------------------------------------------------------------------
# A start part-way (SDEdit), as Imagic editing's stage C uses it


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "unipc"])
def test_a_partial_start_from_data_still_samples_the_data_distribution(name):
    """x0 drawn from the data, noised to t by partial_start, is a draw of the marginal at t: a sampler run
    from there down the kept timesteps returns the data distribution, and each output stays near its own x0."""
    gen = torch.Generator().manual_seed(0)
    x0 = MU + SD * torch.randn(40000, 3, dtype=torch.float64, generator=gen)
    timesteps = spaced_timesteps("uniform", 200, SCHEDULE)  # enough steps that the discretisation error is small
    x_t, kept = partial_start(x0, timesteps, SCHEDULE, 0.5, torch.Generator().manual_seed(1))
    assert kept.tolist() == [t for t in timesteps.tolist() if t < 500] and int(kept[-1]) == 496
    m, sd = marginal(496)
    assert float((x_t.mean(0) - m).abs().max()) < 0.02 and float((x_t.std(0) - sd).abs().max()) < 0.02
    y = run_sampler(name, exact_eps, x_t, SCHEDULE, kept, **({"eta": 0.0} if name == "ddim" else {}))
    target_mean, target_sd = marginal(0) if name == "ddim" else (MU, SD)
    assert float((y.mean(0) - target_mean).abs().max()) < 0.03 and float((y.std(0) - target_sd).abs().max()) < 0.03
    # the lower the strength, the closer each sample stays to the x0 it started from
    distance = []
    for strength in (0.1, 0.5, 1.0):
        x_t, kept = partial_start(x0[:2000], timesteps, SCHEDULE, strength, torch.Generator().manual_seed(2))
        y = run_sampler(name, exact_eps, x_t, SCHEDULE, kept, **({"eta": 0.0} if name == "ddim" else {}))
        distance.append(float(((y - x0[:2000]) ** 2).mean()))
    assert distance[0] < distance[1] < distance[2], distance


def test_partial_timesteps_errors_name_the_fix():
    timesteps = spaced_timesteps("uniform", 2, SCHEDULE)  # [1, 501]
    assert partial_timesteps(timesteps, 1.0, 1000).tolist() == [1, 501]
    assert partial_timesteps(timesteps, 0.5, 1000).tolist() == [1]
    with pytest.raises(ValueError, match=r"strength 0.001 keeps none of the 2 timesteps \(the smallest is 1\); raise the strength above 0.001"):
        partial_timesteps(timesteps, 0.001, 1000)
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        partial_timesteps(timesteps, 0.0, 1000)


# ------------------------------------------------------------------------------------------------
# The registry


def counting(fn):
    calls = []

    def wrapped(x, t):
        calls.append(int(t[0]))
        return fn(x, t)

    return wrapped, calls


def test_every_sampler_is_listed_and_runs_by_name():
    assert sampler_names() == ["ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc"]
    assert spacing_names() == ["uniform", "linspace", "trailing", "karras"]
    for name in sampler_names():
        out = run_sampler(name, eps_formula, x_T(), SCHEDULE, 6, generator=torch.Generator().manual_seed(0))
        assert out.shape == SHAPE and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc"])
@pytest.mark.parametrize("spacing", ["uniform", "linspace", "trailing", "karras"])
def test_one_network_call_per_step_at_the_spaced_timesteps(name, spacing):
    eps_fn, calls = counting(eps_formula)
    steps = []
    run_sampler(name, eps_fn, x_T(), SCHEDULE, 7, spacing=spacing, generator=torch.Generator().manual_seed(0),
                callback=lambda i, t, x, x0: steps.append((i, t)))
    expected = spaced_timesteps(spacing, 7, SCHEDULE).flip(0).tolist()
    assert calls == expected
    assert steps == list(enumerate(expected))


def test_ddim_through_the_registry_is_ddim_sample_bit_for_bit():
    expected = ddim_sample(eps_formula, x_T(), SCHEDULE, ddim_timesteps(10), eta=1.0, generator=torch.Generator().manual_seed(3))
    got = run_sampler("ddim", eps_formula, x_T(), SCHEDULE, 10, eta=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, expected)
    got = RELEASED.run(eps_formula, x_T(), SCHEDULE, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, ddim_sample(eps_formula, x_T(), SCHEDULE, ddim_timesteps(50), eta=1.0,
                                        generator=torch.Generator().manual_seed(3)))


def test_explicit_timesteps_and_dtype_follow_the_input():
    timesteps = torch.tensor([3, 40, 400, 990])
    for name in ("dpmpp_2m", "unipc"):
        eps_fn, calls = counting(eps_formula)
        out = run_sampler(name, eps_fn, x_T(dtype=torch.float64), SCHEDULE, timesteps)
        assert out.dtype == torch.float64 and calls == [990, 400, 40, 3]


def test_deterministic_solvers_ignore_the_generator_and_the_sde_reproduces_with_its_seed():
    for name in ("dpmpp_2m", "unipc"):
        a = run_sampler(name, eps_formula, x_T(), SCHEDULE, 5)
        assert torch.equal(a, run_sampler(name, eps_formula, x_T(), SCHEDULE, 5, generator=torch.Generator().manual_seed(9)))

    def sde(seed):
        return run_sampler("dpmpp_2m_sde", eps_formula, x_T(), SCHEDULE, 5, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sde(1), sde(1)) and not torch.equal(sde(1), sde(2))


def test_single_step_returns_the_x0_prediction():
    x = x_T()
    expected = SCHEDULE.predict_x0(x, 999, eps_formula(x, torch.full((SHAPE[0],), 999)))
    for name in ("dpmpp_2m", "dpmpp_2m_sde", "unipc"):
        out = run_sampler(name, eps_formula, x, SCHEDULE, 1, spacing="trailing", generator=torch.Generator())
        assert relative(out, expected) < 1e-6


@pytest.mark.parametrize("call,message", [
    (lambda: get_sampler("euler"), "unknown sampler 'euler'; choose one of ddim, dpmpp_2m, dpmpp_2m_sde, unipc"),
    (lambda: run_sampler("unipc", eps_formula, x_T(), SCHEDULE, 5, eta=0.5), "eta is DDIM's parameter"),
    (lambda: run_sampler("dpmpp_2m_sde", eps_formula, x_T(), SCHEDULE, 5), "pass a torch.Generator"),
    (lambda: run_sampler("ddim", eps_formula, x_T(), SCHEDULE, 5, eta=1.0), "pass a torch.Generator"),
    (lambda: run_sampler("unipc", eps_formula, x_T(), SCHEDULE, [1, 5], spacing="karras"), "explicit timesteps were given"),
    (lambda: run_sampler("unipc", eps_formula, x_T(), SCHEDULE, [5, 1]), "strictly increasing"),
    (lambda: run_sampler("unipc", eps_formula, x_T(), SCHEDULE, 5, spacing="cosine"), "unknown timestep spacing 'cosine'"),
    (lambda: run_sampler("unipc", lambda x, t: x[:1], x_T(), SCHEDULE, 5), "eps_fn returned shape"),
    (lambda: spaced_timesteps("trailing", 0, SCHEDULE), "steps must be an integer in 1..1000"),
    (lambda: karras_timesteps(62, SCHEDULE), "karras spacing of 62 steps repeats timesteps on this 1000-step schedule "
                                             "(it allows at most 61); use fewer steps or spacing 'trailing'"),
    (lambda: spaced_timesteps("linspace", 1000, SCHEDULE), "linspace spacing of 1000 steps repeats timesteps "
                                                           "(it allows at most 999)"),
    (lambda: SamplerOptions("unipc", 15, eta=1.0), "eta applies to the ddim sampler only; unipc has none"),
    (lambda: SamplerOptions("ddim", 0), "steps 0 is out of range; use 1 to 1000"),
    (lambda: SamplerOptions("ddim", 50, eta=1.5), "eta 1.5 is out of range"),
    (lambda: SamplerOptions("ddim", 50, spacing="log"), "unknown timestep spacing 'log'"),
])
def test_errors_name_the_problem_and_the_fix(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spacing", ["uniform", "linspace", "trailing", "karras"])
def test_spacings_give_distinct_ascending_timesteps_in_range(spacing):
    for steps in range(1, 62):
        ts = spaced_timesteps(spacing, steps, SCHEDULE)
        assert ts.dtype == torch.long and len(ts) == steps
        assert bool((ts[1:] > ts[:-1]).all()) and int(ts[0]) >= 0 and int(ts[-1]) <= 999


def test_spacing_values():
    assert torch.equal(spaced_timesteps("uniform", 50, SCHEDULE), ddim_timesteps(50))
    assert spaced_timesteps("trailing", 10, SCHEDULE).tolist() == [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]
    assert spaced_timesteps("linspace", 10, SCHEDULE).tolist() == [100, 200, 300, 400, 500, 599, 699, 799, 899, 999]
    assert spaced_timesteps("karras", 10, SCHEDULE).flip(0).tolist() == [999, 942, 874, 791, 684, 537, 333, 113, 15, 0]


def test_sampler_options_resolve_and_record():
    assert RELEASED.to_dict() == {"sampler": "ddim", "steps": 50, "spacing": "uniform", "eta": 1.0}
    assert RELEASED.describe() == "DDIM 50 steps, uniform spacing, eta 1"
    assert SamplerOptions("ddim", 10, eta=0.0).to_dict()["eta"] == 0.0
    unipc = SamplerOptions("unipc", 15, "trailing")
    assert unipc.to_dict() == {"sampler": "unipc", "steps": 15, "spacing": "trailing", "eta": None}
    assert not unipc.draws_noise and RELEASED.draws_noise and SamplerOptions("dpmpp_2m_sde", 10).draws_noise
    assert RECOMMENDED.sampler in sampler_names() and RECOMMENDED.steps < RELEASED.steps
