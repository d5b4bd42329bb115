"""aDDIM: DDIM with the variance of the data posterior put back (Heek, Hoogeboom, Salimans 2024,
"Multistep Consistency Models", sec. 4; docs/methods/addim.md).

DDIM moves along `z_s = alpha_s x + (sigma_s / sigma_t)(z_t - alpha_t x)`, which is linear in `x`
with slope `kappa = alpha_s - alpha_t sigma_s / sigma_t`. Plugging in the mean `x_hat` instead of a
draw from `p(x | z_t)` loses `kappa^2 Var[x | z_t]` of variance per dimension, and few-step DDIM
samples come out too smooth. aDDIM puts it back along the predicted noise direction:

    z_s = alpha_s x_hat + sqrt(sigma_s^2 + (d / ||eps_hat||^2) kappa^2 x_var) eps_hat,

with `||eps_hat||` per example and `x_var` a per-dimension estimate of `Var[x | z_t]`: either the
analytic `0.1 / (2 + e^{logsnr})` or `eta ||x - x_hat||^2 / d` measured on data (`eta = 0.75`),
tabulated in logsnr (`measure_x_var`). As `x_var -> 0` (or `s -> t`, where `kappa -> 0`) this is
DDIM. The last step (to +inf) has `kappa = 1`: it returns `x_hat` plus the rescaled `eps_hat`.

Levels may be per-element (`x_var` and `kappa` are elementwise); the norm is per example.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..diffusion.parameterization import (
    Denoise,
    alpha_sigma,
    broadcast_logsnr,
    diffuse,
    eps_from_x,
    level_for,
)
from ..diffusion.transitions import ddim_slope
from .grids import prepare_grid
from .registry import Callback, register_sampler

XVar = Callable[[Tensor], Tensor]
"""`logsnr -> x_var`, the per-dimension posterior variance estimate (broadcasts like logsnr)."""


def analytic_x_var(logsnr: Tensor) -> Tensor:
    """The aDDIM paper's estimate `x_var = 0.1 / (2 + e^{logsnr})`."""
    return 0.1 / (2.0 + torch.exp(logsnr))


@dataclass(frozen=True)
class VarianceTable:
    """A variance tabulated at increasing `logsnrs` `[n]`: `values` `[n, *rest]` (a scalar per
    level for aDDIM's `x_var`, a DCT spectrum for `cov_ddim_table`). Called on levels of any
    shape it returns `[*levels.shape, *rest]`, linearly interpolated in logsnr and constant beyond
    the ends (tensor ops only: no host sync inside a sampling loop)."""

    logsnrs: Tensor
    values: Tensor

    def __post_init__(self) -> None:
        if self.logsnrs.ndim != 1 or self.values.shape[:1] != self.logsnrs.shape:
            raise ValueError(
                f"logsnrs must be 1-D [n] and values [n, ...], got {tuple(self.logsnrs.shape)} "
                f"and {tuple(self.values.shape)}"
            )
        if self.logsnrs.shape[0] < 2 or not (self.logsnrs[1:] > self.logsnrs[:-1]).all():
            raise ValueError("logsnrs must be strictly increasing with at least 2 entries")
        if (self.values < 0).any():
            raise ValueError("variance values must be >= 0")

    def __call__(self, logsnr: Tensor) -> Tensor:
        grid = self.logsnrs.to(device=logsnr.device, dtype=logsnr.dtype)
        vals = self.values.to(device=logsnr.device, dtype=logsnr.dtype)
        level = logsnr.reshape(-1).clamp(grid[0], grid[-1])
        hi = torch.searchsorted(grid, level.contiguous()).clamp(1, grid.shape[0] - 1)
        lo = hi - 1
        w = ((level - grid[lo]) / (grid[hi] - grid[lo])).reshape(-1, *([1] * (vals.ndim - 1)))
        out = torch.lerp(vals[lo], vals[hi], w)
        return out.reshape((*logsnr.shape, *vals.shape[1:]))


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """`N(0, I)` shaped like `x`, drawn on the generator's device (a CPU generator gives the same
    measurement on every device) and moved to `x`'s."""
    device = x.device if generator is None else generator.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


@torch.no_grad()
def measure_x_var(
    denoise: Denoise,
    data: Tensor,
    logsnrs: Tensor,
    *,
    eta: float = 0.75,
    generator: torch.Generator | None = None,
    batch_size: int = 512,
) -> VarianceTable:
    """Measure `x_var(l) = eta * E ||x - x_hat(z_l)||^2 / d` on `data` `[N, ...]` at each of the
    increasing levels `logsnrs` (finite), one fresh noise draw per example and level."""
    if not eta > 0:
        raise ValueError(f"eta must be positive, got {eta}")
    if not isinstance(data, Tensor) or data.ndim < 2 or data.shape[0] < 1:
        raise ValueError("data must be a tensor [N, ...] with at least one example")
    logsnrs = torch.as_tensor(logsnrs, dtype=torch.float64)
    if not torch.isfinite(logsnrs).all():
        raise ValueError("logsnrs must be finite")
    values = []
    for level in logsnrs:
        total = 0.0
        for x in data.split(batch_size):
            eps = noise_like(x, generator)
            lvl = level.to(device=x.device, dtype=x.dtype).expand(x.shape[0])
            x_hat = denoise(diffuse(x, eps, lvl), lvl)
            total += float((x - x_hat).double().pow(2).sum())
        values.append(eta * total / data[0].numel() / data.shape[0])
    return VarianceTable(logsnrs, torch.tensor(values, dtype=torch.float64))


def addim_step(
    z: Tensor, x_hat: Tensor, logsnr_t: Tensor, logsnr_s: Tensor, x_var: Tensor | float
) -> Tensor:
    """One aDDIM transition `z_t -> z_s` (module docstring)."""
    l_t, l_s = broadcast_logsnr(logsnr_t, z), broadcast_logsnr(logsnr_s, z)
    alpha_s, sigma_s = alpha_sigma(l_s)
    eps_hat = eps_from_x(z, x_hat, l_t)
    kappa = ddim_slope(l_t, l_s)
    dims = tuple(range(1, z.ndim))
    d_over_norm = z[0].numel() / eps_hat.pow(2).sum(dims, keepdim=True)
    scale = (sigma_s**2 + d_over_norm * kappa**2 * x_var).sqrt()
    return alpha_s * x_hat + scale * eps_hat


@register_sampler("addim")
def sample_addim(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    x_var: XVar | float = analytic_x_var,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """aDDIM: DDIM with the posterior variance `x_var(logsnr)` put back. NFE = steps."""
    if not callable(x_var):
        if not isinstance(x_var, (int, float)) or x_var < 0:
            raise ValueError(
                f"x_var must be a callable logsnr -> variance or a float >= 0, got {x_var!r}"
            )
        const = float(x_var)

        def x_var(level: Tensor) -> Tensor:
            return torch.full_like(level, const)

    logsnrs = prepare_grid(z, logsnrs)
    for i in range(logsnrs.shape[0] - 1):
        l_t, l_s = logsnrs[i], logsnrs[i + 1]
        x_hat = denoise(z, level_for(l_t, z))
        z = addim_step(z, x_hat, l_t, l_s, broadcast_logsnr(x_var(l_t), z))
        if callback is not None:
            callback({"i": i, "z": z, "x_hat": x_hat, "logsnr": l_t})
    return z
