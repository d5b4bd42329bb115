"""Batched generation from any `Denoise` factory: the one path the API (`difflab.api.sample`),
the CLI, the evaluation and the benchmarks share (sampler by name with its options, grid by
name, guidance, labels)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ..diffusion.guidance import guided_denoiser
from ..diffusion.parameterization import Denoise
from ..diffusion.schedules import Schedule
from .defaults import GRID_CHOICES, describe_grid, resolve_grid
from .registry import get_sampler

__all__ = ["GRID_CHOICES", "Generation", "describe_grid", "generate", "resolve_grid"]


@dataclass
class Generation:
    samples: Tensor  # [N, C, H, W] in the data range
    labels: Tensor | None
    nfe: int  # denoiser evaluations per sample (a forward+JVP counts once), guidance included
    jvps: int  # how many of them are forward+JVP, per sample
    seconds: float
    sampler: str = ""
    steps: int = 0
    grid: str = ""  # `describe_grid`
    options: dict[str, Any] = field(default_factory=dict)  # the sampler options used


def generate(
    make_denoise: Callable[..., Denoise],
    shape: tuple[int, ...],
    schedule: Schedule,
    *,
    num: int,
    sampler: str = "ddim",
    steps: int = 32,
    grid: str | Tensor = "default",
    options: Mapping[str, Any] | None = None,
    labels: Tensor | None = None,
    guidance: float = 0.0,
    interval: tuple[float, float] = (-math.inf, math.inf),
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
    data_bound: float | None = None,
) -> Generation:
    """Draw `num` samples of `shape` with `sampler` and its `options` over `steps` steps of
    `grid` (`"default"`: the sampler's measured default, `DEFAULT_GRIDS`; a family name; or an
    explicit grid of `steps + 1` levels).

    `make_denoise(labels=None | Tensor)` returns the `Denoise` for a batch (labels bound in);
    with `guidance != 0` the unconditional denoiser (`labels=None`) is combined by CFG within
    `interval`, which doubles the network evaluations per step (counted in `nfe` and `jvps`).
    `data_bound`: the data lie in `[-b, b]` (a model's `clip_x`): samplers with a `data_bound`
    option get it unless `options` sets it (recorded in `Generation.options`), and the samples
    are clipped to the range (a last stochastic draw, e.g. aDDIM's or `cov_ddim`'s, can leave it).
    Unknown option names, `num < 1`, `steps < 1` and `batch_size < 1` are ValueErrors naming
    them; non-finite samples a `FloatingPointError` naming the sampler.
    """
    for name, value in (("num", num), ("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if labels is not None and labels.shape != (num,):
        raise ValueError(f"labels must have shape [num]=[{num}], got {tuple(labels.shape)}")
    if guidance != 0 and labels is None:
        raise ValueError("guidance needs class labels (a class-conditional model)")
    spec = get_sampler(sampler)
    options = dict(options or {})
    spec.check_options(options)
    options = spec.with_data_bound(options, data_bound)
    logsnrs = resolve_grid(grid, sampler, schedule, steps)
    nfe, jvps = spec.calls(logsnrs, **options)
    passes = 2 if guidance != 0 else 1  # the guided denoiser calls both nets every time
    # initial noise from a CPU generator (the same images on every device); a stochastic
    # sampler's noise from a generator on the sampling device (the samplers draw it there)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    device = torch.device(device)
    step_gen = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    out = []
    start = time.perf_counter()
    bar = tqdm(total=num, desc=f"{sampler} x{steps}", unit="img", disable=not progress)
    for lo in range(0, num, batch_size):
        n = min(batch_size, num - lo)
        y = None if labels is None else labels[lo : lo + n].to(device)
        denoise = make_denoise(labels=y) if y is not None else make_denoise()
        if guidance != 0:
            denoise = guided_denoiser(denoise, make_denoise(), guidance, interval)
        z = torch.randn(n, *shape, generator=gen).to(device)
        with torch.inference_mode(mode=not jvps):
            x = spec.fn(denoise, z, logsnrs, generator=step_gen, **options)
        if data_bound is not None:
            x = x.clamp(-data_bound, data_bound)
        out.append(x.float().cpu())
        bar.update(n)
    bar.close()
    return Generation(
        samples=torch.cat(out),
        labels=labels,
        nfe=nfe * passes,
        jvps=jvps * passes,
        seconds=time.perf_counter() - start,
        sampler=sampler,
        steps=steps,
        grid=describe_grid(grid, sampler),
        options=options,
    )
