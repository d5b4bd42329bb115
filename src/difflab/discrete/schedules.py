"""Masking schedules in logsnr form.

A discrete process keeps a token with probability `alpha = sigmoid(logsnr)`, so every schedule of
`difflab.diffusion.schedules` (a decreasing map `t -> logsnr`) is also a discrete schedule. The
one masked diffusion uses most is linear in `alpha` (MDLM's log-linear schedule, MD4's "linear"):

    alpha(t) = e + (1 - 2 e)(1 - t),   logsnr(t) = log(alpha / (1 - alpha)),

with `e = 0` giving `logsnr(0) = +inf` and `logsnr(1) = -inf` exactly (MD4 clips with
`e = 1e-4`). Written as `log(e + (1 - 2e)(1 - t)) - log(e + (1 - 2e) t)` it is accurate at both
ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.diffusion.schedules import Schedule


def _logit(p: float) -> float:
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p) - math.log1p(-p)


@dataclass(frozen=True)
class LinearMaskingSchedule(Schedule):
    """`alpha(t) = eps + (1 - 2 eps)(1 - t)`: linear in the keep probability (module docstring).
    `eps = 0` (the default) spans the whole line, `logsnr(0) = +inf`, `logsnr(1) = -inf`."""

    eps: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.eps, (int, float)) and 0.0 <= self.eps < 0.5):
            raise ValueError(f"eps must be in [0, 0.5), got {self.eps!r}")

    @property
    def logsnr_min(self) -> float:  # type: ignore[override]
        return _logit(self.eps)

    @property
    def logsnr_max(self) -> float:  # type: ignore[override]
        return _logit(1.0 - self.eps)

    def alpha(self, t: Tensor) -> Tensor:
        return self.eps + (1.0 - 2.0 * self.eps) * (1.0 - t)

    def logsnr(self, t: Tensor) -> Tensor:
        slope = 1.0 - 2.0 * self.eps
        return torch.log(self.eps + slope * (1.0 - t)) - torch.log(self.eps + slope * t)

    def t_of(self, logsnr: Tensor) -> Tensor:
        alpha = torch.sigmoid(logsnr)
        return (1.0 - (alpha - self.eps) / (1.0 - 2.0 * self.eps)).clamp(0.0, 1.0)

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        # d/dt log(a / (1 - a)) = a' / (a (1 - a)), a' = -(1 - 2 eps)
        slope = 1.0 - 2.0 * self.eps
        alpha = self.alpha(t)
        return -slope / (alpha * (1.0 - alpha))
