"""Samplers by name, each with its honest number of function evaluations (NFE).

A sampler is a pure function `fn(denoise, z, logsnrs, *, generator=None, callback=None, **opts)`
over an increasing logsnr grid (see `grids.py`). `nfe(steps, **options)` is the number of
denoiser calls per sample it makes for a grid of `steps + 1` levels ending at +inf, given the
sampler options that change it (`finite_end=True` for a grid that stops at a finite level);
`jvps(steps, **options)` how many of them are forward+JVP; `calls(logsnrs, **options)` reads both
off an actual grid; `nfe_forward_equivalent(steps, jvp_cost)` charges a JVP at its measured cost
in forward passes (the covariance-aware sampler reports both conventions).

`register_sampler` wraps the function with one check after its step loop: non-finite samples
(a NaN-returning denoiser, a diverged grid) raise `FloatingPointError` naming the sampler. It is
one host read per call, skipped while `torch.compile` traces and on `meta` tensors.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

Callback = Callable[[dict], None]
"""Called after every step with `{"i": step, "z": new state, "x_hat": the denoiser output,
"logsnr": the level it was evaluated at}`."""

Count = Callable[..., int]
"""`(steps, *, finite_end=False, **options) -> int`; unknown options are ignored."""

COMMON_ARGUMENTS = ("generator", "callback")
"""Keyword arguments every sampler takes that are not sampler options."""


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
    parts: Callable[..., dict[str, int]] | None = None

    @property
    def options(self) -> tuple[str, ...]:
        """The names of the sampler's options (its keyword-only arguments but `generator` and
        `callback`)."""
        params = inspect.signature(self.fn).parameters.values()
        return tuple(
            p.name
            for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in COMMON_ARGUMENTS
        )

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Reject option names the sampler does not take, naming them and the accepted ones."""
        unknown = [k for k in options if k not in self.options]
        if unknown:
            raise ValueError(
                f"unknown option {unknown[0]!r} for sampler {self.name!r}; its options: "
                f"{list(self.options) or 'none'}"
            )

    def with_data_bound(self, options: Mapping[str, Any], data_bound: float | None) -> dict:
        """`options` with `data_bound` (the data lie in `[-b, b]`) filled in for a sampler that
        takes it (the covariance-aware samplers' trace cap, `cov_ddim.bounded_trace`), unless
        `options` sets it or `data_bound` is None."""
        options = dict(options)
        if data_bound is not None and "data_bound" in self.options:
            options.setdefault("data_bound", data_bound)
        return options

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

    def part_calls(self, steps: int, **options) -> dict[str, int]:
        """Calls per sample of each separately priced part of the model
        (`difflab.nets.cost.flops_per_sample`): `{"forward": nfe}` for a one-net sampler; the
        dual-rate sampler: `{"encode": ..., "denoise_light": ...}`."""
        if self.parts is None:
            return {"forward": self.nfe(steps, **options)}
        return self.parts(steps, **options)


SAMPLERS: dict[str, SamplerSpec] = {}


def check_finite(samples: Tensor, sampler: str) -> Tensor:
    """`samples`, or `FloatingPointError` naming `sampler` if any entry is NaN or infinite."""
    if torch.compiler.is_compiling() or samples.device.type == "meta":
        return samples
    finite = torch.isfinite(samples)
    if not bool(finite.all()):
        bad = int((~finite).flatten(1).any(1).sum()) if samples.ndim > 1 else 1
        raise FloatingPointError(
            f"sampler {sampler!r} returned non-finite values in {bad} of {samples.shape[0]} "
            "samples (a NaN/inf denoiser output, or a diverged step); pass a callback to see "
            "the first step whose state is not finite"
        )
    return samples


def register_sampler(
    name: str,
    *,
    nfe: Count = _steps,
    jvps: Count = _none,
    stochastic: bool = False,
    parts: Callable[..., dict[str, int]] | None = None,
):
    """Decorator: register a sampler function under `name`, checked for finite output;
    `parts(steps, **options)` for a sampler that calls a model's parts separately."""

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")

        @functools.wraps(fn)
        def checked(*args, **kwargs) -> Tensor:
            return check_finite(fn(*args, **kwargs), name)

        doc = (fn.__doc__ or "").strip().splitlines()
        SAMPLERS[name] = SamplerSpec(
            name, checked, nfe, jvps, stochastic, doc[0] if doc else "", parts
        )
        return checked

    return wrap


def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler `name`; unknown names raise with the list of known ones."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known samplers: {sorted(SAMPLERS)}")
    return SAMPLERS[name]
