"""Samplers as pure functions over a `Denoise` and an increasing logsnr grid
(docs/methods/samplers.md).

The transitions they step with live in `difflab.diffusion.transitions`; grids in `grids.py`, each
sampler's measured default grid in `defaults.py`, batched generation in `generate.py`.
"""

from .addim import VarianceTable, analytic_x_var, measure_x_var, sample_addim
from .cov_ddim import (
    BandBasis,
    measure_posterior_spectrum,
    sample_cov_ddim,
    sample_cov_ddim_table,
    tweedie_band_covariance,
)
from .cov_dpmpp import sample_cov_dpmpp_2m, sample_cov_dpmpp_2m_table
from .ddim import sample_ddim, sample_ddpm
from .defaults import DEFAULT_GRIDS, GRID_CHOICES, default_grid, describe_grid, resolve_grid
from .dpmpp import sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m
from .dual_rate import (
    DualRateDenoise,
    DualRateFactory,
    refresh_schedule,
    sample_dual_rate_ddpm,
)
from .euler import sample_euler, sample_heun
from .generate import Generation, generate
from .grids import (
    GridChoice,
    check_grid,
    edm_grid,
    edm_grid_for_schedule,
    shift_interior,
    uniform_logsnr_grid,
    uniform_t_grid,
)
from .registry import SAMPLERS, SamplerSpec, get_sampler, register_sampler
from .unipc import sample_unipc

__all__ = [
    "DEFAULT_GRIDS",
    "GRID_CHOICES",
    "SAMPLERS",
    "BandBasis",
    "DualRateDenoise",
    "DualRateFactory",
    "Generation",
    "GridChoice",
    "SamplerSpec",
    "VarianceTable",
    "analytic_x_var",
    "check_grid",
    "default_grid",
    "describe_grid",
    "edm_grid",
    "edm_grid_for_schedule",
    "generate",
    "get_sampler",
    "measure_posterior_spectrum",
    "measure_x_var",
    "register_sampler",
    "resolve_grid",
    "sample_addim",
    "sample_cov_ddim",
    "sample_cov_ddim_table",
    "sample_cov_dpmpp_2m",
    "sample_cov_dpmpp_2m_table",
    "sample_ddim",
    "sample_ddpm",
    "refresh_schedule",
    "sample_dpmpp_2m",
    "sample_dual_rate_ddpm",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m",
    "sample_euler",
    "sample_heun",
    "sample_unipc",
    "shift_interior",
    "tweedie_band_covariance",
    "uniform_logsnr_grid",
    "uniform_t_grid",
]
