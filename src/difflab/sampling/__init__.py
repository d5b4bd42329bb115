"""Samplers as pure functions over a `Denoise` and an increasing logsnr grid (DESIGN.md)."""

from .ddim import ddim_step, sample_ddim, sample_ddpm
from .grids import check_grid, edm_grid, edm_grid_for_schedule, uniform_logsnr_grid, uniform_t_grid
from .registry import SAMPLERS, SamplerSpec, get_sampler, register_sampler

__all__ = [
    "SAMPLERS",
    "SamplerSpec",
    "check_grid",
    "ddim_step",
    "edm_grid",
    "edm_grid_for_schedule",
    "get_sampler",
    "register_sampler",
    "sample_ddim",
    "sample_ddpm",
    "uniform_logsnr_grid",
    "uniform_t_grid",
]
