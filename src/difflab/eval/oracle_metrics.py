"""Exact metrics against a `GaussianMixtureOracle`: what samplers and distillation are judged on
without training a feature network.

- `exact_frechet`: Frechet distance of the samples' moments to the oracle's *exact* mean and
  covariance in pixel space (no reference sample, so no reference noise).
- `band_variance_ratios`: sample variance over exact variance per radial DCT band; few-step
  deterministic samplers over-smooth, which shows as ratios far below 1 in the high bands.
- `mode_weight_tv`: total variation between the oracle's mixture weights and the fraction of
  samples whose most likely component is each one.
- `cross_entropy_gap`: mean exact log-density of the samples minus that of exact samples,
  `E_q log p - E_p log p` (nats per example; float64, logsumexp over components in the oracle's
  basis). Zero for exact samples up to Monte-Carlo error; for samples with the right components
  but weights `w'` it is `sum_k (w'_k - w_k) E_{x ~ N_k} log p(x)`, which for separated components
  is `sum_k (w'_k - w_k)(log w_k - H_k)` with `H_k` the component's entropy: in high dimension the
  entropies differ by many nats, so wrong weights show. Positive: samples sit where the density is
  higher than it should be (too concentrated, or too much weight on narrow components).
- `mmd`: unbiased squared kernel MMD to an exact reference sample, Gaussian kernel on the
  coefficients whitened by the exact per-coefficient standard deviation, bandwidth the median
  squared distance of the reference (fixed per reference, so every sampler is judged by the same
  kernel); its floor is the value of an independent exact sample of the same size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def log_prob_stats(samples: Tensor, oracle: GaussianMixtureOracle) -> tuple[float, float]:
    """(mean, standard error) of the exact log-density of `samples` (nats per example)."""
    x = _flat(samples, oracle).view(-1, *oracle.shape)
    lp = torch.cat([oracle.log_prob(chunk) for chunk in x.split(1024)])
    return float(lp.mean()), float(lp.std() / math.sqrt(lp.shape[0]))


def whitened(samples: Tensor, oracle: GaussianMixtureOracle) -> Tensor:
    """Coefficients in the oracle's basis minus the exact mean over the exact standard deviation
    (closed form: `sum_k w_k (lam_k + m_k^2) - m^2` per coefficient), flat `[N, d]`."""
    x = _flat(samples, oracle).view(-1, *oracle.shape)
    w = oracle.weights[:, None]
    m_k, lam_k = oracle.to_basis(oracle.means).flatten(1), oracle.variances.flatten(1)
    mean = (w * m_k).sum(0)
    var = (w * (lam_k + m_k**2)).sum(0) - mean**2
    return (oracle.to_basis(x).flatten(1) - mean) / var.sqrt()


def _kernel_sum(a: Tensor, b: Tensor, bandwidth: float, *, same: bool) -> float:
    """`sum_{i, j} exp(-|a_i - b_j|^2 / bandwidth)` (`same`: `a is b`, the diagonal left out)."""
    total, b2 = 0.0, (b * b).sum(1)
    for lo in range(0, a.shape[0], 1024):
        ai = a[lo : lo + 1024]
        d2 = ((ai * ai).sum(1)[:, None] + b2[None] - 2 * ai @ b.T).clamp_min(0)
        total += float(torch.exp(-d2 / bandwidth).sum())
    return total - a.shape[0] if same else total


@dataclass(frozen=True)
class ExactReference:
    """What the distribution metrics compare against, computed once per oracle: the mean exact
    log-density of `n` exact samples (and its standard error), and a whitened exact sample with
    its kernel bandwidth and its kernel self-sum for the MMD."""

    mean_log_prob: float
    mean_log_prob_se: float
    points: Tensor
    bandwidth: float
    self_sum: float

    @classmethod
    def of(
        cls,
        oracle: GaussianMixtureOracle,
        n: int = 4000,
        seed: int = 12345,
        n_log_prob: int = 20000,
    ) -> ExactReference:
        gen = torch.Generator().manual_seed(seed)
        lp_mean, lp_se = log_prob_stats(oracle.sample(n_log_prob, gen)[0], oracle)
        y = whitened(oracle.sample(n, gen)[0], oracle)
        sub = y[:1000]
        d2 = torch.cdist(sub, sub).pow(2)
        bandwidth = float(d2[torch.triu_indices(len(sub), len(sub), 1).unbind()].median())
        return cls(lp_mean, lp_se, y, bandwidth, _kernel_sum(y, y, bandwidth, same=True))


def cross_entropy_gap(
    samples: Tensor, oracle: GaussianMixtureOracle, reference: ExactReference
) -> tuple[float, float]:
    """`(E_q log p - E_p log p, its standard error)` in nats per example (module docstring)."""
    mean, se = log_prob_stats(samples, oracle)
    return mean - reference.mean_log_prob, math.hypot(se, reference.mean_log_prob_se)


def mmd(samples: Tensor, oracle: GaussianMixtureOracle, reference: ExactReference) -> float:
    """Unbiased squared MMD between the samples and the exact reference (Gaussian kernel
    `exp(-|a - b|^2 / h)` on whitened coefficients, `h` the reference's median squared distance):
    `mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean k(x_i, y_j)`."""
    x, y, h = whitened(samples, oracle), reference.points, reference.bandwidth
    n, m = x.shape[0], y.shape[0]
    return (
        _kernel_sum(x, x, h, same=True) / (n * (n - 1))
        + reference.self_sum / (m * (m - 1))
        - 2 * _kernel_sum(x, y, h, same=False) / (n * m)
    )


def oracle_report(
    samples: Tensor,
    oracle: GaussianMixtureOracle,
    num_bands: int = 8,
    reference: ExactReference | None = None,
) -> dict:
    """All exact metrics as a JSON-friendly dict (the cross-entropy gap and the MMD need an
    exact `reference`)."""
    ratios = band_variance_ratios(samples, oracle, num_bands)
    out = {
        "frechet_exact": exact_frechet(samples, oracle),
        "band_variance_ratio": [float(r) for r in ratios],
        "high_band_variance_ratio": float(ratios[-1]),
        "mode_weight_tv": mode_weight_tv(samples, oracle),
        "num_samples": int(samples.shape[0]),
    }
    if reference is not None:
        gap, se = cross_entropy_gap(samples, oracle, reference)
        out |= {"cross_entropy_gap": gap, "cross_entropy_gap_se": se}
        out["mmd"] = mmd(samples, oracle, reference)
    return out
