"""Noise schedules: decreasing maps `t in [0, 1] -> logsnr`, their inverses and derivatives.

`t = 0` is data, `t = 1` is noise. Everything downstream talks logsnr; a schedule is only used to
draw training levels (`t ~ U(0, 1)`) and to build sampling grids. All maps are vectorised torch
functions, differentiable, and exact inverses of each other on `[0, 1]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


class Schedule:
    """A decreasing map `t -> logsnr` from `logsnr(0) = logsnr_max` to `logsnr(1) = logsnr_min`."""

    logsnr_min: float
    logsnr_max: float

    def logsnr(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_of(self, logsnr: Tensor) -> Tensor:
        """The inverse map `logsnr -> t`; levels outside the range are clamped into it."""
        raise NotImplementedError

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        """`d logsnr / dt` in closed form (negative); autograd of `logsnr` agrees (tested)."""
        raise NotImplementedError

    def __call__(self, t: Tensor) -> Tensor:
        return self.logsnr(t)


def _check_range(logsnr_min: float, logsnr_max: float) -> None:
    if not (math.isfinite(logsnr_min) and math.isfinite(logsnr_max)):
        raise ValueError(f"logsnr_min/logsnr_max must be finite, got {logsnr_min}, {logsnr_max}")
    if not logsnr_min < logsnr_max:
        raise ValueError(f"logsnr_min={logsnr_min} must be below logsnr_max={logsnr_max}")


@dataclass(frozen=True)
class CosineSchedule(Schedule):
    """Cosine schedule `logsnr(t) = -2 log tan(pi t / 2)` (Nichol & Dhariwal 2021 in logsnr
    form, simple diffusion eq. 3), clipped smoothly to `[logsnr_min, logsnr_max]` by mapping `t`
    onto the angle interval whose end points give exactly those levels (as VDM/simple diffusion do):
    `logsnr(t) = -2 log tan(a t + b)`, `b = atan(exp(-logsnr_max / 2))`,
    `a = atan(exp(-logsnr_min / 2)) - b`.
    """

    logsnr_min: float = -15.0
    logsnr_max: float = 15.0

    def __post_init__(self) -> None:
        _check_range(self.logsnr_min, self.logsnr_max)

    def _ab(self) -> tuple[float, float]:
        b = math.atan(math.exp(-0.5 * self.logsnr_max))
        return math.atan(math.exp(-0.5 * self.logsnr_min)) - b, b

    def logsnr(self, t: Tensor) -> Tensor:
        a, b = self._ab()
        return -2.0 * torch.log(torch.tan(a * t + b))

    def t_of(self, logsnr: Tensor) -> Tensor:
        a, b = self._ab()
        return ((torch.atan(torch.exp(-0.5 * logsnr)) - b) / a).clamp(0.0, 1.0)

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        # d/dt [-2 log tan(u)] = -2 a / (sin u cos u) = -4 a / sin(2u)
        a, b = self._ab()
        return -4.0 * a / torch.sin(2.0 * (a * t + b))


@dataclass(frozen=True)
class ShiftedCosineSchedule(Schedule):
    """Cosine schedule shifted for resolution (simple diffusion, eq. 4):
    `logsnr(t) = logsnr_cosine(t) + 2 log(base / resolution)`.

    Average-pooling `s x s` pixels of `z` multiplies the SNR by `s^2`, so a `resolution` image
    with this schedule shows its `base x base` average the noise a `base` model sees. The clip
    range applies to the shifted levels: the unshifted cosine is clipped at
    `[logsnr_min - shift, logsnr_max - shift]`.
    """

    resolution: int = 64
    base: int = 64
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0

    def __post_init__(self) -> None:
        _check_range(self.logsnr_min, self.logsnr_max)
        if self.resolution <= 0 or self.base <= 0:
            raise ValueError(
                f"resolution and base must be positive, got {self.resolution}, {self.base}"
            )

    @property
    def shift(self) -> float:
        return 2.0 * math.log(self.base / self.resolution)

    def _cosine(self) -> CosineSchedule:
        return CosineSchedule(self.logsnr_min - self.shift, self.logsnr_max - self.shift)

    def logsnr(self, t: Tensor) -> Tensor:
        return self._cosine().logsnr(t) + self.shift

    def t_of(self, logsnr: Tensor) -> Tensor:
        return self._cosine().t_of(logsnr - self.shift)

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        return self._cosine().dlogsnr_dt(t)


@dataclass(frozen=True)
class InterpolatedShiftedSchedule(Schedule):
    """Interpolated shifted cosine schedule for high resolutions (simple diffusion, sec. 3.1):
    `logsnr(t) = t * logsnr_shift(noise_low)(t) + (1 - t) * logsnr_shift(noise_high)(t)`, where
    `logsnr_shift(n)` is the cosine schedule shifted by `2 log(n / resolution)` (base `n`).

    Direction (decided, see docs/decisions.md): the **high-noise end (t -> 1) follows the shift of
    the low noise resolution** (`noise_low = 32`: the strongest shift, so global structure is
    formed at the noise a 32x32 model would see) and the low-noise end (t -> 0) follows the weak
    shift of `noise_high` (fine detail sees nearly the unshifted schedule). This is the intent of
    the paper and the reading of lucidrains' public reimplementation; `tests/test_schedules.py`
    pins it down.
    """

    resolution: int = 512
    noise_low: int = 32
    noise_high: int = 256
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0

    def __post_init__(self) -> None:
        _check_range(self.logsnr_min, self.logsnr_max)
        if not 0 < self.noise_low <= self.noise_high:
            raise ValueError(
                f"need 0 < noise_low <= noise_high, got {self.noise_low}, {self.noise_high}"
            )

    @property
    def high_noise_schedule(self) -> ShiftedCosineSchedule:
        """The schedule the t -> 1 end follows (base `noise_low`)."""
        return ShiftedCosineSchedule(
            self.resolution, self.noise_low, self.logsnr_min, self.logsnr_max
        )

    @property
    def low_noise_schedule(self) -> ShiftedCosineSchedule:
        """The schedule the t -> 0 end follows (base `noise_high`)."""
        return ShiftedCosineSchedule(
            self.resolution, self.noise_high, self.logsnr_min, self.logsnr_max
        )

    def logsnr(self, t: Tensor) -> Tensor:
        return t * self.high_noise_schedule.logsnr(t) + (1 - t) * self.low_noise_schedule.logsnr(t)

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        hi, lo = self.high_noise_schedule, self.low_noise_schedule
        return hi.logsnr(t) - lo.logsnr(t) + t * hi.dlogsnr_dt(t) + (1 - t) * lo.dlogsnr_dt(t)

    def t_of(self, logsnr: Tensor) -> Tensor:
        # No closed form: bisection on the monotone map (60 halvings reach float64 precision).
        logsnr = logsnr.clamp(self.logsnr_min, self.logsnr_max)
        lo = torch.zeros_like(logsnr)
        hi = torch.ones_like(logsnr)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.logsnr(mid) > logsnr
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)


@dataclass(frozen=True)
class LinearBetaSchedule(Schedule):
    """DDPM's linear-beta schedule (Ho et al. 2020) as a continuous schedule and an adapter from
    integer timesteps.

    Continuous form (Song et al. 2021, VP-SDE): `-log alpha_bar(t) = b0 t + (b1 - b0) t^2 / 2`
    with `b0 = N beta_start`, `b1 = N beta_end`, so `logsnr = -log(expm1(-log alpha_bar))`.
    `logsnr_at_timestep(n)` gives the discrete `log(alpha_bar_n / (1 - alpha_bar_n))` of the
    `num_timesteps`-step chain, `alpha_bar_n = prod_{i<=n} (1 - beta_i)`.
    """

    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_timesteps: int = 1000

    @property
    def _b0(self) -> float:
        return self.beta_start * self.num_timesteps

    @property
    def _b1(self) -> float:
        return self.beta_end * self.num_timesteps

    def _neg_log_alpha_bar(self, t: Tensor) -> Tensor:
        return self._b0 * t + 0.5 * (self._b1 - self._b0) * t * t

    @property
    def logsnr_min(self) -> float:  # type: ignore[override]
        return float(self.logsnr(torch.tensor(1.0, dtype=torch.float64)))

    @property
    def logsnr_max(self) -> float:  # type: ignore[override]
        return float(self.logsnr_at_timestep(torch.tensor([0]))[0])

    def logsnr(self, t: Tensor) -> Tensor:
        return -torch.log(torch.expm1(self._neg_log_alpha_bar(t)))

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        g = self._neg_log_alpha_bar(t)
        dg = self._b0 + (self._b1 - self._b0) * t
        return -dg / (-torch.expm1(-g))

    def t_of(self, logsnr: Tensor) -> Tensor:
        g = torch.nn.functional.softplus(-logsnr)  # -log alpha_bar = -log sigmoid(logsnr)
        c = self._b1 - self._b0
        t = (-self._b0 + torch.sqrt(self._b0**2 + 2 * c * g)) / c
        return t.clamp(0.0, 1.0)

    def alpha_bar(self) -> Tensor:
        """The discrete `alpha_bar_n`, n = 0..N-1, in float64."""
        betas = torch.linspace(
            self.beta_start, self.beta_end, self.num_timesteps, dtype=torch.float64
        )
        return torch.cumprod(1.0 - betas, 0)

    def logsnr_at_timestep(self, timesteps: Tensor) -> Tensor:
        """Integer DDPM timesteps `n in [0, N)` -> their logsnr (float64)."""
        timesteps = torch.as_tensor(timesteps)
        if timesteps.is_floating_point():
            raise TypeError("timesteps must be integers; use logsnr(t) for continuous time")
        if ((timesteps < 0) | (timesteps >= self.num_timesteps)).any():
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps})")
        ab = self.alpha_bar()[timesteps]
        return torch.log(ab) - torch.log1p(-ab)


@dataclass(frozen=True)
class EDMLogNormalSchedule(Schedule):
    """EDM's training noise distribution as a schedule (Karras et al. 2022, Table 1):
    `log sigma ~ N(p_mean, p_std^2)` with `sigma^2 = exp(-logsnr)`, written as the inverse CDF
    `logsnr(t) = -2 (p_mean + p_std * Phi^{-1}(t))` so that `t ~ U(0, 1)` reproduces it. Clipped
    to `[logsnr_min, logsnr_max]` by restricting `t` to the matching quantile interval.
    """

    p_mean: float = -1.2
    p_std: float = 1.2
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0

    def __post_init__(self) -> None:
        _check_range(self.logsnr_min, self.logsnr_max)

    def _cdf_range(self) -> tuple[float, float]:
        def cdf(logsnr: float) -> float:
            return 0.5 * (1 + math.erf((-0.5 * logsnr - self.p_mean) / (self.p_std * math.sqrt(2))))

        return cdf(self.logsnr_max), cdf(self.logsnr_min)

    def _u(self, t: Tensor) -> Tensor:
        lo, hi = self._cdf_range()
        return lo + (hi - lo) * t

    def logsnr(self, t: Tensor) -> Tensor:
        return -2.0 * (self.p_mean + self.p_std * torch.special.ndtri(self._u(t)))

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        lo, hi = self._cdf_range()
        q = torch.special.ndtri(self._u(t))
        pdf = torch.exp(-0.5 * q * q) / math.sqrt(2 * math.pi)
        return -2.0 * self.p_std * (hi - lo) / pdf

    def t_of(self, logsnr: Tensor) -> Tensor:
        lo, hi = self._cdf_range()
        u = torch.special.ndtr((-0.5 * logsnr - self.p_mean) / self.p_std)
        return ((u - lo) / (hi - lo)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class LinearLogSNRSchedule(Schedule):
    """`logsnr(t) = logsnr_max - t (logsnr_max - logsnr_min)`: uniform in logsnr. The ELBO only
    depends on a schedule's end points (VDM, Kingma et al. 2021, sec. 5.1), so this is also a
    low-variance proposal for estimating likelihoods of a model trained on any schedule."""

    logsnr_min: float = -15.0
    logsnr_max: float = 15.0

    def __post_init__(self) -> None:
        _check_range(self.logsnr_min, self.logsnr_max)

    def logsnr(self, t: Tensor) -> Tensor:
        return self.logsnr_max - t * (self.logsnr_max - self.logsnr_min)

    def t_of(self, logsnr: Tensor) -> Tensor:
        return ((self.logsnr_max - logsnr) / (self.logsnr_max - self.logsnr_min)).clamp(0.0, 1.0)

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(self.logsnr_max - self.logsnr_min))


SCHEDULES = {
    "cosine": CosineSchedule,
    "shifted_cosine": ShiftedCosineSchedule,
    "interpolated_shifted_cosine": InterpolatedShiftedSchedule,
    "linear_beta": LinearBetaSchedule,
    "edm_lognormal": EDMLogNormalSchedule,
    "linear_logsnr": LinearLogSNRSchedule,
}


def make_schedule(name: str, **kwargs) -> Schedule:
    """Build a schedule by registry name (`SCHEDULES`); unknown names list the known ones."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)
