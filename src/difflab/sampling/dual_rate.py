"""Dual-rate ancestral sampling (docs/methods/dual_rate.md): a heavy encoder call at the steps
of a refresh schedule, a light denoiser call at every step on the features of the latest one.

The sampler needs two callables where every other sampler needs one `Denoise`, so its `denoise`
argument is a `DualRateDenoise`: `.encode(z, logsnr) -> features` (the heavy call) and
`.denoise_light(z, logsnr, features) -> x_hat` (the light call, in x-space like a `Denoise`).
A `DualRateDenoise` is also a plain `Denoise` (`__call__(z, logsnr)` encodes and denoises at the
same level, `tau = t`), so every other sampler runs on it as on the composed net, refreshing at
every step: that is the only way they can use it, because a deterministic (DDIM) path with stale
features is not what the model was trained for (the light net sees a state `z_t` that an
ancestral chain drew from the encoder's `z_tau`); `dual_rate_ddpm` is the only sampler with a
refresh option, and asking another sampler for one is an unknown-option error. Given a plain
`Denoise` (a single-rate model, or a guided dual-rate one), `dual_rate_ddpm` has no features to
reuse and is exactly `ddpm`.

Costs: `nfe = steps` light calls and `ceil(steps / K)` (or `len(refresh)`) encoder calls per
sample, `SamplerSpec.part_calls`; `difflab.nets.cost.flops_per_sample` prices them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..diffusion.parameterization import check_prediction, level_for, x_from_prediction
from ..diffusion.transitions import posterior_sample
from .grids import prepare_grid
from .registry import Callback, register_sampler


@dataclass(frozen=True)
class DualRateDenoise:
    """The two callables of a dual-rate model in `Denoise` terms: `encode_fn(z, level) ->
    features`, `light_fn(z, level, features) -> network prediction` (`prediction`: x, eps or v),
    `x_hat` clamped to `[-clip_x, clip_x]` when `clip_x` is given."""

    encode_fn: Callable[[Tensor, Tensor], Any]
    light_fn: Callable[[Tensor, Tensor, Any], Tensor]
    prediction: str = "v"
    clip_x: float | None = None

    def __post_init__(self) -> None:
        check_prediction(self.prediction)

    @classmethod
    def from_net(
        cls, net: Any, prediction: str, clip_x: float | None = None, **cond
    ) -> DualRateDenoise:
        """From a net with `encode(z, logsnr, **cond)` and `denoise_light(z, logsnr, features,
        **cond)` (`difflab.nets.DualRateNet`), conditioning such as `labels=` bound in."""
        if not (hasattr(net, "encode") and hasattr(net, "denoise_light")):
            raise TypeError(
                f"{type(net).__name__} is not a dual-rate net (needs encode and denoise_light)"
            )
        encode = functools.partial(net.encode, **cond)
        light = functools.partial(net.denoise_light, **cond)
        return cls(encode, light, prediction, clip_x)

    def encode(self, z: Tensor, logsnr: Tensor) -> Any:
        return self.encode_fn(z, level_for(logsnr, z))

    def denoise_light(self, z: Tensor, logsnr: Tensor, features: Any) -> Tensor:
        level = level_for(logsnr, z)
        x_hat = x_from_prediction(z, self.light_fn(z, level, features), level, self.prediction)
        return x_hat if self.clip_x is None else x_hat.clamp(-self.clip_x, self.clip_x)

    def __call__(self, z: Tensor, logsnr: Tensor) -> Tensor:
        return self.denoise_light(z, logsnr, self.encode(z, logsnr))


@dataclass(frozen=True)
class DualRateFactory:
    """`make_denoise(labels=None) -> DualRateDenoise` of a dual-rate net (what
    `sampling.generate` takes)."""

    net: Any
    prediction: str
    clip_x: float | None = 1.0

    def __call__(self, labels: Tensor | None = None) -> DualRateDenoise:
        cond = {} if labels is None else {"labels": labels}
        return DualRateDenoise.from_net(self.net, self.prediction, self.clip_x, **cond)


def refresh_schedule(
    steps: int, refresh_every: int | None = None, refresh: Sequence[int] | None = None
) -> tuple[int, ...]:
    """The step indices at which the encoder runs: `0, K, 2K, ...` for `refresh_every = K`, or
    the explicit `refresh` (strictly increasing integers in `[0, steps)` starting at 0; the
    first step has no earlier features). Neither: every step (`K = 1`). Errors name the
    argument."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if refresh is not None and refresh_every is not None:
        raise ValueError("give refresh_every or refresh (an explicit schedule), not both")
    if refresh is None:
        k = 1 if refresh_every is None else refresh_every
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"refresh_every must be a positive integer, got {k!r}")
        return tuple(range(0, steps, k))
    if isinstance(refresh, (str, bytes)) or not isinstance(refresh, Sequence):
        raise ValueError(f"refresh must be a sequence of step indices, got {refresh!r}")
    out = tuple(refresh)
    if not out or any(isinstance(i, bool) or not isinstance(i, int) for i in out):
        raise ValueError(f"refresh must be a non-empty sequence of integers, got {refresh!r}")
    if out[0] != 0:
        raise ValueError(f"refresh must start at step 0 (the first step needs features), got {out}")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"refresh must be strictly increasing, got {out}")
    if out[-1] >= steps:
        raise ValueError(f"refresh indices must be < steps={steps}, got {out}")
    return out


def encoder_calls(
    steps: int, *, refresh_every: int | None = None, refresh: Sequence[int] | None = None, **_
) -> int:
    """Encoder calls per sample: `ceil(steps / K)`, or `len(refresh)`."""
    if refresh is None:
        return math.ceil(steps / (refresh_every or 1))
    return len(refresh_schedule(steps, refresh=refresh))


@dataclass(frozen=True)
class _SingleRate:
    """A plain `Denoise` seen as a dual-rate model without features (`encode` returns None)."""

    denoise: Callable[[Tensor, Tensor], Tensor]

    def encode(self, z: Tensor, logsnr: Tensor) -> None:
        return None

    def denoise_light(self, z: Tensor, logsnr: Tensor, features: None) -> Tensor:
        return self.denoise(z, logsnr)


def _parts(steps: int, **options) -> dict[str, int]:
    return {"encode": encoder_calls(steps, **options), "denoise_light": steps}


@register_sampler("dual_rate_ddpm", stochastic=True, parts=_parts)
def sample_dual_rate_ddpm(
    denoise: DualRateDenoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    refresh_every: int | None = None,
    refresh: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Dual-rate DDPM: encoder at the refresh steps, light denoiser and an ancestral step
    `z_s ~ q(z_s | z_t, x_hat)` every step. NFE = steps (light); encoder ceil(steps / K)."""
    if not (hasattr(denoise, "encode") and hasattr(denoise, "denoise_light")):
        denoise = _SingleRate(denoise)  # a plain Denoise: no features, this is `ddpm`
    grid = prepare_grid(z, logsnrs)
    steps = grid.shape[0] - 1
    schedule = frozenset(refresh_schedule(steps, refresh_every, refresh))
    features = None
    for i in range(steps):
        level = level_for(grid[i], z)
        if i in schedule:
            features = denoise.encode(z, level)
        x_hat = denoise.denoise_light(z, level, features)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = posterior_sample(z, x_hat, grid[i], grid[i + 1], noise)
        if callback is not None:
            callback({"i": i, "z": z, "x_hat": x_hat, "logsnr": grid[i]})
    return z
