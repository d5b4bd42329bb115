"""Orthonormal 2-D DCT-II for images and radial frequency bands.

Natural images are close to stationary, so their covariance is close to diagonal in a Fourier
basis; the image-like oracle and the covariance-aware sampler both work in this basis. The DCT
is applied as two small matrix products (fine for the image sizes difflab trains on CPU).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def dct_matrix(n: int, *, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """Orthonormal DCT-II matrix `M` (`M @ M.T = I`): `X_k = sum_i M[k, i] x_i`."""
    if n < 1:
        raise ValueError(f"DCT size must be positive, got {n}")
    i = torch.arange(n, dtype=torch.float64)
    k = i[:, None]
    m = torch.cos(math.pi * (2 * i[None, :] + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.to(dtype=dtype, device=device)


def dct2(x: Tensor) -> Tensor:
    """2-D orthonormal DCT over the last two dims."""
    mh = dct_matrix(x.shape[-2], dtype=x.dtype, device=x.device)
    mw = dct_matrix(x.shape[-1], dtype=x.dtype, device=x.device)
    return mh @ x @ mw.T


def idct2(c: Tensor) -> Tensor:
    """Inverse of `dct2` (the transpose, as the basis is orthonormal)."""
    mh = dct_matrix(c.shape[-2], dtype=c.dtype, device=c.device)
    mw = dct_matrix(c.shape[-1], dtype=c.dtype, device=c.device)
    return mh.T @ c @ mw


def radial_frequency(h: int, w: int) -> Tensor:
    """Normalised radial frequency `sqrt((k_h / h)^2 + (k_w / w)^2)` of each DCT coefficient, in
    `[0, sqrt(2))`; 0 is the DC term."""
    fh = torch.arange(h, dtype=torch.float64) / h
    fw = torch.arange(w, dtype=torch.float64) / w
    return torch.sqrt(fh[:, None] ** 2 + fw[None, :] ** 2)


def radial_bands(h: int, w: int, num_bands: int) -> Tensor:
    """Band index in `[0, num_bands)` for each DCT coefficient, bands equally spaced in radial
    frequency up to the highest one present (band 0 holds the DC term, the last band the
    highest frequencies)."""
    if num_bands < 1:
        raise ValueError(f"num_bands must be positive, got {num_bands}")
    r = radial_frequency(h, w)
    r = r / r.max().clamp_min(1e-12)
    return torch.clamp((r * num_bands).long(), max=num_bands - 1)
