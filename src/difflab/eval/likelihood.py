"""Continuous-time ELBO (VDM, Kingma et al. 2021) of any `Denoise`, in nats or bits/dim.

    -log p(x) <= L_prior + L_diffusion + L_recon
    L_prior     = KL(q(z_1 | x) || N(0, I))                       at logsnr_min     (eq. 11)
    L_diffusion = E_{t, eps}[ 1/2 (-dl/dt) e^l ||x - x_hat(z_t)||^2 ]               (eq. 17)
    L_recon     = E_eps[ -log p(x | z_0) ]                        at logsnr_max

The diffusion term depends on the schedule only through its end points (VDM sec. 5.1), so it
can be estimated with any proposal between `logsnr_min` and `logsnr_max`: uniform in logsnr
(`LinearLogSNRSchedule`) with stratified times is the low-variance default. `p(x | z_0)` is the
discretized decoder of VDM (appendix) for 8-bit data in [-1, 1], or a Gaussian for continuous data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..diffusion.losses import diffusion_loss, elbo_weight
from ..diffusion.parameterization import Denoise, alpha_sigma, diffuse, prior_kl
from ..diffusion.schedules import LinearLogSNRSchedule, Schedule


@dataclass
class ELBO:
    """Per-example terms in nats (`[B]`) and the total; `bits_per_dim` converts the total."""

    prior: Tensor
    diffusion: Tensor
    reconstruction: Tensor
    num_dims: int

    @property
    def total(self) -> Tensor:
        return self.prior + self.diffusion + self.reconstruction

    @property
    def bits_per_dim(self) -> Tensor:
        return self.total / (self.num_dims * math.log(2.0))


def discretized_log_likelihood(x: Tensor, z0: Tensor, logsnr_max: float, bins: int = 256) -> Tensor:
    """`log p(x | z_0)` per example for `bins`-level data mapped to [-1, 1] by
    `x_k = 2 k / (bins - 1) - 1`: each pixel is a categorical over the `bins` values with logits
    `-(z_0 / alpha - x_k)^2 / (2 (sigma / alpha)^2)` (VDM appendix)."""
    alpha, sigma = alpha_sigma(torch.tensor(logsnr_max, dtype=torch.float64))
    scale = float(sigma / alpha)
    values = torch.linspace(-1.0, 1.0, bins, dtype=z0.dtype, device=z0.device)
    centre = (z0 / float(alpha)).unsqueeze(-1)
    logits = -0.5 * ((centre - values) / scale) ** 2
    index = torch.round((x.clamp(-1, 1) + 1) * (bins - 1) / 2).long().unsqueeze(-1)
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, index).squeeze(-1)
    return log_probs.flatten(1).sum(1)


def gaussian_log_likelihood(x: Tensor, z0: Tensor, logsnr_max: float) -> Tensor:
    """`log N(x; z_0 / alpha, (sigma / alpha)^2 I)` per example: the decoder for continuous data."""
    alpha, sigma = alpha_sigma(torch.tensor(logsnr_max, dtype=torch.float64))
    var = float(sigma / alpha) ** 2
    d = x[0].numel()
    sq = (x - z0 / float(alpha)).pow(2).flatten(1).sum(1)
    return -0.5 * sq / var - 0.5 * d * math.log(2 * math.pi * var)


def elbo(
    denoise: Denoise,
    x: Tensor,
    *,
    logsnr_min: float = -15.0,
    logsnr_max: float = 15.0,
    num_t: int = 16,
    proposal: Schedule | None = None,
    bins: int | None = 256,
    generator: torch.Generator | None = None,
) -> ELBO:
    """The ELBO of `x` under `denoise` with `num_t` stratified time samples per example.

    `bins=None` treats `x` as continuous (Gaussian decoder); otherwise `x` is `bins`-level data in
    [-1, 1] and the discretized decoder is used. `proposal` defaults to uniform-in-logsnr."""
    if num_t < 1:
        raise ValueError(f"num_t must be positive, got {num_t}")
    if not logsnr_min < logsnr_max:
        raise ValueError(f"need logsnr_min < logsnr_max, got {logsnr_min}, {logsnr_max}")
    proposal = proposal or LinearLogSNRSchedule(logsnr_min, logsnr_max)
    if abs(proposal.logsnr_min - logsnr_min) > 1e-6 or abs(proposal.logsnr_max - logsnr_max) > 1e-6:
        raise ValueError("proposal must span exactly [logsnr_min, logsnr_max]")
    d = x[0].numel()
    terms = []
    for _ in range(num_t):
        loss = diffusion_loss(
            denoise, x, proposal, elbo_weight, time_sampling="stratified", generator=generator
        )
        terms.append(loss * d)  # diffusion_loss is a per-dimension mean
    diffusion = torch.stack(terms).mean(0)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    z0 = diffuse(x, eps, torch.tensor(logsnr_max, dtype=x.dtype, device=x.device))
    if bins is None:
        recon = -gaussian_log_likelihood(x, z0, logsnr_max)
    else:
        recon = -discretized_log_likelihood(x, z0, logsnr_max, bins)
    return ELBO(prior_kl(x, logsnr_min), diffusion, recon, d)
