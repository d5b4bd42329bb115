"""Sampling grids: increasing logsnr levels from the noise level of `z` to the data end, their
construction (the families `uniform_t`, `edm`, `uniform_logsnr`, `GridChoice`) and their checks.

A grid has `steps + 1` levels `l_0 < l_1 < ... < l_steps` along dim 0; step `i` evaluates the
denoiser at `l_i` and moves to `l_{i+1}`. The last level is `+inf` by default (clean data), where
every sampler's last step returns `x_hat`. Grids are float64 tensors; samplers cast as needed.
Further dims hold per-example or per-element levels (`[steps + 1, B, ...]`).

Families, each over the model schedule's logsnr range or EDM's `sigma = exp(-logsnr / 2) in
[0.002, 80]` (`GridChoice.edm_range`, intersected with the schedule's range; EDM treats
`z ~ N(0, I)` as pure noise at `sigma = 80`, logsnr = -8.8):

- `uniform_t`: uniform in `t` on the model schedule; `shift` moves the interior levels by that
  much logsnr (negative: more steps at high noise), kept above the starting level by a softplus
  so that the grid stays strictly increasing for any number of steps (`shift_interior`);
- `edm`: Karras et al.'s rho grid (rho = 7);
- `uniform_logsnr`: uniform in logsnr, both ends evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..diffusion.parameterization import broadcast_logsnr
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


def prepare_grid(z: Tensor, logsnrs: Tensor) -> Tensor:
    """Validate a grid (`check_grid`) and cast it to `z`'s device and dtype: the sampler's host
    reads, before its step loop."""
    if not isinstance(z, Tensor) or z.ndim < 2:
        raise ValueError("z must be a tensor [B, ...] with a batch dimension")
    check_grid(logsnrs)
    return logsnrs.to(device=z.device, dtype=z.dtype)


def ends_at_data(logsnrs: Tensor) -> bool:
    """Whether the grid ends at +inf (clean data); a last row mixing +inf and finite levels is a
    ValueError. One host read, before any step loop."""
    last = torch.isinf(logsnrs[-1])
    if bool(last.any()) != bool(last.all()):
        raise ValueError("logsnrs: the last level must be +inf everywhere or finite everywhere")
    return bool(last.all())


def grid_float64(logsnrs: Tensor) -> Tensor:
    """The grid on the CPU in float64, for step coefficients computed before the loop."""
    return logsnrs.detach().to(device="cpu", dtype=torch.float64)


def check_level_per_image(logsnr: Tensor, z: Tensor, image_dims: int = 3) -> None:
    """A level must be constant over the last `image_dims` dims of `z` (`[C, H, W]`): samplers
    that pool over an image need one level per image. Shapes only, no host sync."""
    level = broadcast_logsnr(logsnr, z)
    if level.ndim and any(s != 1 for s in level.shape[-image_dims:]):
        raise ValueError(
            f"need one level per image: logsnr of shape {tuple(logsnr.shape)} varies over the "
            f"last {image_dims} dims of z {tuple(z.shape)}"
        )


def check_steps(steps: int) -> int:
    """`steps` must be an integer >= 1 (a ValueError naming `steps` otherwise)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return steps


def _finish(levels: Tensor, final: float) -> Tensor:
    return torch.cat([levels, torch.tensor([final], dtype=torch.float64)])


def uniform_t_grid(schedule: Schedule, steps: int, *, final: float = math.inf) -> Tensor:
    """Levels at uniformly spaced times `t_i = 1 - i / steps` on `schedule`, then `final`."""
    check_steps(steps)
    t = 1.0 - torch.arange(steps, dtype=torch.float64) / steps
    return _finish(schedule.logsnr(t), final)


def uniform_logsnr_grid(
    logsnr_min: float, logsnr_max: float, steps: int, *, final: float = math.inf
) -> Tensor:
    """`steps` levels uniformly spaced in logsnr over `[logsnr_min, logsnr_max]` (both ends
    evaluated), then `final`."""
    check_steps(steps)
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
    check_steps(steps)
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
EDM_SIGMA_RANGE = (0.002, 80.0)


def make_grid(name: str, schedule: Schedule, steps: int, *, rho: float = 7.0) -> Tensor:
    """A sampling grid by name over the range of `schedule`."""
    if name == "uniform_t":
        return uniform_t_grid(schedule, steps)
    if name == "edm":
        return edm_grid_for_schedule(schedule, steps, rho=rho)
    if name == "uniform_logsnr":
        return uniform_logsnr_grid(schedule.logsnr_min, schedule.logsnr_max, steps)
    raise ValueError(f"unknown grid {name!r}; known grids: {['default', *GRIDS]}")


def shift_interior(grid: Tensor, shift: float) -> Tensor:
    """Add `shift` to the interior levels `1..steps-1`, as `l_0 + softplus(l + shift - l_0)`:
    the shift itself wherever it leaves the level well above the start `l_0`, and strictly
    increasing everywhere (softplus is increasing and positive)."""
    out = grid.clone()
    out[1:-1] = grid[0] + torch.nn.functional.softplus(grid[1:-1] + shift - grid[0])
    return out


@dataclass(frozen=True)
class GridChoice:
    """A grid family over a schedule's range (`edm_range`: intersected with EDM's sigma range),
    with the `uniform_t` interior shifted by `shift` logsnr (module docstring)."""

    family: str = "uniform_t"
    shift: float = 0.0
    edm_range: bool = False

    def __post_init__(self) -> None:
        if self.family not in GRIDS:
            raise ValueError(f"grid family must be one of {GRIDS}, got {self.family!r}")
        if self.shift and self.family != "uniform_t":
            raise ValueError("shift applies to the uniform_t family only")
        if self.edm_range and self.family == "uniform_t":
            raise ValueError("the EDM range applies to the edm and uniform_logsnr families")

    @property
    def label(self) -> str:
        shift = f"{self.shift:+g}" if self.shift else ""
        return f"{self.family}{shift}{' (EDM range)' if self.edm_range else ''}"

    def build(self, schedule: Schedule, steps: int) -> Tensor:
        """The grid of `steps` steps (`steps + 1` levels, float64, last +inf)."""
        if not self.edm_range:
            grid = make_grid(self.family, schedule, steps)
            return check_grid(shift_interior(grid, self.shift) if self.shift else grid)
        lo = max(schedule.logsnr_min, -2.0 * math.log(EDM_SIGMA_RANGE[1]))
        hi = min(schedule.logsnr_max, -2.0 * math.log(EDM_SIGMA_RANGE[0]))
        if self.family == "edm":
            return edm_grid(steps, sigma_min=math.exp(-0.5 * hi), sigma_max=math.exp(-0.5 * lo))
        return uniform_logsnr_grid(lo, hi, steps)
