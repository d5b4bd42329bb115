"""DDIM (Song et al. 2021) and DDPM ancestral sampling (Ho et al. 2020) in logsnr form.

One transition from level `l_t` to `l_s > l_t` given `x_hat = E[x | z_t]` and
`eps_hat = (z_t - alpha_t x_hat) / sigma_t`:

    z_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_hat + c * noise,
    c^2 = eta^2 * sigma_s^2 (1 - e^{l_t - l_s})

`c^2` at `eta = 1` is the variance of the Gaussian diffusion posterior `q(z_s | z_t, x)`
(DDIM eq. 16; VDM eq. 33), so `eta = 1` is DDPM's ancestral step, `eta = 0` deterministic DDIM,
whose update is `DDIM_{t->s}(x, z_t) = alpha_s x + (sigma_s / sigma_t)(z_t - alpha_t x)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..diffusion.parameterization import Denoise, alpha_sigma, broadcast_logsnr
from .grids import check_grid
from .registry import register_sampler

Callback = Callable[[dict], None]


def prepare_grid(z: Tensor, logsnrs: Tensor) -> Tensor:
    """Validate a grid and cast it to `z`'s device/dtype (one host sync, before the loop)."""
    if not isinstance(z, Tensor) or z.ndim < 2:
        raise ValueError("z must be a tensor [B, ...] with a batch dimension")
    check_grid(logsnrs)
    return logsnrs.to(device=z.device, dtype=z.dtype)


def level_for(logsnr: Tensor, z: Tensor) -> Tensor:
    """The level passed to the denoiser: one per example (`[B]`) for a scalar grid entry,
    else the per-element entry itself."""
    return logsnr.expand(z.shape[0]) if logsnr.ndim == 0 else logsnr


def eps_from_z(z: Tensor, x_hat: Tensor, logsnr: Tensor) -> Tensor:
    alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, z))
    return (z - alpha * x_hat) / sigma


def ddim_step(
    z: Tensor,
    x_hat: Tensor,
    logsnr_t: Tensor,
    logsnr_s: Tensor,
    *,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """One DDIM(eta) transition `z_t -> z_s` (module docstring); `noise` is needed iff eta > 0."""
    l_t, l_s = broadcast_logsnr(logsnr_t, z), broadcast_logsnr(logsnr_s, z)
    alpha_s, sigma_s = alpha_sigma(l_s)
    eps_hat = eps_from_z(z, x_hat, l_t)
    z_s = alpha_s * x_hat
    if eta == 0:
        return z_s + sigma_s * eps_hat
    # 1 - e^{l_t - l_s} via expm1 for accuracy on close levels; 1 at l_s = +inf
    keep = -torch.expm1(l_t - l_s)
    c = eta * sigma_s * keep.sqrt()
    return z_s + (sigma_s**2 - c**2).clamp_min(0).sqrt() * eps_hat + c * noise


def _run(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    eta: float,
    generator: torch.Generator | None,
    callback: Callback | None,
) -> Tensor:
    logsnrs = prepare_grid(z, logsnrs)
    for i in range(logsnrs.shape[0] - 1):
        l_t, l_s = logsnrs[i], logsnrs[i + 1]
        x_hat = denoise(z, level_for(l_t, z))
        noise = None
        if eta > 0:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = ddim_step(z, x_hat, l_t, l_s, eta=eta, noise=noise)
        if callback is not None:
            callback({"i": i, "z": z, "x_hat": x_hat, "logsnr": l_t})
    return z


@register_sampler("ddim")
def sample_ddim(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DDIM(eta): deterministic at `eta = 0` (default), ancestral at `eta = 1`. NFE = steps."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    return _run(denoise, z, logsnrs, eta, generator, callback)


@register_sampler("ddpm", stochastic=True)
def sample_ddpm(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DDPM ancestral sampling: draw `z_s ~ q(z_s | z_t, x = x_hat)` each step. NFE = steps."""
    return _run(denoise, z, logsnrs, 1.0, generator, callback)
