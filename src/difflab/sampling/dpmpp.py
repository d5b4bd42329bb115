"""DPM-Solver++ 2M and 3M (Lu et al. 2022b, "DPM-Solver++", Alg. 2 and app. B) and the SDE
variant of 2M, in logsnr form.

With `lambda = logsnr / 2 = log(alpha / sigma)` and `h = lambda_s - lambda_t`, the exact solution
of the probability-flow ODE in data prediction is (eq. 9)

    z_s = (sigma_s / sigma_t) z_t + alpha_s int_{lambda_t}^{lambda_s} e^{l - lambda_s} x_hat(l) dl,

and a multistep solver replaces `x_hat(l)` by the polynomial through the last `k` denoiser
outputs (`k` = the order). With `phi_1 = expm1(-h)` (`h phi_1(h)` of the paper, negative) and the
step ratios `r_j = h_{j} / h` of the previous steps:

- order 1 (= DDIM): `z_s = (sigma_s/sigma_t) z_t - alpha_s phi_1 D0`
- order 2 (2M):     `... - alpha_s phi_1 / 2 * D1`,  `D1 = (m0 - m1) / r0`
- order 3 (3M):     `... + alpha_s (phi_1/h + 1) D1 - 2 alpha_s ((phi_1 + h)/h^2 - 1/2) D2`
                    with `D1`, `D2` the first and second divided differences (app. B; the
                    factor 2 comes from `D2` being a divided difference, not a half second
                    derivative: docs/methods/dpm_solver.md).

The weights of every order sum to the DDIM slope `kappa = -alpha_s phi_1` (they integrate
constants exactly), so the 2M step is a DDIM step on the extrapolated data estimate
`x_bar = D0 + D1 / 2` (docs/methods/cov_ddim.md, eq. M1); `sample_dpmpp_2m` is written that way.

The first steps use the orders the history allows (1, then 2); with `lower_order_final` and fewer
than 15 steps the last steps drop to orders 1 (and 2), which stabilises few-step sampling
(diffusers' `lower_order_final`), and a step to logsnr = +inf is always first order: there it
returns `x_hat` exactly (`h = inf`, `alpha_s = 1`, `sigma_s = 0`).

Step coefficients depend on the grid only and are computed in float64 before the loop; the loop
is tensor arithmetic on the state and the stored denoiser outputs (no host syncs). Levels may be
per-element (coefficients are elementwise in the level).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion.parameterization import Denoise, alpha_sigma, broadcast_logsnr, level_for
from ..diffusion.transitions import ddim_step
from .grids import ends_at_data, grid_float64, prepare_grid
from .registry import Callback, register_sampler

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


def extrapolation_2m(logsnrs: Tensor, lower_order_final: bool) -> Tensor:
    """Per step `i` the factor `c_i` of 2M's data estimate `x_bar_i = x_hat_i + c_i (x_hat_i -
    x_hat_{i-1}) = D0 + D1 / 2`: `c_i = 1 / (2 r_i)`, `r_i = (l_i - l_{i-1}) / (l_{i+1} - l_i)`,
    on second-order steps and 0 on first-order ones (the first step, a step to +inf, and with
    `lower_order_final` the last step of a grid of fewer than 15 steps). Float64, `[steps, ...]`,
    tensor operations only (no host read)."""
    level = logsnrs.to(torch.float64)
    c = torch.zeros_like(level[:-1])
    if level.shape[0] > 2:
        r = (level[1:-1] - level[:-2]) / (level[2:] - level[1:-1])
        c[1:] = torch.where(torch.isinf(level[2:]), 0.0, 0.5 / r)
    if lower_order_final and level.shape[0] - 1 < LOWER_ORDER_FINAL_BELOW:
        c[-1] = 0.0
    return c


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
    """DPM-Solver++(2M), data prediction, multistep. NFE = steps.

    Each step is DDIM on `x_bar = x_hat_i + c_i (x_hat_i - x_hat_{i-1})` (`extrapolation_2m`):
    `z_s = (sigma_s/sigma_t) z_t + kappa x_bar`, `kappa = -alpha_s expm1(-h)`."""
    grid = prepare_grid(z, logsnrs)
    c = extrapolation_2m(logsnrs, lower_order_final).to(device=z.device, dtype=z.dtype)
    x_prev = None
    for i in range(grid.shape[0] - 1):
        x_hat = denoise(z, level_for(grid[i], z))
        x_bar = x_hat if x_prev is None else x_hat + broadcast_logsnr(c[i], z) * (x_hat - x_prev)
        z = ddim_step(z, x_bar, grid[i], grid[i + 1])
        if callback is not None:
            callback({"i": i, "z": z, "x_hat": x_hat, "logsnr": grid[i]})
        x_prev = x_hat
    return z


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
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, the SDE solver in its midpoint form; diffusers'
    `sde-dpmsolver++`): 2M's data estimate `x_bar` in a DDIM(eta) step. NFE = steps.

        z_s = alpha_s x_bar + sqrt(sigma_s^2 - w^2) eps_bar + w xi,
        w^2 = eta^2 sigma_s^2 (1 - e^{l_t - l_s}),

    which at `eta = 1` is `(sigma_s / sigma_t) e^{-h} z_t + alpha_s (1 - e^{-2h}) x_bar +
    sigma_s sqrt(1 - e^{-2h}) xi`; `eta = 0` is `dpmpp_2m`. The best FID on the shipped MNIST
    model (results/mnist_10k/README.md)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    grid = prepare_grid(z, logsnrs)
    c = extrapolation_2m(logsnrs, lower_order_final).to(device=z.device, dtype=z.dtype)
    history: list[Tensor] = []
    for i in range(grid.shape[0] - 1):
        history = [denoise(z, level_for(grid[i], z)), *history[:1]]
        x_bar = history[0]
        if len(history) == 2:
            x_bar = x_bar + broadcast_logsnr(c[i], z) * (history[0] - history[1])
        noise = None
        if eta > 0:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = ddim_step(z, x_bar, grid[i], grid[i + 1], eta=eta, noise=noise)
        if callback is not None:
            callback({"i": i, "z": z, "x_hat": history[0], "logsnr": grid[i]})
    return z


# ----------------------------------------------------------------------------- 3M
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


def on_state(coef: Tensor, z: Tensor) -> Tensor:
    """A float64 grid coefficient on `z`'s device and dtype, shaped to broadcast against it."""
    return broadcast_logsnr(coef.to(device=z.device, dtype=z.dtype), z)


def combine(z: Tensor, ratio: Tensor, weights: list[Tensor], outputs: list[Tensor]) -> Tensor:
    """`ratio * z + sum_j weights[j] * outputs[j]` (coefficients already on z's device/dtype)."""
    out = ratio * z
    for w, m in zip(weights, outputs):
        out = out + w * m
    return out


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
    grid = prepare_grid(z, logsnrs)
    g64 = grid_float64(logsnrs)
    steps = g64.shape[0] - 1
    short = lower_order_final and steps < LOWER_ORDER_FINAL_BELOW
    orders = multistep_orders(steps, 3, lower_final=short, clean_end=ends_at_data(g64))
    plan = []  # per step (a, [w_j]) of `combine`, computed on the host before the loop
    for i, k in enumerate(orders):
        ratio, weights = dpmpp_weights([g64[i - j] for j in range(k)], g64[i + 1], k)
        plan.append((on_state(ratio, z), [on_state(w, z) for w in weights]))
    outputs: list[Tensor] = []  # denoiser outputs, newest first
    for i, (ratio, weights) in enumerate(plan):
        x_hat = denoise(z, level_for(grid[i], z))
        outputs = [x_hat, *outputs[:2]]
        z = combine(z, ratio, weights, outputs)
        if callback is not None:
            callback({"i": i, "z": z, "x_hat": x_hat, "logsnr": grid[i]})
    return z
