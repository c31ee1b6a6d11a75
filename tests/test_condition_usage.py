"""The condition-usage diagnostic: gain 0 for an expert that ignores its condition, near 1 for an oracle."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from ldm.diffusion.schedule import NoiseSchedule
from ldm.errors import UserError
from ldm.evaluation.condition_usage import condition_usage, eps_error_profile, roll_conditions

SCHEDULE = NoiseSchedule()


class IdentityVAE(nn.Module):
    def encode(self, x):
        return SimpleNamespace(mean=x)


class OracleExpert(nn.Module):
    """The condition is x0 itself: the exact ε follows from x_t and x0."""

    def encode(self, condition):
        return condition

    def forward(self, x_t, t, context):
        return SCHEDULE.predict_eps(x_t, t, context).float()


class BlindExpert(OracleExpert):
    """Ignores its condition (uses a constant x0 guess)."""

    def forward(self, x_t, t, context):
        return SCHEDULE.predict_eps(x_t, t, torch.zeros_like(x_t)).float()


def model_with(expert):
    return SimpleNamespace(expert=expert, vae=IdentityVAE(), scale_factor=1.0, schedule=SCHEDULE)


def test_oracle_uses_its_condition_and_a_blind_expert_does_not():
    images = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    oracle = condition_usage(model_with(OracleExpert()), images, images, torch.Generator().manual_seed(1))
    blind = condition_usage(model_with(BlindExpert()), images, images, torch.Generator().manual_seed(1))
    assert [(r["t_lo"], r["t_hi"]) for r in oracle] == [(0, 300), (300, 700), (700, 1000)]
    assert all(r["true"] < 1e-6 and r["mismatched"] > 1e-3 and r["gain"] > 0.99 for r in oracle)
    assert all(r["gain"] == 0.0 and r["true"] == r["mismatched"] for r in blind)


def test_roll_gives_every_row_another_rows_condition():
    assert roll_conditions(["a", "b", "c"]) == ["c", "a", "b"]
    assert torch.equal(roll_conditions(torch.arange(3)), torch.tensor([2, 0, 1]))


def test_bad_inputs_are_named():
    images = torch.zeros(1, 3, 8, 8)
    with pytest.raises(UserError, match="at least 2 images"):
        condition_usage(model_with(OracleExpert()), images, images, torch.Generator())
    with pytest.raises(UserError, match="band"):
        condition_usage(model_with(OracleExpert()), torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), torch.Generator(), bands=[(0, 2000)])


def test_error_profile_oracle_beats_the_trivial_predictor_and_blind_equals_it():
    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    oracle = eps_error_profile(model_with(OracleExpert()), images, images, torch.Generator().manual_seed(1), timesteps=(999, 500, 10))
    blind = eps_error_profile(model_with(BlindExpert()), images, images, torch.Generator().manual_seed(1), timesteps=(999, 500, 10))
    assert [r["t"] for r in oracle] == [999, 500, 10]
    assert all(r["model"] < 1e-6 < r["trivial"] for r in oracle)
    assert all(r["model"] == pytest.approx(r["trivial"], rel=1e-5) for r in blind)
    assert blind[0]["trivial"] < 1e-3 < blind[2]["trivial"]  # nearly exact at large t, useless at small t
    with pytest.raises(UserError, match="timesteps"):
        eps_error_profile(model_with(OracleExpert()), images, images, torch.Generator(), timesteps=(1000,))
