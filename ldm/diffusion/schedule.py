"""The forward (noising) process: a fixed schedule of betas and the closed forms built on it.

The schedule is linear in sqrt(beta) ("sqrt-linear"; LDM calls it "linear"):

    beta_t = (sqrt(0.0015) + (sqrt(0.0195) - sqrt(0.0015)) * t / (T - 1)) ** 2,   t = 0 .. T-1
    alpha_bar_t = prod_{s <= t} (1 - beta_s)
    x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps                    (q_sample)

Tables are float64 on the CPU; every method gathers the coefficients for ``t`` there and casts them
to the device and dtype of its tensor input, so the same schedule serves fp32, bf16 and fp64 on any
device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor

Timesteps = Union[Tensor, int]

# The 12 schedule buffers stored at the top level of every released LDM checkpoint, in their order.
RELEASED_BUFFER_NAMES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Discrete-time DDPM noise schedule with sqrt-linear betas (float64 CPU tables)."""

    num_timesteps: int = 1000
    linear_start: float = 0.0015
    linear_end: float = 0.0195

    betas: Tensor = field(init=False, repr=False)  # [T] float64
    alphas_cumprod: Tensor = field(init=False, repr=False)  # [T] alpha_bar_t
    alphas_cumprod_prev: Tensor = field(init=False, repr=False)  # [T] alpha_bar_{t-1}, 1 at t = 0

    def __post_init__(self) -> None:
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be at least 2, got {self.num_timesteps}")
        if not 0.0 < self.linear_start <= self.linear_end < 1.0:
            raise ValueError(
                f"need 0 < linear_start <= linear_end < 1, got {self.linear_start} and {self.linear_end}"
            )
        sqrt_betas = torch.linspace(
            self.linear_start**0.5, self.linear_end**0.5, self.num_timesteps, dtype=torch.float64
        )
        betas = sqrt_betas**2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        # The dataclass is frozen: derived tables are set once, here.
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod)
        object.__setattr__(self, "alphas_cumprod_prev", alphas_cumprod_prev)

    # ----------------------------------------------------------------------------------------
    # Closed forms

    def q_sample(self, x0: Tensor, t: Timesteps, noise: Tensor) -> Tensor:
        """Sample x_t ~ q(x_t | x_0) = sqrt(a_t) x_0 + sqrt(1 - a_t) noise (a = alpha_bar)."""
        a = self._gather(self.alphas_cumprod, t, x0)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise

    def predict_x0(self, x_t: Tensor, t: Timesteps, eps: Tensor) -> Tensor:
        """Invert q_sample for x_0 given the noise: x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)."""
        a = self._gather(self.alphas_cumprod, t, x_t)
        return (x_t - (1.0 - a).sqrt() * eps) / a.sqrt()

    def predict_eps(self, x_t: Tensor, t: Timesteps, x0: Tensor) -> Tensor:
        """Invert q_sample for the noise given x_0: eps = (x_t - sqrt(a_t) x_0) / sqrt(1 - a_t)."""
        a = self._gather(self.alphas_cumprod, t, x_t)
        return (x_t - a.sqrt() * x0) / (1.0 - a).sqrt()

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio a_t / (1 - a_t) at integer timesteps ``t``, float32 on t's device."""
        t = torch.as_tensor(t)
        a = self.alphas_cumprod[self._check_t(t).cpu()]
        return (a / (1.0 - a)).to(device=t.device, dtype=torch.float32)

    def sample_timesteps(
        self,
        batch: int,
        generator: Optional[torch.Generator],
        device: Union[torch.device, str, None] = None,
        logit_normal: Optional[tuple[float, float]] = None,
    ) -> Tensor:
        """Training timesteps in [0, T): LongTensor[batch] on ``device``.

        Uniform (the released training) unless ``logit_normal = (mean, std)``: then t = ⌊T·sigmoid(mean + std·n)⌋,
        n ~ N(0, 1), which draws the middle timesteps more often than the nearly clean and the nearly pure-noise
        ones (the logit-normal of Esser et al., 2024, on the discrete schedule; every t keeps a non-zero chance).
        Drawn on the generator's device (so a CPU generator works for CUDA training), then moved.
        ``generator=None`` falls back on torch's global RNG.
        """
        draw_device = generator.device if generator is not None else device
        if logit_normal is None:
            t = torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=draw_device)
        else:
            mean, std = logit_normal
            if not std > 0:
                raise ValueError(f"the logit-normal timestep std must be positive, got {std}")
            n = torch.randn(batch, generator=generator, device=draw_device, dtype=torch.float64)
            u = torch.sigmoid(mean + std * n)  # (0, 1)
            t = (u * self.num_timesteps).long().clamp_(0, self.num_timesteps - 1)
        return t.to(device) if device is not None else t

    # ----------------------------------------------------------------------------------------
    # Released checkpoint layout

    def released_buffers(self) -> dict[str, Tensor]:
        """The 12 float32 schedule buffers a released LDM checkpoint stores at top level.

        Computed as LDM's ``register_schedule`` does with ``v_posterior = 0`` (in float64, then
        cast): used to check that an official checkpoint was trained with this schedule and to
        write checkpoints in the released layout.
        """
        betas, a, a_prev = self.betas, self.alphas_cumprod, self.alphas_cumprod_prev
        # Posterior q(x_{t-1} | x_t, x_0); its variance is 0 at t = 0, hence the clipped log.
        posterior_variance = betas * (1.0 - a_prev) / (1.0 - a)
        buffers = {
            "betas": betas,
            "alphas_cumprod": a,
            "alphas_cumprod_prev": a_prev,
            "sqrt_alphas_cumprod": a.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - a).sqrt(),
            "log_one_minus_alphas_cumprod": (1.0 - a).log(),
            "sqrt_recip_alphas_cumprod": (1.0 / a).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / a - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
            "posterior_mean_coef1": betas * a_prev.sqrt() / (1.0 - a),
            "posterior_mean_coef2": (1.0 - a_prev) * (1.0 - betas).sqrt() / (1.0 - a),
        }
        assert tuple(buffers) == RELEASED_BUFFER_NAMES
        return {name: value.to(torch.float32) for name, value in buffers.items()}

    # ----------------------------------------------------------------------------------------
    # Helpers

    def _check_t(self, t: Tensor) -> Tensor:
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"timesteps must be an integer tensor, got dtype {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(
                f"timesteps must lie in [0, {self.num_timesteps}), got min {int(t.min())}, max {int(t.max())}"
            )
        return t

    def _gather(self, table: Tensor, t: Timesteps, like: Tensor) -> Tensor:
        """table[t] as [B, 1, ..., 1] in ``like``'s device and dtype (a scalar t serves the batch)."""
        t = self._check_t(torch.as_tensor(t)).cpu()
        if t.dim() == 0:
            t = t.expand(like.shape[0])
        if t.dim() != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(f"timesteps must be a scalar or have shape [{like.shape[0]}], got {tuple(t.shape)}")
        coef = table[t].to(device=like.device, dtype=like.dtype)
        return coef.reshape(-1, *([1] * (like.dim() - 1)))


def min_snr_weight(snr: Tensor, gamma: float, prediction: str = "eps") -> Tensor:
    """Min-SNR-γ loss weights (Hang et al., 2023) for a network trained on ``prediction`` ("eps" or "v").

    In ε-MSE terms the weight is min(SNR, γ) / SNR; a v-loss already carries a factor (SNR + 1) / SNR of it,
    so its weight is min(SNR, γ) / (SNR + 1). Both cap how much the nearly-clean steps (large SNR) dominate.
    """
    if gamma <= 0:
        raise ValueError(f"min-SNR gamma must be positive, got {gamma}")
    capped = snr.clamp(max=gamma)
    if prediction == "eps":
        return capped / snr
    if prediction == "v":
        return capped / (snr + 1.0)
    raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")


LOSS_SPACES = ("eps", "v", "x0")


def loss_space_weight(schedule: NoiseSchedule, t: Tensor, space: str) -> Tensor:
    """Per-sample weights [B] (float32, on t's device) that turn an ε-MSE at timesteps t into the MSE of ``space``.

    For any prediction read as ε̂ at a fixed x_t: v − v̂ = (ε − ε̂) / sqrt(ᾱ_t) and x_0 − x̂_0 = −(ε − ε̂) / sqrt(SNR_t),
    so the weights are 1 ("eps"), 1 / ᾱ_t ("v") and 1 / SNR_t ("x0"). ε weighs every t alike, which leaves the
    large t (where the coarse layout and the global attributes are decided) with almost no share of the loss;
    v weighs them like the small t; x_0 weighs them most and the nearly clean steps hardly at all.
    """
    if space not in LOSS_SPACES:
        raise ValueError(f"loss space must be one of {LOSS_SPACES}, got {space!r}")
    if space == "eps":
        return torch.ones(torch.as_tensor(t).shape, dtype=torch.float32, device=torch.as_tensor(t).device)
    snr = schedule.snr(t)
    if space == "v":
        return (snr + 1.0) / snr  # 1 / ᾱ = (SNR + 1) / SNR
    return 1.0 / snr
