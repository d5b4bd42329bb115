"""Exact oracles: Gaussian-mixture data with a closed-form posterior mean `E[x | z]`.

Component `k` is `N(mu_k, U diag(lambda_k) U^T)` with one orthonormal basis `U` shared by all
components (the identity, or the 2-D DCT for image-like data with a power-law spectrum). Under
`z = alpha x + sigma eps` everything is diagonal in `U`, so for `c = U^T z`:

    p(z | k)   = N(c; alpha m_k, alpha^2 lambda_k + sigma^2)          (per coefficient)
    E[x | z,k] = m_k + alpha lambda_k / (alpha^2 lambda_k + sigma^2) (c - alpha m_k)
    E[x | z]   = sum_k p(k | z) E[x | z, k]

with `m_k = U^T mu_k`. The oracle's `denoise` is a `Denoise` and is the exact teacher/denoiser
against which samplers and distillation are judged without training anything.

`EmpiricalDenoiser` is the zero-variance limit on real data: the exact `E[x | z]` when the data
distribution is the empirical one of a set of images (a mixture of point masses), i.e. the
minimiser of the denoising loss on that set. It memorises (every sampler run on it ends on one
of the images), which makes it a reference for what a sampler does with a perfect denoiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .dct import dct2, idct2, radial_frequency
from .parameterization import alpha_sigma, broadcast_logsnr, check_logsnr


@dataclass
class GaussianMixtureOracle:
    """A Gaussian mixture with component covariances diagonal in a shared basis.

    means: `[K, *shape]` component means in pixel space; variances: `[K, *shape]` the
    per-coefficient variances in the basis; weights: `[K]` mixture weights (normalised here);
    basis: `"identity"` or `"dct"` (2-D DCT over the last two dims of `shape`).
    """

    means: Tensor
    variances: Tensor
    weights: Tensor
    basis: str = "identity"

    def __post_init__(self) -> None:
        if self.basis not in ("identity", "dct"):
            raise ValueError(f"basis must be 'identity' or 'dct', got {self.basis!r}")
        if self.means.shape != self.variances.shape:
            raise ValueError(
                f"means {tuple(self.means.shape)} and variances {tuple(self.variances.shape)} "
                "must have the same shape [K, *shape]"
            )
        if self.weights.shape != self.means.shape[:1]:
            raise ValueError(f"weights must have shape [K]={tuple(self.means.shape[:1])}")
        if (self.variances <= 0).any():
            raise ValueError("variances must be positive")
        if self.basis == "dct" and self.means.ndim < 3:
            raise ValueError("the dct basis needs image-shaped components [K, ..., H, W]")
        self.means = self.means.double()
        self.variances = self.variances.double()
        self.weights = (self.weights / self.weights.sum()).double()
        # per-component means and variances as flat coefficients in the basis: [K, d]
        self._m = self.to_basis(self.means).flatten(1)
        self._lam = self.variances.flatten(1)
        self._log_w = torch.log(self.weights)

    # ----------------------------------------------------------------- construction
    @classmethod
    def gaussian(cls, mean: Tensor, variances: Tensor, basis: str = "identity"):
        """A single Gaussian (K = 1)."""
        return cls(mean[None], variances[None], torch.ones(1), basis)

    @classmethod
    def image_like(
        cls,
        shape: tuple[int, ...] = (1, 16, 16),
        num_components: int = 8,
        spectrum_power: float = 2.0,
        mean_scale: float = 0.4,
        variance_scale: float = 0.1,
        seed: int = 0,
    ) -> GaussianMixtureOracle:
        """Image-like mixture: each component's covariance is diagonal in the DCT basis with a
        power-law spectrum `var(f) ∝ (f + f0)^-power` (natural images: power about 2), random
        per-component amplitudes and smooth random means (low-pass filtered noise)."""
        gen = torch.Generator().manual_seed(seed)
        h, w = shape[-2:]
        f = radial_frequency(h, w)
        spectrum = (f + 1.0 / max(h, w)) ** (-spectrum_power)
        spectrum = spectrum / spectrum.mean()
        amp = torch.exp(0.5 * torch.randn(num_components, generator=gen, dtype=torch.float64))
        variances = variance_scale * amp.view(-1, *([1] * len(shape))) * spectrum
        variances = variances.expand(num_components, *shape).clone()
        coef = torch.randn(num_components, *shape, generator=gen, dtype=torch.float64)
        means = idct2(coef * spectrum.sqrt())
        means = mean_scale * means / means.flatten(1).std(1).view(-1, *([1] * len(shape)))
        weights = torch.rand(num_components, generator=gen, dtype=torch.float64) + 0.5
        return cls(means, variances, weights, "dct")

    @classmethod
    def named(cls, name: str, seed: int | None = None) -> GaussianMixtureOracle:
        """One of the `ORACLES` image-like mixtures (`seed` None: its own seed), so that a
        sampler default can be checked on oracles with other spectra, shapes and component
        counts than the one it was tuned on."""
        if name not in ORACLES:
            raise ValueError(f"unknown oracle {name!r}; known: {sorted(ORACLES)}")
        shape, options = ORACLES[name]
        options = options if seed is None else {**options, "seed": seed}
        return cls.image_like(shape, **options)

    # ----------------------------------------------------------------- basis
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def to_basis(self, x: Tensor) -> Tensor:
        return dct2(x) if self.basis == "dct" else x

    def from_basis(self, c: Tensor) -> Tensor:
        return idct2(c) if self.basis == "dct" else c

    # ----------------------------------------------------------------- sampling and moments
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """`n` exact samples (float64) and their component labels."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, *self.shape, generator=generator, dtype=torch.float64)
        c = self._m[k].view(n, *self.shape) + self.variances[k].sqrt() * noise
        return self.from_basis(c), k

    @property
    def mean(self) -> Tensor:
        """Exact mean, flattened `[d]`."""
        return (self.weights[:, None] * self.means.flatten(1)).sum(0)

    @property
    def covariance(self) -> Tensor:
        """Exact covariance in pixel space, `[d, d]`: within-component plus between-component."""
        d = self.dim
        eye = torch.eye(d, dtype=torch.float64).view(d, *self.shape)
        basis = self.to_basis(eye).reshape(d, d)  # row i: coefficients of pixel basis vector i
        mu = self.means.flatten(1) - self.mean
        cov = (self.weights[:, None, None] * mu[:, :, None] * mu[:, None, :]).sum(0)
        lam = (self.weights[:, None] * self.variances.flatten(1)).sum(0)
        return cov + basis @ torch.diag(lam) @ basis.T

    # ----------------------------------------------------------------- posterior
    def _per_example_level(self, logsnr: Tensor, z: Tensor) -> Tensor:
        check_logsnr(logsnr)
        if logsnr.ndim == 0:
            return logsnr.expand(z.shape[0])
        if logsnr.numel() != z.shape[0] or logsnr.shape[0] != z.shape[0]:
            raise ValueError(
                f"the oracle needs one logsnr per example (shape [B]={z.shape[0]}), got "
                f"{tuple(logsnr.shape)}: per-element levels do not commute with its basis"
            )
        return logsnr.reshape(-1)

    def posterior(self, z: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`(p(k | z) [B, K], E[x | z, k] in the basis [B, K, d], Var[x | z, k] [B, K, d])`."""
        if tuple(z.shape[1:]) != self.shape:
            raise ValueError(f"z must have shape [B, {self.shape}], got {tuple(z.shape)}")
        level = self._per_example_level(logsnr, z).double()
        alpha, sigma = alpha_sigma(level)
        alpha, sigma = alpha[:, None, None], sigma[:, None, None]
        c = self.to_basis(z.double()).flatten(1)[:, None, :]
        m, lam = self._m[None], self._lam[None]
        var_z = alpha**2 * lam + sigma**2
        resid = c - alpha * m
        log_lik = -0.5 * (resid**2 / var_z + torch.log(2 * math.pi * var_z)).sum(-1)
        resp = torch.softmax(log_lik + self._log_w, dim=-1)
        gain = alpha * lam / var_z
        return resp, m + gain * resid, lam * sigma**2 / var_z

    def denoise(self, z: Tensor, logsnr: Tensor) -> Tensor:
        """Exact `E[x | z]` (the `Denoise` contract), returned in `z`'s dtype."""
        resp, mean_k, _ = self.posterior(z, logsnr)
        c = (resp[..., None] * mean_k).sum(1)
        return self.from_basis(c.view(z.shape)).to(z.dtype)

    def __call__(self, z: Tensor, logsnr: Tensor) -> Tensor:
        return self.denoise(z, logsnr)

    def posterior_covariance_diag(self, z: Tensor, logsnr: Tensor) -> Tensor:
        """Diagonal (in the basis) of `Cov[x | z]`: within-component variance plus the spread
        of the component means, `[B, *shape]` — an exact reference for Tweedie estimates."""
        resp, mean_k, var_k = self.posterior(z, logsnr)
        mean = (resp[..., None] * mean_k).sum(1, keepdim=True)
        second = (resp[..., None] * (var_k + (mean_k - mean) ** 2)).sum(1)
        return second.view(z.shape)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density (nats) of data `x`, per example."""
        c = self.to_basis(x.double()).flatten(1)[:, None, :]
        m, lam = self._m[None], self._lam[None]
        log_lik = -0.5 * ((c - m) ** 2 / lam + torch.log(2 * math.pi * lam)).sum(-1)
        return torch.logsumexp(log_lik + self._log_w, dim=-1)


_LOGSNR_CLAMP = 60.0
"""|logsnr| beyond which `EmpiricalDenoiser` uses the limit (float64 keeps e^60 exact enough)."""


class EmpiricalDenoiser:
    """The exact posterior mean under the empirical distribution of `images` `[N, *shape]`:

        E[x | z] = sum_i softmax_i(-||z - alpha x_i||^2 / (2 sigma^2)) x_i,

    the `Denoise` that minimises the denoising loss on exactly these images (one Gaussian
    per image with zero variance). Computed in `chunk`-image blocks with a running
    log-sum-exp, so memory stays `O(B * chunk)` for any `N`; float64 inside."""

    def __init__(self, images: Tensor, chunk: int = 4096):
        if images.ndim < 2 or images.shape[0] < 1:
            raise ValueError(f"images must be [N, *shape] with N >= 1, got {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise ValueError("images must be finite")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.shape = tuple(images.shape[1:])
        self.images = images.double().flatten(1)
        self.chunk = chunk

    def __call__(self, z: Tensor, logsnr: Tensor) -> Tensor:
        if tuple(z.shape[1:]) != self.shape:
            raise ValueError(f"z must have shape [B, {self.shape}], got {tuple(z.shape)}")
        check_logsnr(logsnr)
        # per-element levels allowed: log N(z; alpha x_i, sigma^2) is a sum over elements, and
        # +-inf are the limits (nearest image, mean image), clamped where float64 still holds
        device = self.images.device
        level = broadcast_logsnr(logsnr, z).double().clamp(-_LOGSNR_CLAMP, _LOGSNR_CLAMP)
        alpha, sigma = (a.expand(z.shape).flatten(1).to(device) for a in alpha_sigma(level))
        zf = z.double().flatten(1).to(device)
        norm = torch.full((z.shape[0], 1), -math.inf, dtype=torch.float64, device=device)
        weight_sum = torch.zeros_like(norm)
        total = torch.zeros_like(zf)
        for lo in range(0, self.images.shape[0], self.chunk):
            x = self.images[lo : lo + self.chunk]
            # log N(z; alpha x_i, sigma^2) up to terms that do not depend on i
            log_w = (alpha * zf / sigma**2) @ x.T - 0.5 * (alpha / sigma) ** 2 @ (x * x).T
            new_norm = torch.maximum(norm, log_w.amax(1, keepdim=True))
            scale, w = torch.exp(norm - new_norm), torch.exp(log_w - new_norm)
            weight_sum = weight_sum * scale + w.sum(1, keepdim=True)
            total = total * scale + w @ x
            norm = new_norm
        return (total / weight_sum).view(z.shape).to(z.device, z.dtype)


ORACLES: dict[str, tuple[tuple[int, ...], dict]] = {
    # the project's oracle (every sampler default was first tuned on it): far-apart modes
    "image_like": ((1, 16, 16), {}),
    # another spectrum and component count: 5 close modes (mean scale 0.1 against a
    # within-component standard deviation of 0.1), so the modes are resolved late (high logsnr)
    "unseen": (
        (1, 8, 8),
        dict(num_components=5, spectrum_power=1.5, mean_scale=0.1, variance_scale=0.01, seed=1),
    ),
    # colour, a steep spectrum and 12 components
    "colour12": (
        (3, 8, 8),
        dict(num_components=12, spectrum_power=3.0, mean_scale=0.2, variance_scale=0.05, seed=4),
    ),
    # held out: looked at once, after the defaults were chosen on the three above
    "held_out": (
        (1, 12, 12),
        dict(num_components=6, spectrum_power=2.5, mean_scale=0.15, variance_scale=0.03, seed=7),
    ),
}
"""Named image-like oracles: `name -> (shape, GaussianMixtureOracle.image_like options)`."""
