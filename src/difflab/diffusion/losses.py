"""Weighted diffusion losses in the Kingma & Gao (2023) form.

Every loss here is `E_t[ w(logsnr_t) * ||eps - eps_hat||^2 ]` up to the per-weighting factor,
computed through `x_hat` because the denoiser contract returns `x_hat`:
`||eps - eps_hat||^2 = e^logsnr ||x - x_hat||^2` (from `eps = (z - alpha x) / sigma`).
A *weighting* maps `(logsnr, -dlogsnr/dt)` to the factor on the eps-MSE of one sample:

| weighting  | factor on `||eps - eps_hat||^2`            | in x-space                         |
|------------|--------------------------------------------|------------------------------------|
| `elbo`     | `1/2 (-dl/dt)`                             | `1/2 (-dl/dt) e^l`                 |
| `eps_mse`  | `1`                                        | `e^l`                              |
| `v_mse`    | `1 + e^-l = 1 / sigmoid(l)`                | `1 + e^l` (SNR + 1)                |
| `sigmoid`  | `1/2 (-dl/dt) sigmoid(b - l)`              | `1/2 (-dl/dt) e^b sigmoid(l - b)`  |
| `edm`      | `(e^-l + sd^2) / sd^2`                     | `(sigma_ve^2 + sd^2)/(sigma_ve sd)^2` |

The ELBO row is VDM's continuous-time loss (Kingma et al. 2021, eq. 17); sigmoid is SiD2/Kingma &
Gao's `w(l) = sigmoid(b - l)`; EDM is Karras et al. (2022) Table 1's `lambda(sigma)` (pair it with
`EDMLogNormalSchedule` to also reproduce EDM's noise distribution).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .parameterization import Denoise, broadcast_logsnr, diffuse, eps_from_x
from .schedules import Schedule

Weighting = Callable[[Tensor, Tensor], Tensor]
"""`(logsnr, neg_dlogsnr_dt) -> factor on the eps-MSE`."""


def elbo_weight(logsnr: Tensor, neg_dlogsnr_dt: Tensor) -> Tensor:
    """Continuous-time ELBO (VDM eq. 17): `1/2 (-dl/dt)` on the eps-MSE, in nats."""
    return 0.5 * neg_dlogsnr_dt


def eps_mse_weight(logsnr: Tensor, neg_dlogsnr_dt: Tensor) -> Tensor:
    """Plain eps-MSE (DDPM's L_simple)."""
    return torch.ones_like(logsnr)


def v_mse_weight(logsnr: Tensor, neg_dlogsnr_dt: Tensor) -> Tensor:
    """v-MSE: `||v - v_hat||^2 = ||eps - eps_hat||^2 / alpha^2`, i.e. SNR+1 on the x-MSE."""
    return 1.0 / torch.sigmoid(logsnr)


def sigmoid_weight(bias: float = -2.0) -> Weighting:
    """Sigmoid weighting (Kingma & Gao 2023; SiD2): `1/2 (-dl/dt) sigmoid(b - l)` on the eps-MSE."""

    def weight(logsnr: Tensor, neg_dlogsnr_dt: Tensor) -> Tensor:
        return 0.5 * neg_dlogsnr_dt * torch.sigmoid(bias - logsnr)

    weight.__name__ = f"sigmoid_weight(b={bias})"
    return weight


def edm_weight(sigma_data: float = 0.5) -> Weighting:
    """EDM's `lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2` on the x-MSE, `sigma^2 = e^-l`."""

    def weight(logsnr: Tensor, neg_dlogsnr_dt: Tensor) -> Tensor:
        return (torch.exp(-logsnr) + sigma_data**2) / sigma_data**2

    weight.__name__ = f"edm_weight(sigma_data={sigma_data})"
    return weight


WEIGHTINGS: dict[str, Callable[..., Weighting]] = {
    "elbo": lambda: elbo_weight,
    "eps_mse": lambda: eps_mse_weight,
    "v_mse": lambda: v_mse_weight,
    "sigmoid": sigmoid_weight,
    "edm": edm_weight,
}


def make_weighting(name: str, **kwargs) -> Weighting:
    """Weighting by name (`WEIGHTINGS`); `sigmoid` takes `bias`, `edm` takes `sigma_data`."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; known: {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[name](**kwargs)


TimeSampling = Literal["uniform", "antithetic", "stratified"]


def sample_t(
    batch: int,
    method: str = "uniform",
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Training times in [0, 1]: i.i.d. uniform; antithetic pairs `(u, 1 - u)`; or stratified
    (VDM's low-discrepancy sampler `(u0 + i / B) mod 1`), which lower the loss variance."""
    u = torch.rand(batch, generator=generator, device=device, dtype=dtype)
    if method == "uniform":
        return u
    if method == "antithetic":
        half = u[: (batch + 1) // 2]
        return torch.cat([half, 1.0 - half])[:batch]
    if method == "stratified":
        return torch.remainder(u[:1] + torch.arange(batch, device=u.device, dtype=dtype) / batch, 1)
    raise ValueError(f"time sampling must be uniform, antithetic or stratified, got {method!r}")


def _at_least_fp32(t: Tensor) -> Tensor:
    """Losses are reduced in at least float32 (bf16 activations under autocast)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def weighted_x_loss(
    x: Tensor, x_hat: Tensor, logsnr: Tensor, weight: Tensor, *, reduce: str = "mean"
) -> Tensor:
    """Per-example `weight(l) * e^l * (x - x_hat)^2` = weighted eps-MSE, reduced over non-batch
    dims by `mean` (per dimension) or `sum`. `logsnr`/`weight` may be per element."""
    logsnr = broadcast_logsnr(logsnr, x)
    weight = broadcast_logsnr(weight, x)
    # e^l w(l) in log space for large |l| (e^15 ~ 3e6 is fine in float32, but weights may be tiny)
    err = _at_least_fp32(x - x_hat).pow(2) * weight * torch.exp(logsnr)
    return err.flatten(1).mean(1) if reduce == "mean" else err.flatten(1).sum(1)


def multiscale_eps_mse(eps: Tensor, eps_hat: Tensor, min_resolution: int = 32) -> Tensor:
    """Multiscale loss of simple diffusion (sec. 3.3):
    `sum_s (1/s) mean ||D_s eps - D_s eps_hat||^2` over `s in {r, r/2, ..., min_resolution}`,
    `D_s` = average pooling to `s x s`; normalised so that the weights `(1/s)` sum to one, which
    keeps the loss scale comparable to the plain eps-MSE. Needs square images."""
    if eps.ndim != 4 or eps.shape[-1] != eps.shape[-2]:
        raise ValueError(
            f"multiscale loss needs square [B, C, H, W] images, got {tuple(eps.shape)}"
        )
    res = eps.shape[-1]
    if min_resolution > res:
        raise ValueError(f"min_resolution={min_resolution} exceeds the image size {res}")
    diff = _at_least_fp32(eps - eps_hat)
    total, norm = 0.0, 0.0
    s = res
    while s >= min_resolution:
        pooled = F.adaptive_avg_pool2d(diff, s) if s != res else diff
        total = total + pooled.pow(2).flatten(1).mean(1) / s
        norm += 1.0 / s
        if s % 2:
            break
        s //= 2
    return total / norm


def diffusion_loss(
    denoise: Denoise,
    x: Tensor,
    schedule: Schedule,
    weighting: Weighting,
    *,
    t: Tensor | None = None,
    time_sampling: str = "uniform",
    generator: torch.Generator | None = None,
    multiscale_min_resolution: int | None = None,
) -> Tensor:
    """Per-example weighted diffusion loss `w(l_t) ||eps - eps_hat||^2` (mean over dimensions).

    `t` may be given (shape `[B]` or per element); otherwise it is drawn by `time_sampling`.
    `denoise(z, logsnr) -> x_hat` is any `Denoise` (a network wrapped by `as_denoiser`).
    """
    if x.ndim < 2:
        raise ValueError(f"x must have a batch dimension and data dims, got shape {tuple(x.shape)}")
    if t is None:
        t = sample_t(x.shape[0], time_sampling, generator=generator, device=x.device)
    logsnr = schedule.logsnr(t)
    neg_dl = -schedule.dlogsnr_dt(t)
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    z = diffuse(x, eps, logsnr)
    x_hat = denoise(z, logsnr)
    weight = weighting(logsnr, neg_dl)
    if multiscale_min_resolution is None:
        return weighted_x_loss(x, x_hat, logsnr, weight)
    if logsnr.ndim != 1:
        raise ValueError("the multiscale loss needs one logsnr per example (t of shape [B])")
    eps_hat = eps_from_x(z, x_hat, logsnr)
    return weight * multiscale_eps_mse(eps, eps_hat, multiscale_min_resolution)
