"""Each sampler's default grid: the grid that gave it the lowest exact Frechet distance on the
image-like oracle, geometric mean over NFE 4, 6, 8, 10, 16, 32 (`benchmarks/samplers.py
--grid-study-only`; the table is in results/samplers.md).

Grid families (DESIGN.md), each over the model schedule's logsnr range or EDM's
`sigma = exp(-logsnr / 2) in [0.002, 80]` (`edm_range`, intersected with the schedule's range;
EDM treats `z ~ N(0, I)` as pure noise at `sigma = 80`, logsnr = -8.8):

- `uniform_t`: uniform in `t` on the model schedule; `shift` moves the interior levels by that
  much logsnr (negative: more steps at high noise), kept above the starting level by a softplus
  so the grid stays strictly increasing for any number of steps;
- `edm`: Karras et al.'s rho = 7 grid;
- `uniform_logsnr`: uniform in logsnr, both ends evaluated.

All grids end at logsnr = +inf (clean data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..diffusion.schedules import Schedule
from .grids import check_grid, edm_grid, make_grid, uniform_logsnr_grid
from .registry import get_sampler

FAMILIES = ("uniform_t", "edm", "uniform_logsnr")
EDM_SIGMA_RANGE = (0.002, 80.0)


@dataclass(frozen=True)
class GridChoice:
    family: str = "uniform_t"
    shift: float = 0.0
    edm_range: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"grid family must be one of {FAMILIES}, got {self.family!r}")
        if self.shift and self.family != "uniform_t":
            raise ValueError("shift applies to the uniform_t family only")

    @property
    def label(self) -> str:
        shift = f"{self.shift:+g}" if self.shift else ""
        return f"{self.family}{shift}{' (EDM range)' if self.edm_range else ''}"

    def build(self, schedule: Schedule, steps: int) -> Tensor:
        """The grid of `steps` steps (`steps + 1` levels, float64, last +inf)."""
        if not self.edm_range:
            grid = make_grid(self.family, schedule, steps)
            if self.shift:
                grid = shift_interior(grid, self.shift)
            return check_grid(grid)
        lo = max(schedule.logsnr_min, -2.0 * math.log(EDM_SIGMA_RANGE[1]))
        hi = min(schedule.logsnr_max, -2.0 * math.log(EDM_SIGMA_RANGE[0]))
        if self.family == "edm":
            return edm_grid(steps, sigma_min=math.exp(-0.5 * hi), sigma_max=math.exp(-0.5 * lo))
        if self.family == "uniform_logsnr":
            return uniform_logsnr_grid(lo, hi, steps)
        raise ValueError("the EDM range applies to the edm and uniform_logsnr families")


def shift_interior(grid: Tensor, shift: float) -> Tensor:
    """Add `shift` to the interior levels `1..steps-1`, as `l_0 + softplus(l + shift - l_0)`:
    the shift itself wherever it leaves the level well above the start `l_0`, and strictly
    increasing everywhere."""
    out = grid.clone()
    inner = grid[1:-1]
    out[1:-1] = grid[0] + torch.nn.functional.softplus(inner + shift - grid[0])
    return out


DEFAULT_GRIDS: dict[str, GridChoice] = {
    "ddim": GridChoice("uniform_t"),
    "ddpm": GridChoice("uniform_t"),
    "euler": GridChoice("uniform_t"),
    "heun": GridChoice("edm", edm_range=True),
    "dpmpp_2m": GridChoice("uniform_logsnr", edm_range=True),
    "dpmpp_3m": GridChoice("uniform_t"),
    "unipc": GridChoice("uniform_logsnr", edm_range=True),
    "addim": GridChoice("uniform_t", shift=-2.0),
    "cov_ddim": GridChoice("uniform_t", shift=-2.0),
    "cov_ddim_table": GridChoice("uniform_t", shift=-2.0),
    # 2M's grid: on the MNIST U-ViT 30.0 vs 56.8 on uniform-t (results/cov_ddim_mnist.md)
    "dpmpp_2m_sde": GridChoice("uniform_logsnr", edm_range=True),  # 2M's (not studied apart)
    "cov_dpmpp_2m": GridChoice("uniform_logsnr", edm_range=True),
    "cov_dpmpp_2m_table": GridChoice("uniform_logsnr", edm_range=True),
}
"""Sampler -> default grid (measured; see the module docstring)."""


def default_grid(sampler: str, schedule: Schedule, steps: int) -> Tensor:
    """The documented default grid of `sampler` over `schedule` (`DEFAULT_GRIDS`; samplers
    registered elsewhere get uniform-t)."""
    get_sampler(sampler)  # unknown names raise with the list of known ones
    return DEFAULT_GRIDS.get(sampler, GridChoice()).build(schedule, steps)
