"""Classifier-free guidance (Ho & Salimans 2022) with a guidance interval (Kynkaanniemi et al.
2024; used by SiD2), as a `Denoise` wrapper.

`x_guided = x_cond + w (x_cond - x_uncond)` for logsnr in `[lo, hi]`, `x_cond` elsewhere. With
`w = 0` guidance is off. The interval test is elementwise, so per-element levels work; both
predictions are always computed (no data-dependent branching, so no host sync in a sampling loop)
and an unconditional pass therefore costs one extra network evaluation per step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .parameterization import Denoise, broadcast_logsnr


def guided_denoiser(
    denoise_cond: Denoise,
    denoise_uncond: Denoise,
    guidance: float,
    interval: tuple[float, float] = (-math.inf, math.inf),
) -> Denoise:
    """Wrap a conditional and an unconditional `Denoise` into a guided one.

    `guidance` is `w` (0 = conditional only); `interval = (lo, hi)` in logsnr restricts it.
    """
    lo, hi = interval
    if not lo <= hi:
        raise ValueError(f"guidance interval must satisfy lo <= hi, got {interval}")
    if not math.isfinite(guidance):
        raise ValueError(f"guidance must be finite, got {guidance}")

    def denoise(z: Tensor, logsnr: Tensor) -> Tensor:
        x_cond = denoise_cond(z, logsnr)
        if guidance == 0:
            return x_cond
        x_uncond = denoise_uncond(z, logsnr)
        level = broadcast_logsnr(logsnr, z)
        inside = (level >= lo) & (level <= hi)
        return torch.where(inside, x_cond + guidance * (x_cond - x_uncond), x_cond)

    return denoise
