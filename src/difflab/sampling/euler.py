"""Euler and Heun on the probability-flow ODE in EDM's variables (Karras et al. 2022, Alg. 1-2).

EDM writes the ODE for the unscaled state `x = z / alpha` at the noise level
`s = sigma / alpha = exp(-logsnr / 2)` (eq. 4 with `s(t) = 1`):

    dx/ds = (x - D(x; s)) / s,      D(x; s) = x_hat(alpha x, logsnr).

Euler's step `x' = x + (s' - s)(x - D) / s = D + (s'/s)(x - D)` multiplied by `alpha'` is
`z' = alpha' x_hat + (sigma'/sigma)(z - alpha x_hat)`: Euler on this ODE *is* DDIM(eta = 0)
(tested to round-off). Heun averages the slope at both ends (second order); the last step to
`s = 0` (logsnr = +inf) has no slope there, so it is an Euler step that returns `x_hat`, and a
grid ending at +inf costs `2 * steps - 1` evaluations (EDM's count).

Levels may be per-element (every operation here is elementwise in the level).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion.parameterization import Denoise, alpha_sigma, broadcast_logsnr, level_for
from .grids import check_grid, ends_at_data, prepare_grid
from .registry import Callback, register_sampler


def ve_sigma(logsnr: Tensor) -> Tensor:
    """EDM's noise level `s = sigma / alpha = exp(-logsnr / 2)` (0 at logsnr = +inf)."""
    return torch.exp(-0.5 * logsnr)


def _slope(denoise: Denoise, x: Tensor, logsnr: Tensor, z_like: Tensor) -> tuple[Tensor, Tensor]:
    """`(dx/ds, x_hat)` at level `logsnr` for the unscaled state `x`."""
    level = broadcast_logsnr(logsnr, z_like)
    alpha, _ = alpha_sigma(level)
    x_hat = denoise(alpha * x, level_for(logsnr, z_like))
    return (x - x_hat) / ve_sigma(level), x_hat


@register_sampler("euler")
def sample_euler(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler on EDM's ODE (equals DDIM eta=0 up to round-off). NFE = steps."""
    logsnrs = prepare_grid(z, logsnrs)
    x = z / alpha_sigma(broadcast_logsnr(logsnrs[0], z))[0]
    for i in range(logsnrs.shape[0] - 1):
        l_t, l_s = logsnrs[i], logsnrs[i + 1]
        d, x_hat = _slope(denoise, x, l_t, z)
        s_t, s_s = ve_sigma(broadcast_logsnr(l_t, z)), ve_sigma(broadcast_logsnr(l_s, z))
        x = x + (s_s - s_t) * d
        if callback is not None:
            callback({"i": i, "z": _scaled(x, l_s, z), "x_hat": x_hat, "logsnr": l_t})
    return _scaled(x, logsnrs[-1], z)


def _scaled(x: Tensor, logsnr: Tensor, z_like: Tensor) -> Tensor:
    """Back to the variance-preserving state `z = alpha x`."""
    return alpha_sigma(broadcast_logsnr(logsnr, z_like))[0] * x


def churn_gamma(logsnr: Tensor, churn: float, steps: int, interval: tuple[float, float]) -> Tensor:
    """EDM's `gamma_i = min(S_churn / N, sqrt(2) - 1)` inside `interval` (a logsnr range, EDM's
    `[S_tmin, S_tmax]` in sigma), else 0; elementwise in the level, no host sync."""
    lo, hi = interval
    inside = (logsnr >= lo) & (logsnr <= hi)
    gamma = min(churn / steps, math.sqrt(2.0) - 1.0)
    return torch.where(inside, torch.full_like(logsnr, gamma), torch.zeros_like(logsnr))


@register_sampler("heun", nfe=lambda steps, finite_end=False, **_: 2 * steps - (not finite_end))
def sample_heun(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    churn: float = 0.0,
    churn_interval: tuple[float, float] = (-math.inf, math.inf),
    noise_scale: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """EDM's Heun sampler (Alg. 2; deterministic Alg. 1 at `churn = 0`). NFE = 2 steps - 1 on a
    grid ending at +inf (2 steps otherwise).

    `churn` is EDM's `S_churn`: before each step inside `churn_interval` (logsnr) the level is
    raised to `s_hat = s (1 + gamma)` by adding fresh noise of std `sqrt(s_hat^2 - s^2)` times
    `noise_scale` (`S_noise`); the step then starts from `s_hat`.
    """
    if churn < 0 or noise_scale < 0:
        raise ValueError(f"churn and noise_scale must be >= 0, got {churn}, {noise_scale}")
    clean_end = ends_at_data(check_grid(logsnrs))  # on the caller's grid, before the loop
    logsnrs = prepare_grid(z, logsnrs)
    steps = logsnrs.shape[0] - 1
    x = z / alpha_sigma(broadcast_logsnr(logsnrs[0], z))[0]
    for i in range(steps):
        l_t, l_s = logsnrs[i], logsnrs[i + 1]
        if churn > 0:
            gamma = churn_gamma(l_t, churn, steps, churn_interval)
            l_t = l_t - 2.0 * torch.log1p(gamma)  # s_hat = s (1 + gamma)
            s_old = ve_sigma(broadcast_logsnr(logsnrs[i], z))
            s_hat = ve_sigma(broadcast_logsnr(l_t, z))
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            x = x + noise_scale * (s_hat**2 - s_old**2).clamp_min(0).sqrt() * noise
        s_t, s_s = ve_sigma(broadcast_logsnr(l_t, z)), ve_sigma(broadcast_logsnr(l_s, z))
        d, x_hat = _slope(denoise, x, l_t, z)
        x_next = x + (s_s - s_t) * d
        if i < steps - 1 or not clean_end:
            d_next, _ = _slope(denoise, x_next, l_s, z)
            x_next = x + (s_s - s_t) * 0.5 * (d + d_next)
        x = x_next
        if callback is not None:
            callback({"i": i, "z": _scaled(x, l_s, z), "x_hat": x_hat, "logsnr": l_t})
    return _scaled(x, logsnrs[-1], z)
