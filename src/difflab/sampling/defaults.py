"""Which grid a sampler uses: each sampler's measured default grid, and `grid` arguments
(`"default"`, a family name, or an explicit tensor) resolved to a grid.

The default is the grid that gave the sampler the lowest exact Frechet distance on the
image-like oracle, geometric mean over NFE 4, 6, 8, 10, 16, 32 (`benchmarks/samplers_grids.py`;
the table is in results/samplers/README.md), except `cov_ddim` and `cov_ddim_table`, whose grid
was chosen for the mode weights on oracles with other spectra and component counts
(`benchmarks/samplers_oracles.py`; docs/methods/cov_ddim.md, "Mode weights"). The families
themselves are in `grids.py`; this table stays apart because it is a measurement, not a
construction.
"""

from __future__ import annotations

from torch import Tensor

from ..diffusion.schedules import Schedule
from .grids import GRIDS, GridChoice, check_steps, make_grid
from .registry import get_sampler

GRID_CHOICES = ("default", *GRIDS)
"""`grid` values of `generate`: a family of `grids.GRIDS`, or each sampler's measured default."""

DEFAULT_GRIDS: dict[str, GridChoice] = {
    "ddim": GridChoice("uniform_t"),
    "ddpm": GridChoice("uniform_t"),
    "euler": GridChoice("uniform_t"),
    "heun": GridChoice("edm", edm_range=True),
    "dpmpp_2m": GridChoice("uniform_logsnr", edm_range=True),
    "dpmpp_3m": GridChoice("uniform_t"),
    "unipc": GridChoice("uniform_logsnr", edm_range=True),
    "addim": GridChoice("uniform_t", shift=-2.0),
    # unshifted: the shifted grid's last level (logsnr 1.2 at 8 steps) leaves the modes of a
    # mixture with close components to one Gaussian draw (docs/methods/cov_ddim.md, "Mode weights")
    "cov_ddim": GridChoice("uniform_t"),
    "cov_ddim_table": GridChoice("uniform_t"),
    # 2M's grid: on the MNIST U-ViT 30.0 vs 56.8 on uniform-t (results/cov_ddim_mnist/README.md)
    "dpmpp_2m_sde": GridChoice("uniform_logsnr", edm_range=True),  # 2M's (not studied apart)
    "cov_dpmpp_2m": GridChoice("uniform_logsnr", edm_range=True),
    "cov_dpmpp_2m_table": GridChoice("uniform_logsnr", edm_range=True),
}
"""Sampler -> default grid (measured; see the module docstring)."""


def default_grid(sampler: str, schedule: Schedule, steps: int) -> Tensor:
    """The documented default grid of `sampler` over `schedule` (`DEFAULT_GRIDS`; samplers
    registered elsewhere get uniform-t)."""
    get_sampler(sampler)  # unknown names raise with the list of known ones
    return DEFAULT_GRIDS.get(sampler, GridChoice()).build(schedule, check_steps(steps))


def resolve_grid(grid: str | Tensor, sampler: str, schedule: Schedule, steps: int) -> Tensor:
    """The logsnr grid for `grid`: `"default"` (the sampler's `DEFAULT_GRIDS` entry), a family
    name, or an explicit increasing grid of `steps + 1` levels."""
    check_steps(steps)
    if isinstance(grid, Tensor):
        if grid.ndim < 1 or grid.shape[0] != steps + 1:
            raise ValueError(
                f"grid must have steps + 1 = {steps + 1} levels along dim 0, "
                f"got shape {tuple(grid.shape)}"
            )
        return grid
    if grid == "default":
        return default_grid(sampler, schedule, steps)
    return make_grid(grid, schedule, steps)


def describe_grid(grid: str | Tensor, sampler: str) -> str:
    """A readable name of `grid` for logs and result files (the default resolved)."""
    if isinstance(grid, Tensor):
        return "explicit"
    if grid == "default":
        return f"default: {DEFAULT_GRIDS.get(sampler, GridChoice()).label}"
    return grid
