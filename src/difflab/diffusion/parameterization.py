"""The variance-preserving Gaussian process in logSNR notation and the one denoiser contract.

`z = alpha * x + sigma * eps` with `alpha**2 = sigmoid(logsnr)`, `sigma**2 = sigmoid(-logsnr)`.
A network predicts `x`, `eps` or `v = alpha * eps - sigma * x` (Salimans & Ho 2022, eq. 9); the
conversions here turn any of them into the posterior mean `x_hat = E[x | z]` that every sampler,
guidance rule, distillation method and metric consumes through `Denoise`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Denoise = Callable[[Tensor, Tensor], Tensor]
"""`(z, logsnr) -> x_hat = E[x | z]`; `logsnr` broadcasts against `z` (see `broadcast_logsnr`)."""

Prediction = Literal["x", "eps", "v"]
PREDICTIONS: tuple[str, ...] = ("x", "eps", "v")


def check_logsnr(logsnr: Tensor, name: str = "logsnr") -> Tensor:
    """Reject non-tensors and NaN levels with an error that names the argument."""
    if not isinstance(logsnr, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logsnr).__name__}")
    if not logsnr.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logsnr.dtype}")
    if torch.isnan(logsnr).any():
        raise ValueError(f"{name} contains NaN")
    return logsnr


def broadcast_logsnr(logsnr: Tensor, z: Tensor) -> Tensor:
    """Shape `logsnr` so that it broadcasts against `z`.

    Accepted: a scalar; `[B]` (one level per example, right-padded with singleton dims); or any
    tensor with `z.ndim` dims that broadcasts to `z` (per-element levels, e.g. `[B, T, 1, 1, 1]`
    for one level per video frame). Anything else is a `ValueError` naming both shapes.
    """
    if logsnr.ndim == 0:
        return logsnr
    shape = tuple(logsnr.shape)
    if logsnr.ndim < z.ndim:
        logsnr = logsnr.reshape(*shape, *([1] * (z.ndim - logsnr.ndim)))
    if logsnr.ndim != z.ndim or any(
        a != b and a != 1 for a, b in zip(logsnr.shape, z.shape, strict=True)
    ):
        raise ValueError(
            f"logsnr of shape {shape} does not broadcast against z of shape "
            f"{tuple(z.shape)}: use [B], a scalar, or a per-element shape with z.ndim dims"
        )
    return logsnr


def level_for(logsnr: Tensor, z: Tensor) -> Tensor:
    """The level handed to a network or `Denoise` for the batch `z`: a scalar grid entry becomes
    one level per example (`[B]`); a `[B]` or per-element level is returned as it is."""
    return logsnr.expand(z.shape[0]) if logsnr.ndim == 0 else logsnr


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """`alpha = sqrt(sigmoid(logsnr))`, `sigma = sqrt(sigmoid(-logsnr))`; exact at +-inf."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def diffuse(x: Tensor, eps: Tensor, logsnr: Tensor) -> Tensor:
    """Forward process `q(z | x)`: `z = alpha x + sigma eps`."""
    alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, x))
    return alpha * x + sigma * eps


def eps_from_x(z: Tensor, x: Tensor, logsnr: Tensor) -> Tensor:
    """`eps = (z - alpha x) / sigma`."""
    alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, z))
    return (z - alpha * x) / sigma


def x_from_eps(z: Tensor, eps: Tensor, logsnr: Tensor) -> Tensor:
    """`x = (z - sigma eps) / alpha`."""
    alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, z))
    return (z - sigma * eps) / alpha


def v_from_x(z: Tensor, x: Tensor, logsnr: Tensor) -> Tensor:
    """`v = alpha eps - sigma x = (alpha z - x) / sigma` (uses `alpha^2 + sigma^2 = 1`)."""
    alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, z))
    return (alpha * z - x) / sigma


def x_from_v(z: Tensor, v: Tensor, logsnr: Tensor) -> Tensor:
    """`x = alpha z - sigma v`: well conditioned at every logsnr."""
    alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, z))
    return alpha * z - sigma * v


def eps_from_v(z: Tensor, v: Tensor, logsnr: Tensor) -> Tensor:
    """`eps = sigma z + alpha v`."""
    alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, z))
    return sigma * z + alpha * v


def v_from_eps(z: Tensor, eps: Tensor, logsnr: Tensor) -> Tensor:
    """`v = (eps - sigma z) / alpha`."""
    alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, z))
    return (eps - sigma * z) / alpha


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return prediction


def x_from_prediction(z: Tensor, pred: Tensor, logsnr: Tensor, prediction: str) -> Tensor:
    """Turn a network output of kind `prediction` into `x_hat`."""
    check_prediction(prediction)
    if prediction == "x":
        return pred
    if prediction == "eps":
        return x_from_eps(z, pred, logsnr)
    return x_from_v(z, pred, logsnr)


def prediction_from_x(z: Tensor, x: Tensor, logsnr: Tensor, prediction: str) -> Tensor:
    """The inverse of `x_from_prediction`: the target a network of kind `prediction` regresses."""
    check_prediction(prediction)
    if prediction == "x":
        return x
    if prediction == "eps":
        return eps_from_x(z, x, logsnr)
    return v_from_x(z, x, logsnr)


def as_denoiser(
    net: Callable[..., Tensor], prediction: str = "v", clip_x: float | None = None, **cond
) -> Denoise:
    """Adapt `net(z, logsnr, **cond) -> prediction` to the `Denoise` contract.

    `clip_x` clamps `x_hat` to `[-clip_x, clip_x]` (the data range) when given.
    """
    check_prediction(prediction)

    def denoise(z: Tensor, logsnr: Tensor) -> Tensor:
        level = level_for(logsnr, z)
        x_hat = x_from_prediction(z, net(z, level, **cond), level, prediction)
        return x_hat if clip_x is None else x_hat.clamp(-clip_x, clip_x)

    return denoise


def prior_kl(x: Tensor, logsnr_end: float) -> Tensor:
    """`KL(q(z_1 | x) || N(0, I))` in nats summed per example: the ELBO's prior term at the
    noisiest level `logsnr_end` (VDM, Kingma et al. 2021, eq. 11)."""
    alpha2 = 1.0 / (1.0 + math.exp(-logsnr_end))
    sigma2 = 1.0 - alpha2
    mean2 = alpha2 * x.flatten(1).pow(2)
    return 0.5 * (mean2 + sigma2 - math.log(sigma2) - 1.0).sum(1)
