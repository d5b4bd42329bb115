"""Batched generation from any `Denoise` factory: the one path `difflab sample`, the demo,
the evaluation and the benchmarks share (sampler by name, grid by name, guidance, labels)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from ..diffusion.guidance import guided_denoiser
from ..diffusion.parameterization import Denoise
from ..diffusion.schedules import Schedule
from .defaults import DEFAULT_GRIDS, GridChoice, default_grid
from .grids import GRIDS, make_grid
from .registry import get_sampler

GRID_CHOICES = ("default", *GRIDS)
"""`grid` values of `generate`: a family of `grids.GRIDS`, or each sampler's measured default."""


def resolve_grid(grid: str | Tensor, sampler: str, schedule: Schedule, steps: int) -> Tensor:
    """The logsnr grid for `grid`: `"default"` (the sampler's `DEFAULT_GRIDS` entry), a family
    name, or an explicit increasing grid of `steps + 1` levels."""
    if isinstance(grid, Tensor):
        if grid.ndim < 1 or grid.shape[0] != steps + 1:
            raise ValueError(
                f"grid must have steps + 1 = {steps + 1} levels along dim 0, "
                f"got shape {tuple(grid.shape)}"
            )
        return grid
    if grid == "default":
        return default_grid(sampler, schedule, steps)
    return make_grid(grid, schedule, steps)


def describe_grid(grid: str | Tensor, sampler: str) -> str:
    """A readable name of `grid` for logs and result files (the default resolved)."""
    if isinstance(grid, Tensor):
        return "explicit"
    if grid == "default":
        return f"default: {DEFAULT_GRIDS.get(sampler, GridChoice()).label}"
    return grid


@dataclass
class Generation:
    samples: Tensor  # [N, C, H, W] in the data range
    labels: Tensor | None
    nfe: int  # denoiser evaluations per sample, guidance passes included
    seconds: float
    sampler: str = ""
    steps: int = 0
    grid: str = ""  # `describe_grid`


def generate(
    make_denoise: Callable[..., Denoise],
    shape: tuple[int, ...],
    schedule: Schedule,
    *,
    num: int,
    sampler: str = "ddim",
    steps: int = 32,
    grid: str | Tensor = "default",
    labels: Tensor | None = None,
    guidance: float = 0.0,
    interval: tuple[float, float] = (-math.inf, math.inf),
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
    sampler_options: dict | None = None,
) -> Generation:
    """Draw `num` samples of `shape` with `sampler` over `steps` steps of `grid` (`"default"`:
    the sampler's measured default, `DEFAULT_GRIDS`; a family name; or an explicit grid).

    `make_denoise(labels=None | Tensor)` returns the `Denoise` for a batch (labels bound in);
    with `guidance != 0` the unconditional denoiser (`labels=None`) is combined by CFG within
    `interval`, which doubles the network evaluations per step (counted in `nfe`).
    """
    if num < 1:
        raise ValueError(f"num must be positive, got {num}")
    if labels is not None and labels.shape != (num,):
        raise ValueError(f"labels must have shape [num]=[{num}], got {tuple(labels.shape)}")
    if guidance != 0 and labels is None:
        raise ValueError("guidance needs class labels (a class-conditional model)")
    spec = get_sampler(sampler)
    logsnrs = resolve_grid(grid, sampler, schedule, steps)
    options = sampler_options or {}
    nfe, jvps = spec.calls(logsnrs, **options)
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
        out.append(x.float().cpu())
        bar.update(n)
    bar.close()
    nfe *= 2 if guidance != 0 else 1
    seconds = time.perf_counter() - start
    return Generation(
        torch.cat(out), labels, nfe, seconds, sampler, steps, describe_grid(grid, sampler)
    )
