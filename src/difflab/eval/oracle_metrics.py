"""Exact metrics against a `GaussianMixtureOracle`: what samplers and distillation are judged on
without training a feature network.

- `exact_frechet`: Frechet distance of the samples' moments to the oracle's *exact* mean and
  covariance in pixel space (no reference sample, so no reference noise).
- `band_variance_ratios`: sample variance over exact variance per radial DCT band; few-step
  deterministic samplers over-smooth, which shows as ratios far below 1 in the high bands.
- `mode_weight_tv`: total variation between the oracle's mixture weights and the fraction of
  samples whose most likely component is each one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion.dct import dct2, radial_bands
from ..diffusion.oracle import GaussianMixtureOracle
from .metrics import frechet_distance_from_stats


def _flat(samples: Tensor, oracle: GaussianMixtureOracle) -> Tensor:
    if tuple(samples.shape[1:]) != oracle.shape:
        raise ValueError(f"samples must have shape [N, {oracle.shape}], got {tuple(samples.shape)}")
    if samples.shape[0] < 2:
        raise ValueError("need at least 2 samples for a covariance")
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or inf")
    return samples.double().flatten(1)


def exact_frechet(samples: Tensor, oracle: GaussianMixtureOracle) -> float:
    """`||m - mu||^2 + tr(C + S - 2 (C S)^{1/2})` with `(mu, S)` the exact moments."""
    x = _flat(samples, oracle)
    return frechet_distance_from_stats(
        x.mean(0).numpy(), torch.cov(x.T).numpy(), oracle.mean.numpy(), oracle.covariance.numpy()
    )


def band_variance_ratios(
    samples: Tensor, oracle: GaussianMixtureOracle, num_bands: int = 8
) -> Tensor:
    """Per radial DCT band (low to high frequency): total sample variance / exact variance of the
    DCT coefficients in the band, `[num_bands]`."""
    x = _flat(samples, oracle).view(-1, *oracle.shape)
    sample_var = dct2(x).var(0)  # [*shape]
    exact = _exact_coefficient_variance(oracle)
    bands = radial_bands(*oracle.shape[-2:], num_bands).expand(oracle.shape)
    num = torch.zeros(num_bands, dtype=torch.float64).index_add_(
        0, bands.flatten(), sample_var.flatten()
    )
    den = torch.zeros(num_bands, dtype=torch.float64).index_add_(
        0, bands.flatten(), exact.flatten()
    )
    return num / den


def _exact_coefficient_variance(oracle: GaussianMixtureOracle) -> Tensor:
    """Exact variance of each DCT coefficient of the data, `[*shape]`."""
    d = oracle.dim
    eye = torch.eye(d, dtype=torch.float64).view(d, *oracle.shape)
    basis = dct2(eye).reshape(d, d)  # row i: DCT of pixel basis vector i
    cov = oracle.covariance
    return torch.einsum("ij,ik,kj->j", basis, cov, basis).view(oracle.shape)


def mode_weight_tv(samples: Tensor, oracle: GaussianMixtureOracle) -> float:
    """TV distance between the mixture weights and the empirical component frequencies."""
    x = _flat(samples, oracle).view(-1, *oracle.shape)
    resp, _, _ = oracle.posterior(x, torch.tensor(40.0, dtype=torch.float64))
    counts = torch.bincount(resp.argmax(1), minlength=len(oracle.weights)).double()
    return float((counts / counts.sum() - oracle.weights).abs().sum() / 2)


def oracle_report(samples: Tensor, oracle: GaussianMixtureOracle, num_bands: int = 8) -> dict:
    """All exact metrics as a JSON-friendly dict."""
    ratios = band_variance_ratios(samples, oracle, num_bands)
    return {
        "frechet_exact": exact_frechet(samples, oracle),
        "band_variance_ratio": [float(r) for r in ratios],
        "high_band_variance_ratio": float(ratios[-1]),
        "mode_weight_tv": mode_weight_tv(samples, oracle),
        "num_samples": int(samples.shape[0]),
    }
