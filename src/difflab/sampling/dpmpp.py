"""DPM-Solver++ 2M and 3M (Lu et al. 2022b, "DPM-Solver++", Alg. 2 and app. B) in logsnr form.

With `lambda = logsnr / 2 = log(alpha / sigma)` and `h = lambda_s - lambda_t`, the exact solution
of the probability-flow ODE in data prediction is (eq. 9)

    z_s = (sigma_s / sigma_t) z_t + alpha_s int_{lambda_t}^{lambda_s} e^{l - lambda_s} x_hat(l) dl,

and a multistep solver replaces `x_hat(l)` by the polynomial through the last `k` denoiser
outputs (`k` = the order). With `phi_1 = expm1(-h)` (`h phi_1(h)` of the paper, negative) and the
step ratios `r_j = h_{j} / h` of the previous steps:

- order 1 (= DDIM): `z_s = (sigma_s/sigma_t) z_t - alpha_s phi_1 D0`
- order 2 (2M):     `... - alpha_s phi_1 / 2 * D1`,  `D1 = (m0 - m1) / r0`
- order 3 (3M):     `... + alpha_s (phi_1/h + 1) D1 - alpha_s ((phi_1 + h)/h^2 - 1/2) D2`
                    with `D1`, `D2` the first and second divided differences (app. B).

The first steps use the orders the history allows (1, then 2); with `lower_order_final` and fewer
than 15 steps the last steps drop to orders 1 (and 2), which stabilises few-step sampling
(diffusers' `lower_order_final`), and a step to logsnr = +inf is always first order: there it
returns `x_hat` exactly (`h = inf`, `alpha_s = 1`, `sigma_s = 0`).

All step coefficients depend on the grid only, so they are computed in float64 before the loop;
the loop itself is a linear combination of the state and the stored denoiser outputs (no host
syncs). Levels may be per-element (coefficients are elementwise in the level).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion.parameterization import Denoise, alpha_sigma, broadcast_logsnr
from .ddim import Callback, level_for, prepare_grid
from .euler import ends_at_data
from .registry import register_sampler

LOWER_ORDER_FINAL_BELOW = 15  # diffusers: lower-order final steps only for short grids


def multistep_orders(steps: int, order: int, *, lower_final: bool, clean_end: bool) -> list[int]:
    """The order of each step: warm-up `min(order, i + 1)`; with `lower_final` also at most the
    number of steps left; a last step to +inf is first order."""
    orders = []
    for i in range(steps):
        o = min(order, i + 1)
        if lower_final:
            o = min(o, steps - i)
        if clean_end and i == steps - 1:
            o = 1
        orders.append(o)
    return orders


def step_ratio_and_alpha(l_t: Tensor, l_s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`(sigma_s / sigma_t, alpha_s, h = (l_s - l_t) / 2)` in float64."""
    alpha_s, sigma_s = alpha_sigma(l_s)
    _, sigma_t = alpha_sigma(l_t)
    return sigma_s / sigma_t, alpha_s, 0.5 * (l_s - l_t)


def dpmpp_weights(levels: list[Tensor], l_s: Tensor, order: int) -> tuple[Tensor, list[Tensor]]:
    """Coefficients `(a, [w_0, .., w_{k-1}])` of one DPM-Solver++ step of order `k`:
    `z_s = a z_t + sum_j w_j m_j`, with `m_j` the denoiser output at `levels[j]` (newest first,
    `levels[0] = l_t`). Float64 in, float64 out."""
    ratio, alpha_s, h = step_ratio_and_alpha(levels[0], l_s)
    phi_1 = torch.expm1(-h)
    if order == 1:
        return ratio, [-alpha_s * phi_1]
    r0 = 0.5 * (levels[0] - levels[1]) / h
    if order == 2:
        # D0 = m0, D1 = (m0 - m1) / r0;  z_s = a z - alpha phi_1 (D0 + D1 / 2)
        c = -0.5 * alpha_s * phi_1 / r0
        return ratio, [-alpha_s * phi_1 + c, -c]
    r1 = 0.5 * (levels[1] - levels[2]) / h
    c1 = alpha_s * (phi_1 / h + 1.0)
    c2 = -2.0 * alpha_s * ((phi_1 + h) / h**2 - 0.5)
    # D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1, D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1),
    # D2 = (D1_0 - D1_1)/(r0+r1): collect the coefficients of D1_0 and D1_1, then of m0, m1, m2.
    on_d10 = c1 * (1.0 + r0 / (r0 + r1)) + c2 / (r0 + r1)
    on_d11 = -(c1 * r0 + c2) / (r0 + r1)
    return ratio, [-alpha_s * phi_1 + on_d10 / r0, -on_d10 / r0 + on_d11 / r1, -on_d11 / r1]


def grid_float64(logsnrs: Tensor) -> Tensor:
    """The grid on the CPU in float64, for step coefficients computed before the loop."""
    return logsnrs.detach().to(device="cpu", dtype=torch.float64)


def _on(coef: Tensor, z: Tensor) -> Tensor:
    return broadcast_logsnr(coef.to(device=z.device, dtype=z.dtype), z)


def combine(z: Tensor, ratio: Tensor, weights: list[Tensor], outputs: list[Tensor]) -> Tensor:
    """`ratio * z + sum_j weights[j] * outputs[j]` (coefficients already on z's device/dtype)."""
    out = ratio * z
    for w, m in zip(weights, outputs):
        out = out + w * m
    return out


Plan = list[tuple[Tensor, list[Tensor]]]
"""Per step `(ratio, weights)` of `combine`, on the state's device/dtype."""


def dpmpp_plan(z: Tensor, logsnrs: Tensor, order: int, lower_order_final: bool) -> Plan:
    """Validate the grid and compute every step's coefficients on the host, before the loop
    (the only host reads of the sampler)."""
    prepare_grid(z, logsnrs)
    g64 = grid_float64(logsnrs)
    steps = g64.shape[0] - 1
    orders = multistep_orders(
        steps,
        order,
        lower_final=lower_order_final and steps < LOWER_ORDER_FINAL_BELOW,
        clean_end=ends_at_data(g64),
    )
    plan = []
    for i, k in enumerate(orders):
        ratio, weights = dpmpp_weights([g64[i - j] for j in range(k)], g64[i + 1], k)
        plan.append((_on(ratio, z), [_on(w, z) for w in weights]))
    return plan


def dpmpp_loop(
    denoise: Denoise,
    z: Tensor,
    grid: Tensor,
    plan: Plan,
    order: int,
    callback: Callback | None = None,
) -> Tensor:
    """The step loop over a `dpmpp_plan`: one denoiser call and one linear combination per
    step, no host synchronisation (it compiles to one graph, tested)."""
    outputs: list[Tensor] = []  # denoiser outputs, newest first
    for i, (ratio, weights) in enumerate(plan):
        x_hat = denoise(z, level_for(grid[i], z))
        outputs = [x_hat, *outputs[: order - 1]]
        z = combine(z, ratio, weights, outputs)
        if callback is not None:
            callback({"i": i, "z": z, "x_hat": x_hat, "logsnr": grid[i]})
    return z


def _sample_dpmpp(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    order: int,
    lower_order_final: bool,
    callback: Callback | None,
) -> Tensor:
    plan = dpmpp_plan(z, logsnrs, order, lower_order_final)
    grid = logsnrs.to(device=z.device, dtype=z.dtype)
    return dpmpp_loop(denoise, z, grid, plan, order, callback)


@register_sampler("dpmpp_2m")
def sample_dpmpp_2m(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M), data prediction, multistep. NFE = steps."""
    return _sample_dpmpp(denoise, z, logsnrs, 2, lower_order_final, callback)


@register_sampler("dpmpp_3m")
def sample_dpmpp_3m(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(3M), data prediction, multistep. NFE = steps."""
    return _sample_dpmpp(denoise, z, logsnrs, 3, lower_order_final, callback)
