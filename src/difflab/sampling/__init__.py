"""Samplers as pure functions over a `Denoise` and an increasing logsnr grid (DESIGN.md)."""

from .addim import VarianceTable, analytic_x_var, measure_x_var, sample_addim
from .cov_ddim import (
    BandBasis,
    measure_posterior_spectrum,
    sample_cov_ddim,
    sample_cov_ddim_table,
    tweedie_band_covariance,
)
from .cov_dpmpp import sample_cov_dpmpp_2m, sample_cov_dpmpp_2m_table, sample_dpmpp_2m_sde
from .ddim import ddim_step, sample_ddim, sample_ddpm
from .defaults import DEFAULT_GRIDS, GridChoice, default_grid
from .dpmpp import sample_dpmpp_2m, sample_dpmpp_3m
from .euler import sample_euler, sample_heun
from .grids import check_grid, edm_grid, edm_grid_for_schedule, uniform_logsnr_grid, uniform_t_grid
from .registry import SAMPLERS, SamplerSpec, get_sampler, register_sampler
from .unipc import sample_unipc

__all__ = [
    "DEFAULT_GRIDS",
    "SAMPLERS",
    "BandBasis",
    "GridChoice",
    "SamplerSpec",
    "VarianceTable",
    "analytic_x_var",
    "check_grid",
    "ddim_step",
    "default_grid",
    "edm_grid",
    "edm_grid_for_schedule",
    "get_sampler",
    "measure_posterior_spectrum",
    "measure_x_var",
    "register_sampler",
    "sample_addim",
    "sample_cov_ddim",
    "sample_cov_ddim_table",
    "sample_cov_dpmpp_2m",
    "sample_cov_dpmpp_2m_table",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m",
    "sample_euler",
    "sample_heun",
    "sample_unipc",
    "tweedie_band_covariance",
    "uniform_logsnr_grid",
    "uniform_t_grid",
]
