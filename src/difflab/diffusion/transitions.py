"""Gaussian transition kernels of the variance-preserving process, in logsnr notation.

`q(z_t | x) = N(alpha_t x, sigma_t^2 I)` with `alpha^2 = sigmoid(l)`, `sigma^2 = sigmoid(-l)`
(`parameterization.py`). A step goes from `l_t` to a less noisy `l_s > l_t` (`l_s = +inf` is
clean data); `r = e^{l_t - l_s} = SNR(t) / SNR(s)` lies in `[0, 1)`.

- **DDIM** (Song et al. 2021, eq. 12; eq. 16 for `eta`): with `eps = (z_t - alpha_t x) / sigma_t`,

      DDIM_{t->s}(x, z_t) = alpha_s x + sqrt(sigma_s^2 - c^2) eps + c * noise,
      c^2 = eta^2 sigma_s^2 (1 - r).

  At `eta = 0` it is deterministic, `alpha_s x + (sigma_s / sigma_t)(z_t - alpha_t x)`, affine
  in `x` with slope `kappa = alpha_s - alpha_t sigma_s / sigma_t = alpha_s (1 - sqrt(r))`
  (`ddim_slope`), which `inv_ddim` divides by. At `eta = 1` it draws from the posterior below.
- **Posterior** `q(z_s | z_t, x) = N(mu, var)` (VDM, Kingma et al. 2021, eqs. 33-34 in logsnr form):

      mu  = r (alpha_s / alpha_t) z_t + alpha_s (1 - r) x,      var = sigma_s^2 (1 - r).

  Drawing `z_s` from it for a fixed `x` and `z_t ~ q(z_t | x)` gives `z_s ~ q(z_s | x)`.

Levels broadcast against the state as in `broadcast_logsnr` (a scalar, `[B]`, or per element).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .parameterization import alpha_sigma, broadcast_logsnr, eps_from_x


def one_minus_snr_ratio(logsnr_t: Tensor, logsnr_s: Tensor) -> Tensor:
    """`1 - r = 1 - e^{l_t - l_s}` by `expm1`, accurate for close levels; 1 at `l_s = +inf`."""
    return -torch.expm1(logsnr_t - logsnr_s)


def ddim_slope(logsnr_t: Tensor, logsnr_s: Tensor) -> Tensor:
    """`kappa = alpha_s - alpha_t sigma_s / sigma_t = -alpha_s expm1((l_t - l_s) / 2)`, the slope
    of the deterministic DDIM step in `x` (as `alpha_t sigma_s / (sigma_t alpha_s) = sqrt(r)`)."""
    alpha_s, _ = alpha_sigma(logsnr_s)
    return -alpha_s * torch.expm1(0.5 * (logsnr_t - logsnr_s))


def ddim_step(
    z: Tensor,
    x_hat: Tensor,
    logsnr_t: Tensor,
    logsnr_s: Tensor,
    *,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """One DDIM(eta) transition `z_t -> z_s` given the data estimate `x_hat` (module docstring);
    `noise` (standard normal, shaped like `z`) is needed iff `eta > 0`."""
    l_t, l_s = broadcast_logsnr(logsnr_t, z), broadcast_logsnr(logsnr_s, z)
    alpha_s, sigma_s = alpha_sigma(l_s)
    eps_hat = eps_from_x(z, x_hat, l_t)
    z_s = alpha_s * x_hat
    if eta == 0:
        return z_s + sigma_s * eps_hat
    c = eta * sigma_s * one_minus_snr_ratio(l_t, l_s).sqrt()
    return z_s + (sigma_s**2 - c**2).clamp_min(0).sqrt() * eps_hat + c * noise


def inv_ddim(z_s: Tensor, z_t: Tensor, logsnr_t: Tensor, logsnr_s: Tensor) -> Tensor:
    """The `x` with `DDIM_{t->s}(x, z_t) = z_s` (eta = 0): `(z_s - (sigma_s/sigma_t) z_t) / kappa`,
    with `kappa = ddim_slope(l_t, l_s)` (precise when the two levels are close)."""
    l_t, l_s = broadcast_logsnr(logsnr_t, z_t), broadcast_logsnr(logsnr_s, z_t)
    _, sigma_t = alpha_sigma(l_t)
    _, sigma_s = alpha_sigma(l_s)
    return (z_s - (sigma_s / sigma_t) * z_t) / ddim_slope(l_t, l_s)


def posterior(z_t: Tensor, x: Tensor, logsnr_t: Tensor, logsnr_s: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of `q(z_s | z_t, x)`: `(r (alpha_s/alpha_t) z_t + alpha_s (1 - r) x,
    sigma_s^2 (1 - r))`, the variance shaped like the broadcast levels."""
    l_t, l_s = broadcast_logsnr(logsnr_t, z_t), broadcast_logsnr(logsnr_s, z_t)
    alpha_t, _ = alpha_sigma(l_t)
    alpha_s, sigma_s = alpha_sigma(l_s)
    keep = one_minus_snr_ratio(l_t, l_s)
    mean = torch.exp(l_t - l_s) * (alpha_s / alpha_t) * z_t + alpha_s * keep * x
    return mean, sigma_s**2 * keep


def posterior_sample(
    z_t: Tensor, x: Tensor, logsnr_t: Tensor, logsnr_s: Tensor, noise: Tensor
) -> Tensor:
    """`z_s ~ q(z_s | z_t, x)` as `mu + sqrt(var) noise` (DDPM's ancestral step, `x = x_hat`)."""
    mean, var = posterior(z_t, x, logsnr_t, logsnr_s)
    return mean + var.sqrt() * noise
