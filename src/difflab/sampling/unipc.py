"""UniPC (Zhao et al. 2023), the B(h) = expm1(-h) ("bh2") variant with data prediction.

A predictor-corrector multistep method on the exponential integrator of `dpmpp.py`
(`lambda = logsnr / 2`, `h = lambda_s - lambda_t`, `phi_1 = expm1(-h)`):

- UniP-p (predictor, eq. 7): `z_s = (sigma_s/sigma_t) z_t - alpha_s phi_1 m_t
  - alpha_s B(h) sum_k rho_k D_k`, with `D_k = (m_{t_k} - m_t) / r_k` over the `p - 1` previous
  outputs and `r_k = (lambda_{t_k} - lambda_t) / h`;
- UniC-p (corrector, eq. 8): once the denoiser has been evaluated at the new point `z_s`, the same
  update is recomputed from `z_t` with one more divided difference, `D = m_s - m_t`, and replaces
  `z_s`. The corrector reuses that evaluation, so UniPC costs one evaluation per step
  (NFE = steps) and raises the order by one.

The weights `rho` solve the Vandermonde system `R rho = b` (UniPC, Thm. 3.1) with
`R_ij = r_j^(i-1)` and `b_i = i! h phi_{i+1}(h) / B(h)`; as in the reference implementation
`rho = 1/2` for the order-2 predictor and the order-1 corrector. Orders warm up from 1 and, with
`lower_order_final`, decrease at the end (`min(order, steps left)`); a last step to +inf
returns `x_hat` of the last evaluation (its corrector has nothing left to correct).
Coefficients are computed in float64 before the loop; levels may be per-element.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion.parameterization import Denoise, level_for
from .dpmpp import combine, multistep_orders, on_state, step_ratio_and_alpha
from .grids import ends_at_data, grid_float64, prepare_grid
from .registry import Callback, register_sampler


def unipc_rhs(h: Tensor, order: int) -> tuple[Tensor, Tensor, list[Tensor]]:
    """`(phi_1, B(h), [b_1 .. b_order])` for data prediction (`hh = -h`) and `B(h) = expm1(-h)`:
    `h phi_{k+1}` is built by the recursion `phi_{k+1} = (phi_k - 1/k!) / hh`."""
    hh = -h
    phi_1 = torch.expm1(hh)
    b_h = phi_1
    h_phi_k, factorial, rhs = phi_1 / hh - 1.0, 1.0, []
    for k in range(1, order + 1):
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return phi_1, b_h, rhs


def solve_rhos(rks: list[Tensor], rhs: list[Tensor]) -> Tensor:
    """Solve `sum_j rks[j]^i rho_j = rhs[i]` (i = 0..n-1) elementwise in the levels: `[..., n]`."""
    r = torch.stack(torch.broadcast_tensors(*rks), -1)
    vander = torch.stack([r**i for i in range(len(rks))], -2)
    return torch.linalg.solve(vander, torch.stack(torch.broadcast_tensors(*rhs), -1))


def predictor_weights(levels: list[Tensor], l_s: Tensor, order: int):
    """UniP: `(a, [w_t, w_1, ...])` with `z_s = a z_t + w_t m_t + sum_k w_k m_{t_k}` (newest
    first, `levels[0] = l_t`)."""
    ratio, alpha_s, h = step_ratio_and_alpha(levels[0], l_s)
    phi_1, b_h, rhs = unipc_rhs(h, order)
    rks = [0.5 * (levels[k] - levels[0]) / h for k in range(1, order)]
    if order == 1:
        return ratio, [-alpha_s * phi_1]
    if order == 2:
        rhos = [torch.full_like(h, 0.5)]
    else:
        rho = solve_rhos(rks, rhs[: order - 1])
        rhos = list(rho.unbind(-1))
    # - alpha B sum_k rho_k (m_k - m_t) / r_k
    on_past = [-alpha_s * b_h * rho / r for rho, r in zip(rhos, rks)]
    return ratio, [-alpha_s * phi_1 - sum(on_past), *on_past]


def corrector_weights(levels: list[Tensor], l_s: Tensor, order: int):
    """UniC: `(a, [w_s, w_t, w_1, ...])` with `z_s^c = a z_t + w_s m_s + w_t m_t + ...`, where
    `m_s` is the new evaluation at the predicted `z_s` and `order` the predictor's order."""
    ratio, alpha_s, h = step_ratio_and_alpha(levels[0], l_s)
    phi_1, b_h, rhs = unipc_rhs(h, order)
    rks = [0.5 * (levels[k] - levels[0]) / h for k in range(1, order)]
    if order == 1:
        rhos = [torch.full_like(h, 0.5)]
    else:
        rhos = list(solve_rhos([*rks, torch.ones_like(h)], rhs).unbind(-1))
    on_past = [-alpha_s * b_h * rho / r for rho, r in zip(rhos[:-1], rks)]
    on_new = -alpha_s * b_h * rhos[-1]
    return ratio, [on_new, -alpha_s * phi_1 - sum(on_past) - on_new, *on_past]


@register_sampler("unipc")
def sample_unipc(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    order: int = 2,
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """UniPC-bh2 (predictor-corrector, data prediction) of `order` 1-3. NFE = steps."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    grid = prepare_grid(z, logsnrs)
    g64 = grid_float64(logsnrs)
    steps = g64.shape[0] - 1
    orders = multistep_orders(
        steps, order, lower_final=lower_order_final, clean_end=ends_at_data(g64)
    )

    def on_z(ratio, weights):
        return on_state(ratio, z), [on_state(w, z) for w in weights]

    pred = [
        on_z(*predictor_weights([g64[i - j] for j in range(k)], g64[i + 1], k))
        for i, k in enumerate(orders)
    ]
    corr = [None] + [
        on_z(*corrector_weights([g64[i - 1 - j] for j in range(k)], g64[i], k))
        for i, k in enumerate(orders[:-1], start=1)
    ]
    outputs: list[Tensor] = []  # denoiser outputs, newest first
    z_prev = z
    for i in range(steps):
        x_hat = denoise(z, level_for(grid[i], z))
        if i > 0:  # UniC: redo the last step with the new evaluation
            ratio, weights = corr[i]
            z = combine(z_prev, ratio, weights, [x_hat, *outputs])
        outputs = [x_hat, *outputs[: order - 1]]
        z_prev = z
        ratio, weights = pred[i]
        z = combine(z, ratio, weights, outputs)
        if callback is not None:
            callback({"i": i, "z": z, "x_hat": x_hat, "logsnr": grid[i]})
    return z
