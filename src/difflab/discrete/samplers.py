"""Ancestral samplers of masked and uniform diffusion, and their registry.

A discrete sampler is a pure function like the Gaussian ones,

    tokens = fn(denoise, z, logsnrs, *, generator=None, temperature=1.0, top_p=None, callback=None)

over a 1-D increasing grid `logsnrs` of `steps + 1` levels that ends at `+inf` (the start may be
`-inf`). `z` is the state at `logsnrs[0]`: all mask ids (masked) or uniform tokens (uniform). Step
`i` calls `denoise(z, logsnrs[i])` (level per example, `[B]`) once, adjusts the probabilities
(`adjust_probs`: temperature, top-p by logit offset) and draws `z ~ q(z_s | z_t, p)` at
`logsnrs[i + 1]` (`posterior_masked`, `posterior_uniform`). NFE = steps. Draws are in float64.

The arguments are checked once: the grid before the loop, the state's tokens against the first
denoiser output, and the finiteness of every step's probabilities after the loop (accumulated on
the device). The steps themselves read nothing back to the host (`check=False` on the posterior
and the draw), so a GPU loop never waits on the device between steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.diffusion.schedules import Schedule

from .checks import check_tokens
from .processes import adjust_probs, check_process, posterior, sample_categorical
from .schedules import LinearMaskingSchedule

DiscreteDenoise = Callable[[Tensor, Tensor], Tensor]


def check_discrete_grid(logsnrs: Tensor, name: str = "logsnrs") -> Tensor:
    """A 1-D float grid of at least 2 strictly increasing levels, without NaN, whose only
    infinite entries are a `-inf` start and a `+inf` end; returned as float64."""
    if not isinstance(logsnrs, Tensor) or not logsnrs.is_floating_point() or logsnrs.ndim != 1:
        raise ValueError(f"{name} must be a 1-D float tensor of levels")
    if logsnrs.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 levels (1 step), got {logsnrs.shape[0]}")
    grid = logsnrs.double()
    if bool(torch.isnan(grid).any()):
        raise ValueError(f"{name} contains NaN")
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError(f"{name} must be strictly increasing")
    inner = grid[1:-1]
    if bool(torch.isinf(inner).any()) or grid[0] == math.inf or grid[-1] == -math.inf:
        raise ValueError(f"{name}: only the first level may be -inf and the last +inf")
    return grid


def discrete_grid(steps: int, schedule: Schedule | None = None) -> Tensor:
    """`steps + 1` levels uniform in `t` from 1 to 0 on `schedule` (default the full linear
    masking schedule, `-inf ... +inf`), the last set to `+inf`."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    schedule = schedule or LinearMaskingSchedule()
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    grid = schedule.logsnr(t).double()
    grid[-1] = math.inf
    return grid


def _ancestral(
    process: str,
    denoise: DiscreteDenoise,
    z: Tensor,
    logsnrs: Tensor,
    generator: torch.Generator | None,
    temperature: float,
    top_p: float | None,
    callback: Callable[[dict], None] | None,
) -> Tensor:
    grid = check_discrete_grid(logsnrs)
    if not isinstance(z, Tensor) or z.dtype not in (torch.int64, torch.int32) or z.ndim < 1:
        raise ValueError("z must be an integer tensor of tokens with a batch dimension")
    z = z.long()
    batch = z.shape[0]
    vocab = None
    finite = torch.ones(grid.shape[0] - 1, dtype=torch.bool, device=z.device)  # read once, after
    for i in range(grid.shape[0] - 1):
        level = grid[i].to(z.device).expand(batch)
        probs = denoise(z, level.to(torch.get_default_dtype()))
        if vocab is None:  # first call: the vocabulary and the state's range
            if not isinstance(probs, Tensor) or tuple(probs.shape[:-1]) != tuple(z.shape):
                shape = list(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
                raise ValueError(f"denoise must return probs of shape z.shape + (V,), got {shape}")
            vocab = probs.shape[-1]
            check_tokens(z, vocab, name="z", allow_mask=process == "masked")
        finite[i] = torch.isfinite(probs).all()
        probs = adjust_probs(probs, temperature=temperature, top_p=top_p)
        q = posterior(process, z, probs, level, grid[i + 1].to(z.device).expand(batch), check=False)
        z = sample_categorical(q, generator=generator, check=False)
        if callback is not None:
            callback({"i": i, "z": z, "probs": probs, "logsnr": level})
    if z.device.type != "meta" and not bool(finite.all()):
        step = int((~finite).nonzero()[0])
        raise FloatingPointError(f"denoise returned non-finite probabilities at step {step}")
    return z


def sample_masked(
    denoise: DiscreteDenoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_p: float | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Ancestral sampling of masked diffusion: at each step every masked token is revealed with
    probability `(alpha_s - alpha_t) / (1 - alpha_t)`, drawn from the denoiser's `p(x_i | z)`;
    revealed tokens stay. Returns tokens in `[0, V)` (module docstring)."""
    return _ancestral("masked", denoise, z, logsnrs, generator, temperature, top_p, callback)


def sample_uniform(
    denoise: DiscreteDenoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_p: float | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Ancestral sampling of uniform diffusion: each step draws every token from
    `sum_x p(x | z_t) q(z_s | z_t, x)` (module docstring); the last step (to `+inf`) draws from
    the denoiser itself."""
    return _ancestral("uniform", denoise, z, logsnrs, generator, temperature, top_p, callback)


# ----------------------------------------------------------------------------- registry


def _steps(steps: int, **_) -> int:
    return steps


@dataclass(frozen=True)
class DiscreteSamplerSpec:
    """A registered discrete sampler: its function, the process it samples, and its NFE for a
    grid of `steps` steps (`nfe(steps)`)."""

    name: str
    fn: Callable[..., Tensor]
    process: str
    nfe: Callable[..., int] = _steps
    description: str = ""


DISCRETE_SAMPLERS: dict[str, DiscreteSamplerSpec] = {}


def register_discrete_sampler(
    name: str, *, process: str, nfe: Callable[..., int] = _steps, description: str = ""
):
    """Decorator: register a discrete sampler function under `name`."""
    check_process(process)

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in DISCRETE_SAMPLERS:
            raise ValueError(f"discrete sampler {name!r} is already registered")
        DISCRETE_SAMPLERS[name] = DiscreteSamplerSpec(name, fn, process, nfe, description)
        return fn

    return wrap


def get_discrete_sampler(name: str) -> DiscreteSamplerSpec:
    if name not in DISCRETE_SAMPLERS:
        raise ValueError(f"unknown discrete sampler {name!r}; known: {sorted(DISCRETE_SAMPLERS)}")
    return DISCRETE_SAMPLERS[name]


register_discrete_sampler(
    "masked_ancestral", process="masked", description="masked diffusion, ancestral"
)(sample_masked)
register_discrete_sampler(
    "uniform_ancestral", process="uniform", description="uniform diffusion, ancestral"
)(sample_uniform)
