"""Covariance-aware DPM-Solver++(2M): the second-order multistep mean path of `dpmpp.py` with the
per-band posterior-covariance correction of `cov_ddim.py` (derivation: docs/samplers.md,
"Covariance-aware DPM-Solver++(2M)", eqs. M1-M5).

The 2M step is a DDIM step on an extrapolated data estimate (eq. M1): its weights sum to the DDIM
slope `kappa = alpha_s - alpha_t sigma_s / sigma_t = -alpha_s expm1(-h)`, so

    z_s = (sigma_s / sigma_t) z_t + kappa x_bar,   x_bar = sum_j (w_j / kappa) x_hat_{i-j}
        = DDIM_{t->s}(x_bar, z_t),                 x_bar = D0 + D1 / 2 on a 2M step,

and `cov_ddim_step` applies with `x_hat -> x_bar` (eq. M2): stochastically (`+ kappa delta`,
`delta ~ N(0, F^T diag(c) F)`) or deterministically (per band, the noise direction
`eps_bar = (z_t - alpha_t x_bar) / sigma_t` rescaled so its energy grows by `kappa^2 c_b`). With
`c = 0` this is DPM-Solver++(2M) exactly.

`kappa^2 c` is the variance a *first-order* (DDIM) step loses (eq. M3); a second-order step
loses only O(h^3): its extrapolation `D1 / 2` restores the rest (eq. M4). So the correction is
applied in full on first-order steps (warm-up and the step to +inf) and times
`order2_weight` on second-order steps: 0 is consistent (no double counting, exact in the limit
on Gaussian data), 1 the plain transfer of the DDIM correction. `eta > 0` starts from the
SDE-DPM-Solver++(2M) (DDIM(eta)) step instead, with its own slope (eq. M5).

NFE = steps. `cov_dpmpp_2m` makes one forward+JVP on each step that uses the covariance (every
step but a `final="mean"` last step and, with `order2_weight=0`, the second-order steps);
`cov_dpmpp_2m_table` uses `measure_posterior_spectrum`'s table: no JVP.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..diffusion.parameterization import Denoise
from .addim import VarianceTable
from .cov_ddim import (
    BandBasis,
    Estimate,
    MeanPath,
    _check_rules,
    _run,
    table_estimator,
    tweedie_estimator,
)
from .ddim import Callback, prepare_grid
from .dpmpp import LOWER_ORDER_FINAL_BELOW, dpmpp_plan, multistep_orders
from .registry import register_sampler

# order2_weight = 0: consistent (eq. M4), and the best measured (oracle and MNIST U-ViT,
# docs/samplers.md); the rules are within noise of each other on MNIST, stochastic is exact on
# Gaussian data
DEFAULTS = {"variant": "stochastic", "final": "stochastic", "order2_weight": 0.0, "eta": 0.0}


def check_options(variant: str, final: str | None, order2_weight: float, eta: float) -> str:
    """Validate the shared options; returns the last step's rule."""
    final = _check_rules(variant, final)
    if not 0.0 <= order2_weight <= 1.0:
        raise ValueError(f"order2_weight must lie in [0, 1], got {order2_weight!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    return final


def multistep_path(
    z: Tensor, logsnrs: Tensor, lower_order_final: bool, order2_weight: float
) -> MeanPath:
    """Per step the 2M weights normalised by their sum `kappa` (eq. M1; `x_bar` is then an
    affine combination of the outputs) and the covariance weight: 1 on first-order steps,
    `order2_weight` on second-order ones (eq. M4)."""
    path = []
    for _, weights in dpmpp_plan(z, logsnrs, 2, lower_order_final):
        kappa = sum(weights)
        path.append(([w / kappa for w in weights], 1.0 if len(weights) == 1 else order2_weight))
    return path


def _count_jvps(
    steps: int,
    *,
    final: str | None = DEFAULTS["final"],
    order2_weight: float = DEFAULTS["order2_weight"],
    lower_order_final: bool = True,
    finite_end: bool = False,
    **_,
) -> int:
    orders = multistep_orders(
        steps,
        2,
        lower_final=lower_order_final and steps < LOWER_ORDER_FINAL_BELOW,
        clean_end=not finite_end,
    )
    uses_cov = [k == 1 or order2_weight > 0 for k in orders]
    if final == "mean":
        uses_cov[-1] = False
    return sum(uses_cov)


def _run_2m(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    estimator: Callable[[Tensor], tuple[BandBasis, Estimate]],
    variant: str,
    final: str | None,
    order2_weight: float,
    eta: float,
    lower_order_final: bool,
    generator: torch.Generator | None,
    callback: Callback | None,
) -> Tensor:
    """Validate the options, build the basis and estimator on the prepared grid, and run the
    shared loop on the 2M mean path (eq. M2)."""
    final = check_options(variant, final, order2_weight, eta)
    grid = prepare_grid(z, logsnrs)
    basis, estimate = estimator(grid)
    path = multistep_path(z, logsnrs, lower_order_final, order2_weight)  # host grid
    rules = (variant, final, generator, callback)
    return _run(denoise, z, grid, estimate, basis, *rules, path=path, eta=eta)


@register_sampler("cov_dpmpp_2m", jvps=_count_jvps, stochastic=True)
def sample_cov_dpmpp_2m(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    variant: str = DEFAULTS["variant"],
    final: str | None = DEFAULTS["final"],
    order2_weight: float = DEFAULTS["order2_weight"],
    eta: float = DEFAULTS["eta"],
    lower_order_final: bool = True,
    pooling: str = "batch",
    num_bands: int | None = None,
    pool_channels: bool = True,
    probe: str = "rademacher",
    prior_var: float | Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Covariance-aware DPM-Solver++(2M), covariance from one forward+JVP per step. NFE = steps.

    `variant`, `final` ("stochastic" | "deterministic" | "mean"; None: the variant) and the
    covariance options (`pooling`, `num_bands`, `pool_channels`, `probe`, `prior_var`) as in
    `cov_ddim`; `order2_weight` in [0, 1] scales the correction on second-order steps (eq. M4;
    0 skips their JVPs); `eta` in [0, 1]: DDIM(eta) white noise (1: SDE-DPM-Solver++(2M));
    `lower_order_final` as in `dpmpp_2m`. With a zero covariance it is `dpmpp_2m`.
    """

    def estimator(grid: Tensor):
        return tweedie_estimator(denoise, z, grid, pooling=pooling, num_bands=num_bands,
                                 pool_channels=pool_channels, probe=probe, prior_var=prior_var,
                                 generator=generator)  # fmt: skip

    rules = (variant, final, order2_weight, eta, lower_order_final, generator, callback)
    return _run_2m(denoise, z, logsnrs, estimator, *rules)


@register_sampler("cov_dpmpp_2m_table", stochastic=True)
def sample_cov_dpmpp_2m_table(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    table: VarianceTable | None = None,
    variant: str = DEFAULTS["variant"],
    final: str | None = DEFAULTS["final"],
    order2_weight: float = DEFAULTS["order2_weight"],
    eta: float = DEFAULTS["eta"],
    lower_order_final: bool = True,
    num_bands: int | None = None,
    pool_channels: bool = True,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Covariance-aware DPM-Solver++(2M) with a tabulated DCT posterior spectrum (no JVP).
    NFE = steps.

    `table`: `measure_posterior_spectrum` of the model (None: aDDIM's analytic `x_var`); the
    other options as in `cov_dpmpp_2m`. Works with per-example levels.
    """

    def estimator(_grid: Tensor):
        return table_estimator(denoise, z, table, num_bands, pool_channels)

    rules = (variant, final, order2_weight, eta, lower_order_final, generator, callback)
    return _run_2m(denoise, z, logsnrs, estimator, *rules)


@register_sampler("dpmpp_2m_sde", stochastic=True)
def sample_dpmpp_2m_sde(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    eta: float = 1.0,
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", the SDE solver in its midpoint
    form; diffusers' `sde-dpmsolver++`): the 2M data estimate `x_bar = D0 + D1 / 2` (eq. M1)
    in a DDIM(eta) step (eq. M5 with `c = 0`),

        z_s = alpha_s x_bar + sqrt(sigma_s^2 - w^2) eps_bar + w xi,
        w^2 = eta^2 sigma_s^2 (1 - e^{l_t - l_s}),

    which at `eta = 1` is `(sigma_s / sigma_t) e^{-h} z_t + alpha_s (1 - e^{-2h}) x_bar +
    sigma_s sqrt(1 - e^{-2h}) xi` with `h = (l_s - l_t) / 2`; `eta = 0` is `dpmpp_2m`. NFE =
    steps. The best FID on the shipped MNIST model (`results/mnist_10k.md`)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    grid = prepare_grid(z, logsnrs)
    path = multistep_path(z, logsnrs, lower_order_final, 0.0)  # host grid
    # every step is a plain one ("mean": no covariance), so no estimator or basis is needed
    return _run(
        denoise, z, grid, None, None, "mean", "mean", generator, callback, path=path, eta=eta
    )
