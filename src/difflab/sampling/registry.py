"""Samplers by name, each with its honest number of function evaluations (NFE).

A sampler is a pure function `fn(denoise, z, logsnrs, *, generator=None, callback=None, **opts)`
over an increasing logsnr grid (see `grids.py`). `nfe(steps)` is the number of denoiser calls it
makes for a grid of `steps + 1` levels; `nfe_forward_equivalent(steps, jvp_cost)` counts a JVP at
its measured cost in forward passes (the covariance-aware sampler reports both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    fn: Callable[..., Tensor]
    nfe: Callable[[int], int]
    jvps: Callable[[int], int] = lambda steps: 0
    stochastic: bool = False
    description: str = ""

    def nfe_forward_equivalent(self, steps: int, jvp_cost: float) -> float:
        """NFE when each JVP is charged `jvp_cost` forward passes (a JVP is one evaluation in
        the paper convention, about two forwards of compute)."""
        return self.nfe(steps) + (jvp_cost - 1.0) * self.jvps(steps)


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(
    name: str,
    *,
    nfe: Callable[[int], int] = lambda steps: steps,
    jvps: Callable[[int], int] = lambda steps: 0,
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
