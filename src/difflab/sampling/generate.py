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
from .grids import edm_grid_for_schedule, uniform_logsnr_grid, uniform_t_grid
from .registry import get_sampler

GRIDS = ("uniform_t", "edm", "uniform_logsnr")


def make_grid(name: str, schedule: Schedule, steps: int, *, rho: float = 7.0) -> Tensor:
    """A sampling grid by name over the range of `schedule` (see `grids.py`)."""
    if name == "uniform_t":
        return uniform_t_grid(schedule, steps)
    if name == "edm":
        return edm_grid_for_schedule(schedule, steps, rho=rho)
    if name == "uniform_logsnr":
        return uniform_logsnr_grid(schedule.logsnr_min, schedule.logsnr_max, steps)
    raise ValueError(f"unknown grid {name!r}; known grids: {list(GRIDS)}")


@dataclass
class Generation:
    samples: Tensor  # [N, C, H, W] in the data range
    labels: Tensor | None
    nfe: int  # denoiser evaluations per sample, guidance passes included
    seconds: float


def generate(
    make_denoise: Callable[..., Denoise],
    shape: tuple[int, ...],
    schedule: Schedule,
    *,
    num: int,
    sampler: str = "ddim",
    steps: int = 32,
    grid: str = "uniform_t",
    labels: Tensor | None = None,
    guidance: float = 0.0,
    interval: tuple[float, float] = (-math.inf, math.inf),
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
    sampler_options: dict | None = None,
) -> Generation:
    """Draw `num` samples of `shape` with `sampler` over `steps` steps of a named grid.

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
    logsnrs = make_grid(grid, schedule, steps)
    gen = torch.Generator(device="cpu").manual_seed(seed)
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
        with torch.inference_mode(mode=not spec.jvps(steps)):
            x = spec.fn(denoise, z, logsnrs, generator=gen, **(sampler_options or {}))
        out.append(x.float().cpu())
        bar.update(n)
    bar.close()
    nfe = spec.nfe(steps) * (2 if guidance != 0 else 1)
    return Generation(torch.cat(out), labels, nfe, time.perf_counter() - start)
