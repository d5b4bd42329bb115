"""DDIM (Song et al. 2021) and DDPM ancestral sampling (Ho et al. 2020) in logsnr form.

Each step evaluates `x_hat = E[x | z_t]` and moves `z_t -> z_s` with a transition of
`difflab.diffusion.transitions`:

- DDIM(eta): `z_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_hat + c * noise`,
  `c^2 = eta^2 sigma_s^2 (1 - e^{l_t - l_s})`; deterministic at `eta = 0`;
- DDPM: `z_s ~ q(z_s | z_t, x = x_hat)`, the Gaussian diffusion posterior (VDM eq. 33), which is
  DDIM at `eta = 1` in distribution (and to round-off for the same noise; tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion.parameterization import Denoise, level_for
from ..diffusion.transitions import ddim_step, posterior_sample
from .grids import prepare_grid
from .registry import Callback, register_sampler


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
    grid = prepare_grid(z, logsnrs)
    for i in range(grid.shape[0] - 1):
        x_hat = denoise(z, level_for(grid[i], z))
        noise = None
        if eta > 0:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = ddim_step(z, x_hat, grid[i], grid[i + 1], eta=eta, noise=noise)
        if callback is not None:
            callback({"i": i, "z": z, "x_hat": x_hat, "logsnr": grid[i]})
    return z


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
    grid = prepare_grid(z, logsnrs)
    for i in range(grid.shape[0] - 1):
        x_hat = denoise(z, level_for(grid[i], z))
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = posterior_sample(z, x_hat, grid[i], grid[i + 1], noise)
        if callback is not None:
            callback({"i": i, "z": z, "x_hat": x_hat, "logsnr": grid[i]})
    return z
