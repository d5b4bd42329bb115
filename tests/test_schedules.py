import math

import pytest
import torch

from difflab.diffusion.parameterization import alpha_sigma
from difflab.diffusion.schedules import (
    CosineSchedule,
    EDMLogNormalSchedule,
    InterpolatedShiftedSchedule,
    LinearBetaSchedule,
    LinearLogSNRSchedule,
    ShiftedCosineSchedule,
    make_schedule,
)

SCHEDULES = [
    CosineSchedule(),
    CosineSchedule(-10.0, 8.0),
    ShiftedCosineSchedule(resolution=256, base=64),
    ShiftedCosineSchedule(resolution=16, base=64),
    InterpolatedShiftedSchedule(resolution=512),
    LinearBetaSchedule(),
    EDMLogNormalSchedule(),
    LinearLogSNRSchedule(-12.0, 9.0),
]
T = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_monotone_decreasing(schedule):
    assert (schedule.logsnr(T).diff() < 0).all()


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_inverse(schedule):
    torch.testing.assert_close(schedule.t_of(schedule.logsnr(T)), T, atol=1e-9, rtol=0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_alpha_sigma_unit_norm(schedule):
    alpha, sigma = alpha_sigma(schedule.logsnr(T))
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(T), atol=1e-12, rtol=0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_derivative_matches_autograd_and_finite_differences(schedule):
    t = T.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(schedule.logsnr(t).sum(), t)
    closed = schedule.dlogsnr_dt(T)
    torch.testing.assert_close(closed, grad, rtol=1e-8, atol=1e-8)
    h = 1e-6
    fd = (schedule.logsnr(T + h) - schedule.logsnr(T - h)) / (2 * h)
    torch.testing.assert_close(closed, fd, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("schedule", SCHEDULES[:5], ids=repr)
def test_end_points_are_the_clip_range(schedule):
    ends = schedule.logsnr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(
        ends, torch.tensor([schedule.logsnr_max, schedule.logsnr_min], dtype=torch.float64)
    )


def test_cosine_unclipped_formula():
    sched = CosineSchedule(-30.0, 30.0)
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    expected = -2 * torch.log(torch.tan(math.pi * t / 2))
    torch.testing.assert_close(sched.logsnr(t), expected, atol=1e-5, rtol=0)


def test_shift_property_on_noise():
    """Average-pooling s x s multiplies the SNR by s^2: a `res` image on the shifted schedule,
    pooled to `base`, has the SNR of the unshifted cosine schedule at the same t."""
    gen = torch.Generator().manual_seed(0)
    res, base = 64, 16
    s = res // base
    shifted = ShiftedCosineSchedule(resolution=res, base=base)
    cosine = CosineSchedule()
    for t in (0.3, 0.5, 0.7):
        l = shifted.logsnr(torch.tensor(t, dtype=torch.float64))
        alpha, sigma = alpha_sigma(l)
        # signal constant on s x s blocks (so pooling keeps it), i.i.d. noise per pixel
        x = torch.randn(256, 1, base, base, generator=gen, dtype=torch.float64)
        x = x.repeat_interleave(s, -1).repeat_interleave(s, -2)
        eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        pool = torch.nn.functional.avg_pool2d
        snr_full = (alpha * x).var() / (sigma * eps).var()
        snr_pooled = pool(alpha * x, s).var() / pool(sigma * eps, s).var()
        assert abs(float(snr_pooled / snr_full) / s**2 - 1) < 0.03
        measured = math.log(float(snr_pooled))
        unshifted = float(cosine.logsnr(torch.tensor(t, dtype=torch.float64)))
        assert abs(measured - unshifted) < 0.05


def test_interpolated_direction():
    """t -> 1 follows the strongest shift (noise resolution 32), t -> 0 the weak one (256)."""
    sched = InterpolatedShiftedSchedule(resolution=512, noise_low=32, noise_high=256)
    hi_noise = ShiftedCosineSchedule(resolution=512, base=32)
    lo_noise = ShiftedCosineSchedule(resolution=512, base=256)
    near_noise = torch.tensor([0.98], dtype=torch.float64)
    near_data = torch.tensor([0.02], dtype=torch.float64)
    assert abs(float(sched.logsnr(near_noise) - hi_noise.logsnr(near_noise))) < 0.1
    assert abs(float(sched.logsnr(near_data) - lo_noise.logsnr(near_data))) < 0.1
    # the two shifts differ by about 2 log(256/32) = 4.16 there (less near the clip): the test
    # discriminates the directions
    assert float(lo_noise.logsnr(near_noise) - hi_noise.logsnr(near_noise)) > 3.0


def test_linear_beta_adapter_matches_discrete_chain():
    sched = LinearBetaSchedule()
    n = torch.tensor([0, 99, 499, 999])
    discrete = sched.logsnr_at_timestep(n)
    continuous = sched.logsnr((n.double() + 1) / sched.num_timesteps)
    torch.testing.assert_close(continuous, discrete, atol=0.05, rtol=0.01)
    with pytest.raises(ValueError, match="timesteps"):
        sched.logsnr_at_timestep(torch.tensor([1000]))
    with pytest.raises(TypeError, match="timesteps"):
        sched.logsnr_at_timestep(torch.tensor([0.5]))


def test_edm_lognormal_distribution():
    sched = EDMLogNormalSchedule(logsnr_min=-40, logsnr_max=40)
    t = torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_sigma = -0.5 * sched.logsnr(t)
    assert abs(float(log_sigma.mean()) - sched.p_mean) < 0.01
    assert abs(float(log_sigma.std()) - sched.p_std) < 0.01


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="logsnr_min"):
        CosineSchedule(5.0, -5.0)
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        make_schedule("cosin")
    with pytest.raises(ValueError, match="resolution"):
        ShiftedCosineSchedule(resolution=0)


def _clipped_cosine(t: float, lo: float, hi: float) -> float:
    """`-2 log tan(u)` with the angle `u` linear in t from `atan(e^{-hi/2})` (t = 0, logsnr = hi)
    to `atan(e^{-lo/2})` (t = 1, logsnr = lo): the cosine schedule clipped to [lo, hi]."""
    a, b = math.atan(math.exp(-hi / 2)), math.atan(math.exp(-lo / 2))
    return -2 * math.log(math.tan(a + t * (b - a)))


def test_schedules_follow_their_closed_forms():
    """Each schedule against its formula written out with `math` (simple diffusion eq. 4 for
    the shift, sec. 3.1 for the interpolation), at interior and end points."""
    ts = [0.0, 0.1, 0.37, 0.5, 0.81, 1.0]
    t = torch.tensor(ts, dtype=torch.float64)

    def check(schedule, formula):
        want = torch.tensor([formula(v) for v in ts], dtype=torch.float64)
        torch.testing.assert_close(schedule.logsnr(t), want, rtol=1e-12, atol=1e-12)

    check(CosineSchedule(-10.0, 8.0), lambda v: _clipped_cosine(v, -10.0, 8.0))
    shift = 2 * math.log(64 / 256)  # -2.77: a 256 image seen as its 64x64 average
    check(
        ShiftedCosineSchedule(resolution=256, base=64),
        lambda v: _clipped_cosine(v, -15.0 - shift, 15.0 - shift) + shift,
    )
    low, high = 2 * math.log(32 / 512), 2 * math.log(256 / 512)
    check(
        InterpolatedShiftedSchedule(resolution=512),
        lambda v: (
            v * (_clipped_cosine(v, -15 - low, 15 - low) + low)
            + (1 - v) * (_clipped_cosine(v, -15 - high, 15 - high) + high)
        ),
    )
    check(LinearLogSNRSchedule(-12.0, 9.0), lambda v: 9.0 - 21.0 * v)
