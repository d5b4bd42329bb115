"""Covariance-aware DPM-Solver++(2M): the second-order multistep mean path of `dpmpp.py` with the
per-band posterior-covariance correction of `cov_ddim.py` (derivation: docs/methods/cov_ddim.md,
"Covariance-aware DPM-Solver++(2M)", eqs. M1-M5).

The 2M step is a DDIM step on an extrapolated data estimate (eq. M1): its weights sum to the DDIM
slope `kappa = alpha_s - alpha_t sigma_s / sigma_t = -alpha_s expm1(-h)`, so

    z_s = (sigma_s / sigma_t) z_t + kappa x_bar = DDIM_{t->s}(x_bar, z_t),
    x_bar = D0 + D1 / 2 on a 2M step, x_hat on a first-order step,

and `cov_ddim_step` applies with `x_hat -> x_bar` (eq. M2): stochastically (`+ kappa delta`,
`delta ~ N(0, F^T diag(c) F)`) or deterministically (per band, the noise direction
`eps_bar = (z_t - alpha_t x_bar) / sigma_t` rescaled so its energy grows by `kappa^2 c_b`). With
`c = 0` this is DPM-Solver++(2M) exactly.

`kappa^2 c` is the variance a *first-order* (DDIM) step loses (eq. M3); a second-order step
loses only O(h^3): its extrapolation `D1 / 2` restores the rest (eq. M4). So the correction is
applied in full on first-order steps (warm-up and the step to +inf) and times `order2_weight` on
second-order steps: 0 is consistent (no double counting, exact in the limit on Gaussian data),
1 the plain transfer of the DDIM correction. `eta > 0` starts from the SDE-DPM-Solver++(2M)
(DDIM(eta)) step instead, with its own slope (eq. M5).

Options: the measured defaults (stochastic, `order2_weight = 0`, `eta = 0`, 2M's
`lower_order_final`) and the variants of the benchmarks (`benchmarks/cov_ddim_mnist.py`: the
rules, `order2_weight`, `eta`); `cov_dpmpp_2m` also takes `pooling`/`num_bands` (per-example
levels need `pooling="example"`).

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
from .cov_ddim import BandBasis, Estimate, check_rules, run_cov, table_estimator, tweedie_estimator
from .dpmpp import LOWER_ORDER_FINAL_BELOW, extrapolation_2m, multistep_orders
from .grids import ends_at_data, prepare_grid
from .registry import Callback, register_sampler


def count_jvps(
    steps: int,
    *,
    final: str | None = "stochastic",
    order2_weight: float = 0.0,
    finite_end: bool = False,
    **_,
) -> int:
    """The steps that use the covariance: first-order ones, second-order ones if
    `order2_weight > 0`, not a `final="mean"` last step."""
    orders = multistep_orders(
        steps, 2, lower_final=steps < LOWER_ORDER_FINAL_BELOW, clean_end=not finite_end
    )
    uses_cov = [k == 1 or order2_weight > 0 for k in orders]
    if final == "mean":
        uses_cov[-1] = False
    return sum(uses_cov)


def run_cov_2m(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    estimator: Callable[[Tensor], tuple[BandBasis, Estimate]],
    rules: tuple[str, str | None, float, float],
    generator: torch.Generator | None,
    callback: Callback | None,
) -> Tensor:
    """Validate `rules = (variant, final, order2_weight, eta)`, build the estimator on the
    prepared grid and run `run_cov` on 2M's mean path with per-step covariance weights: 1 on
    first-order steps, `order2_weight` on second-order ones (eq. M4)."""
    variant, final, order2_weight, eta = rules
    final = check_rules(variant, final)
    if not 0.0 <= order2_weight <= 1.0:
        raise ValueError(f"order2_weight must lie in [0, 1], got {order2_weight!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    grid = prepare_grid(z, logsnrs)
    basis, estimate = estimator(grid)
    steps = grid.shape[0] - 1
    orders = multistep_orders(
        steps, 2, lower_final=steps < LOWER_ORDER_FINAL_BELOW, clean_end=ends_at_data(logsnrs)
    )
    weights = [1.0 if k == 1 else order2_weight for k in orders]
    extrapolation = extrapolation_2m(logsnrs, True).to(device=z.device, dtype=z.dtype)
    return run_cov(
        denoise, z, grid, estimate, basis, variant, final, generator, callback,
        extrapolation=extrapolation, cov_weights=weights, eta=eta,
    )  # fmt: skip


@register_sampler("cov_dpmpp_2m", jvps=count_jvps, stochastic=True)
def sample_cov_dpmpp_2m(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    variant: str = "stochastic",
    final: str | None = "stochastic",
    order2_weight: float = 0.0,
    eta: float = 0.0,
    pooling: str = "batch",
    num_bands: int | None = None,
    data_bound: float | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Covariance-aware DPM-Solver++(2M), covariance from one forward+JVP per step. NFE = steps.

    `variant`, `final` ("stochastic" | "deterministic" | "mean"; None: the variant), `pooling`,
    `num_bands` and `data_bound` as in `cov_ddim`; `order2_weight` in [0, 1] scales the
    correction on second-order steps (eq. M4; 0 skips their JVPs); `eta` in [0, 1]: DDIM(eta)
    white noise (1: SDE-DPM-Solver++(2M)). With a zero covariance it is `dpmpp_2m`.
    """

    def estimator(grid: Tensor):
        return tweedie_estimator(
            denoise,
            z,
            grid,
            pooling=pooling,
            num_bands=num_bands,
            data_bound=data_bound,
            generator=generator,
        )

    rules = (variant, final, order2_weight, eta)
    return run_cov_2m(denoise, z, logsnrs, estimator, rules, generator, callback)


@register_sampler("cov_dpmpp_2m_table", stochastic=True)
def sample_cov_dpmpp_2m_table(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    table: VarianceTable | None = None,
    variant: str = "stochastic",
    final: str | None = "stochastic",
    order2_weight: float = 0.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Covariance-aware DPM-Solver++(2M) with a tabulated DCT posterior spectrum (no JVP).
    NFE = steps.

    `table`: `measure_posterior_spectrum` of the model (None: aDDIM's analytic `x_var`); the
    other options as in `cov_dpmpp_2m`. Works with per-example levels.
    """
    rules = (variant, final, order2_weight, eta)
    return run_cov_2m(
        denoise, z, logsnrs, lambda _: table_estimator(denoise, z, table), rules, generator,
        callback,
    )  # fmt: skip
