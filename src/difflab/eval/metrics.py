"""Distances between two sets of features: Frechet distance, KID, precision/recall.

All three take feature arrays `[N, D]` (numpy or torch, any float dtype) and compute in float64.

- Frechet distance (Heusel et al. 2017, eq. 6; Dowson & Landau 1982) between the Gaussians fitted to
  the two sets: `||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})`.
- KID (Binkowski et al. 2018, sec. 3 and app. D): the unbiased MMD^2 estimate with the cubic
  polynomial kernel `k(x, y) = (x.y / d + 1)^3`, averaged over random subsets.
- Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-3): k-NN balls around each real
  (resp. generated) feature approximate the manifold; precision is the fraction of generated
  samples inside the real manifold, recall the fraction of real samples inside the generated one.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]


def as_features(features: ArrayLike | torch.Tensor, name: str = "features") -> Array:
    """A float64 `[N, D]` array; anything else (wrong rank, empty, NaN/inf) is a ValueError."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    array = np.asarray(features)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{name} must be a numeric array, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, D] with N, D >= 1, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf ({int((~np.isfinite(array)).sum())} values)")
    return array


def _check_pair(a: Array, b: Array, names: tuple[str, str]) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} have different feature dims: {a.shape[1]} != {b.shape[1]}"
        )


class GaussianStats(NamedTuple):
    """Mean `[D]` and covariance `[D, D]` of a feature set (float64), and its sample count."""

    mu: Array
    cov: Array
    num: int


def feature_stats(features: ArrayLike | torch.Tensor, name: str = "features") -> GaussianStats:
    """Sample mean and unbiased covariance; needs at least 2 samples."""
    x = as_features(features, name)
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples for a covariance, got {x.shape[0]}")
    return GaussianStats(x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], -1), len(x))


def _psd_eigvals_sqrt(eigvals: Array) -> Array:
    """`sqrt` of PSD eigenvalues; those below round-off (numpy's `matrix_rank` tolerance,
    `max * D * eps`) are 0: sqrt would turn a 1e-17 residue into a 3e-9 contribution each."""
    tol = max(eigvals.max(initial=0.0), 0.0) * len(eigvals) * np.finfo(np.float64).eps
    return np.sqrt(np.where(eigvals > tol, eigvals, 0.0))


def _psd_sqrt(matrix: Array) -> Array:
    """Symmetric square root of a PSD matrix via `eigh`."""
    eigvals, eigvecs = np.linalg.eigh(matrix)
    return (eigvecs * _psd_eigvals_sqrt(eigvals)) @ eigvecs.T


def trace_sqrt_product(cov1: Array, cov2: Array) -> float:
    """`tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(S1^{1/2} S2 S1^{1/2}))`.

    `S1 S2` is not symmetric, so `scipy.linalg.sqrtm(S1 @ S2)` goes through a complex Schur form: it
    returns spurious imaginary parts and loses accuracy when the covariances are singular, which
    they are whenever N <= D (e.g. 2k samples of 2048-d Inception features), hence the usual
    `eps * I` offset hack. `S1^{1/2} S2 S1^{1/2}` is similar to `S1 S2`, symmetric and PSD, so
    two `eigh` calls give its spectrum in real arithmetic, with no offset and no imaginary part.
    """
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    return float(_psd_eigvals_sqrt(np.linalg.eigvalsh((middle + middle.T) / 2)).sum())


def frechet_distance_from_stats(
    mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike
) -> float:
    """Frechet (2-Wasserstein^2) distance between `N(mu1, cov1)` and `N(mu2, cov2)`."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.ndim != 1:
        raise ValueError(f"mu1 must be a vector [D], got shape {mu1.shape}")
    d = mu1.shape[0]
    for name, value, shape in (
        ("mu1", mu1, (d,)),
        ("mu2", mu2, (d,)),
        ("cov1", cov1, (d, d)),
        ("cov2", cov2, (d, d)),
    ):
        if value.shape != shape:
            raise ValueError(f"{name} has shape {value.shape}, expected {shape} (from mu1)")
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or inf")
    mean_term = float(np.sum((mu1 - mu2) ** 2))
    return mean_term + float(np.trace(cov1) + np.trace(cov2)) - 2 * trace_sqrt_product(cov1, cov2)


def frechet_distance(
    features1: ArrayLike | torch.Tensor | GaussianStats,
    features2: ArrayLike | torch.Tensor | GaussianStats,
) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (or precomputed stats)."""
    stats = [
        f if isinstance(f, GaussianStats) else feature_stats(f, name)
        for f, name in ((features1, "features1"), (features2, "features2"))
    ]
    if stats[0].mu.shape != stats[1].mu.shape:
        raise ValueError(
            f"features1 and features2 have different feature dims: "
            f"{stats[0].mu.shape[0]} != {stats[1].mu.shape[0]}"
        )
    return frechet_distance_from_stats(stats[0].mu, stats[0].cov, stats[1].mu, stats[1].cov)


def polynomial_kernel(x: Array, y: Array) -> Array:
    """`k(x, y) = (x.y / d + 1)^3`, the KID kernel (Binkowski et al. 2018, sec. 3)."""
    gram = x @ y.T / x.shape[1] + 1.0
    return gram * gram * gram  # 5x faster than np.power


def mmd2_unbiased(x: Array, y: Array) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3): off-diagonal kernel means minus cross term."""
    m, n = len(x), len(y)
    kernel = polynomial_kernel(xy := np.concatenate([x, y]), xy)  # one matmul for all three blocks
    k_xx, k_yy, k_xy = kernel[:m, :m], kernel[m:, m:], kernel[:m, m:]
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


class KID(NamedTuple):
    mean: float
    std: float


def kernel_inception_distance(
    features1: ArrayLike | torch.Tensor,
    features2: ArrayLike | torch.Tensor,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> KID:
    """KID: mean and std of the unbiased MMD^2 over `num_subsets` random subsets.

    As in Binkowski et al.'s reference code, each subset draws `min(subset_size, N1, N2)` samples
    without replacement from each set, independently across subsets. Same distribution -> mean
    ~ 0 (it can be slightly negative: the estimator is unbiased). With `N <= subset_size` in both
    sets every subset is the whole set, so the std is 0: use a smaller `subset_size` for a spread.
    """
    x, y = as_features(features1, "features1"), as_features(features2, "features2")
    _check_pair(x, y, ("features1", "features2"))
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(
            f"need num_subsets >= 1 and subset_size >= 2, got {num_subsets}, {subset_size}"
        )
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(
            x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)]
        )
        for _ in range(num_subsets)
    ]
    return KID(float(np.mean(values)), float(np.std(values)))


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`||a_i - b_j||^2` via the Gram expansion (one matmul), clamped at 0 against round-off."""
    return (a.square().sum(1, keepdim=True) + b.square().sum(1) - 2 * a @ b.T).clamp_(min=0)


def knn_radii(features: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Squared distance of each sample to its k-th nearest neighbour in its set (not itself)."""
    return torch.cat(
        [
            # The k+1-th smallest, because each row includes the sample itself at distance 0.
            _squared_distances(rows, features).kthvalue(k + 1, dim=1).values
            for rows in features.split(batch_size)
        ]
    )


def manifold_coverage(
    manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, batch_size: int
) -> float:
    """Fraction of `queries` inside at least one ball `{x: ||x - manifold_i||^2 <= radii_i}`."""
    inside = [
        (_squared_distances(rows, manifold) <= radii).any(dim=1)
        for rows in queries.split(batch_size)
    ]
    return float(torch.cat(inside).double().mean())


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def precision_recall(
    real_features: ArrayLike | torch.Tensor,
    fake_features: ArrayLike | torch.Tensor,
    *,
    k: int = 3,
    batch_size: int = 1024,
) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN radii (k=3 in the paper).

    precision = P_fake[x inside the real manifold], recall = P_real[x inside the fake manifold].
    Distances are computed in float64 in row batches of `batch_size` (memory ~ batch * N * 8 bytes).
    """
    real = torch.from_numpy(as_features(real_features, "real_features"))
    fake = torch.from_numpy(as_features(fake_features, "fake_features"))
    _check_pair(real.numpy(), fake.numpy(), ("real_features", "fake_features"))
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(
            f"k must satisfy 1 <= k < number of samples in each set, got k={k} "
            f"with {len(real)} real and {len(fake)} fake samples"
        )
    real_radii, fake_radii = knn_radii(real, k, batch_size), knn_radii(fake, k, batch_size)
    return PrecisionRecall(
        precision=manifold_coverage(real, real_radii, fake, batch_size),
        recall=manifold_coverage(fake, fake_radii, real, batch_size),
    )
