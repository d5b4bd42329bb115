"""Sampling grids: increasing logsnr levels from the noise level of `z` to the data end.

A grid has `steps + 1` levels `l_0 < l_1 < ... < l_steps`; step `i` evaluates the denoiser at
`l_i` and moves to `l_{i+1}`. The last level is `+inf` by default (clean data), where every
sampler's last step returns `x_hat`. Grids are float64 tensors; samplers cast as needed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion.schedules import Schedule


def check_grid(logsnrs: Tensor, name: str = "logsnrs") -> Tensor:
    """Validate a grid: at least two levels along dim 0, no NaN, finite start, strictly
    increasing along dim 0 (the last level may be `+inf`). The value checks read the grid on the
    host, so they run in eager calls and are skipped while `torch.compile` traces a sampler (its
    graph then has no host synchronisation; validate the grid once before compiling)."""
    if not isinstance(logsnrs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logsnrs).__name__}")
    if logsnrs.ndim == 0 or logsnrs.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 levels along dim 0, got {tuple(logsnrs.shape)}")
    if torch.compiler.is_compiling():
        return logsnrs
    if torch.isnan(logsnrs).any():
        raise ValueError(f"{name} contains NaN")
    if not torch.isfinite(logsnrs[:-1]).all():
        raise ValueError(f"{name}: only the last level may be infinite (+inf = clean data)")
    if not (logsnrs[1:] > logsnrs[:-1]).all():
        raise ValueError(f"{name} must be strictly increasing (noise -> data), got {logsnrs}")
    return logsnrs


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def _finish(levels: Tensor, final: float) -> Tensor:
    return torch.cat([levels, torch.tensor([final], dtype=torch.float64)])


def uniform_t_grid(schedule: Schedule, steps: int, *, final: float = math.inf) -> Tensor:
    """Levels at uniformly spaced times `t_i = 1 - i / steps` on `schedule`, then `final`."""
    _check_steps(steps)
    t = 1.0 - torch.arange(steps, dtype=torch.float64) / steps
    return _finish(schedule.logsnr(t), final)


def uniform_logsnr_grid(
    logsnr_min: float, logsnr_max: float, steps: int, *, final: float = math.inf
) -> Tensor:
    """`steps` levels uniformly spaced in logsnr over `[logsnr_min, logsnr_max]` (both ends
    evaluated), then `final`."""
    _check_steps(steps)
    if not logsnr_min < logsnr_max:
        raise ValueError(f"need logsnr_min < logsnr_max, got {logsnr_min}, {logsnr_max}")
    if steps == 1:
        return _finish(torch.tensor([logsnr_min], dtype=torch.float64), final)
    return _finish(torch.linspace(logsnr_min, logsnr_max, steps, dtype=torch.float64), final)


def edm_grid(
    steps: int,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    final: float = math.inf,
) -> Tensor:
    """EDM's rho grid (Karras et al. 2022, eq. 5) in VE sigma, `logsnr = -2 log sigma`:
    `sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`,
    `i = 0..n-1` with `n = steps` evaluations, then `final` (EDM's `sigma = 0`)."""
    _check_steps(steps)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    i = torch.arange(steps, dtype=torch.float64)
    frac = i / max(steps - 1, 1)
    inv = sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return _finish(-2.0 * rho * torch.log(inv), final)


def edm_grid_for_schedule(schedule: Schedule, steps: int, rho: float = 7.0) -> Tensor:
    """EDM rho grid spanning the range of `schedule` (sigma = exp(-logsnr / 2))."""
    return edm_grid(
        steps,
        sigma_min=math.exp(-0.5 * schedule.logsnr_max),
        sigma_max=math.exp(-0.5 * schedule.logsnr_min),
        rho=rho,
    )


GRIDS = ("uniform_t", "edm", "uniform_logsnr")
"""The grid families by name (`make_grid`); `generate(grid="default")` picks a sampler's own."""


def make_grid(name: str, schedule: Schedule, steps: int, *, rho: float = 7.0) -> Tensor:
    """A sampling grid by name over the range of `schedule`."""
    if name == "uniform_t":
        return uniform_t_grid(schedule, steps)
    if name == "edm":
        return edm_grid_for_schedule(schedule, steps, rho=rho)
    if name == "uniform_logsnr":
        return uniform_logsnr_grid(schedule.logsnr_min, schedule.logsnr_max, steps)
    raise ValueError(f"unknown grid {name!r}; known grids: {['default', *GRIDS]}")
