"""Samplers by name, each with its honest number of function evaluations (NFE).

A sampler is a pure function `fn(denoise, z, logsnrs, *, generator=None, callback=None, **opts)`
over an increasing logsnr grid (see `grids.py`). `nfe(steps, **options)` is the number of
denoiser calls per sample it makes for a grid of `steps + 1` levels ending at +inf, given the
sampler options that change it (`finite_end=True` for a grid that stops at a finite level);
`jvps(steps, **options)` how many of them are forward+JVP; `calls(logsnrs, **options)` reads both
off an actual grid; `nfe_forward_equivalent(steps, jvp_cost)` charges a JVP at its measured cost
in forward passes (the covariance-aware sampler reports both conventions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Count = Callable[..., int]
"""`(steps, *, finite_end=False, **options) -> int`; unknown options are ignored."""


def _steps(steps: int, **_) -> int:
    return steps


def _none(steps: int, **_) -> int:
    return 0


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    fn: Callable[..., Tensor]
    nfe: Count
    jvps: Count = _none
    stochastic: bool = False
    description: str = ""

    def calls(self, logsnrs: Tensor, **options) -> tuple[int, int]:
        """`(nfe, jvps)` per sample on the grid `logsnrs` with the sampler's `options`."""
        steps = logsnrs.shape[0] - 1
        finite_end = bool(torch.isfinite(logsnrs[-1]).all())
        context = {**options, "finite_end": finite_end}
        return self.nfe(steps, **context), self.jvps(steps, **context)

    def nfe_forward_equivalent(self, steps: int, jvp_cost: float, **options) -> float:
        """NFE when each JVP is charged `jvp_cost` forward passes (a JVP is one evaluation in
        the paper convention, about two forwards of compute)."""
        return self.nfe(steps, **options) + (jvp_cost - 1.0) * self.jvps(steps, **options)


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(
    name: str,
    *,
    nfe: Count = _steps,
    jvps: Count = _none,
    stochastic: bool = False,
):
    """Decorator: register a sampler function under `name`."""

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        SAMPLERS[name] = SamplerSpec(name, fn, nfe, jvps, stochastic, doc[0] if doc else "")
        return fn

    return wrap


def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler `name`; unknown names raise with the list of known ones."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known samplers: {sorted(SAMPLERS)}")
    return SAMPLERS[name]
