"""Dual-Rate Diffusion training (docs/methods/dual_rate.md): a heavy encoder `E(z_tau, tau)`
and a light denoiser `g(z_t, t, E(z_tau, tau))` trained together, with `tau >= t`.

Per example: `t` from the config's time sampling, the gap `tau - t` (in `t` units) zero with
probability `p_same` and else uniform on `(0, max_gap]`, `tau = min(t + gap, 1)`; then the pair
`(z_tau, z_t)` from one forward Markov trajectory of `x`: `z_tau ~ q(z_tau | x)` and
`z_t ~ q(z_t | z_tau, x)` (`difflab.diffusion.transitions.posterior_sample`), whose joint with
`x` is that of `x -> z_t -> z_tau` and of the sampler's ancestral chain `z_tau -> ... -> z_t`.
The loss is the config's weighted loss on `g`'s output (sigmoid weighting by default):
`w(l_t) e^{l_t} ||x - g||^2` (`weighted_x_loss`). `translate > 0` shifts each image by up to
that many pixels (edge padding) before noising: the same shift for `z_tau` and `z_t`.

Registered as the training method `dual_rate` (`method: {name: dual_rate, kwargs: {...}}`); the
net must be a dual-rate net (`model.name: dual_rate`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TrainConfig
from ..diffusion.losses import Weighting, sample_t, weighted_x_loss
from ..diffusion.parameterization import diffuse, x_from_prediction
from ..diffusion.schedules import Schedule
from ..diffusion.transitions import posterior_sample
from ..sampling import DualRateDenoise, sample_dual_rate_ddpm, uniform_t_grid
from ..train.methods import MethodParts, register_training_method


@dataclass(frozen=True)
class DualRateOptions:
    """`max_gap`: the largest `tau - t` in `t` units (a sampler of `N` uniform-`t` steps with
    refresh every `K` needs gaps up to `(K - 1) / N`); `p_same`: probability of `tau = t`;
    `translate`: the largest shift in pixels (0: off); `sample_steps`, `sample_refresh`: the
    training-time PNG grids (dual-rate DDPM)."""

    max_gap: float = 0.25
    p_same: float = 0.25
    translate: int = 0
    sample_steps: int = 32
    sample_refresh: int = 4

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_gap <= 1.0 or math.isnan(self.max_gap):
            raise ValueError(f"max_gap must be in [0, 1], got {self.max_gap}")
        if not 0.0 <= self.p_same <= 1.0:
            raise ValueError(f"p_same must be in [0, 1], got {self.p_same}")
        if self.translate < 0:
            raise ValueError(f"translate must be >= 0 pixels, got {self.translate}")
        if self.sample_steps < 1 or self.sample_refresh < 1:
            raise ValueError("sample_steps and sample_refresh must be >= 1")


def dual_rate_times(
    batch: int,
    opts: DualRateOptions,
    *,
    time_sampling: str = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """`(t, tau)` in float64, `tau >= t` (module docstring). Draws in order: `t`, then one
    uniform per example for `tau = t`, then the gap."""
    t = sample_t(batch, time_sampling, generator=generator, device=device, dtype=torch.float64)
    same = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    gap = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    gap = torch.where(same < opts.p_same, torch.zeros_like(gap), (1.0 - gap) * opts.max_gap)
    return t, (t + gap).clamp(max=1.0)


def trajectory_pair(
    x: Tensor,
    logsnr_tau: Tensor,
    logsnr_t: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """`(z_tau, z_t)` from one forward Markov trajectory of `x` (`l_tau <= l_t`):
    `z_tau ~ q(z_tau | x)`, then `z_t ~ q(z_t | z_tau, x)`; `z_t = z_tau` where `tau = t`."""
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    z_tau = diffuse(x, eps, logsnr_tau)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return z_tau, posterior_sample(z_tau, x, logsnr_tau, logsnr_t, noise)


def translate(x: Tensor, max_shift: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image of `x` `[B, C, H, W]` by integers `(dy, dx)` uniform in
    `[-max_shift, max_shift]`, filling with the edge pixels (no wrap-around)."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m), mode="replicate")
    shift = torch.randint(0, 2 * m + 1, (2, b), generator=generator, device=x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + shift[0][:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + shift[1][:, None])[:, None, None, :]
    rows = rows.expand(b, x.shape[1], h, w + 2 * m)
    out = padded.gather(2, rows)
    return out.gather(3, cols.expand(b, x.shape[1], h, w))


def dual_rate_loss(
    net: nn.Module,
    x: Tensor,
    schedule: Schedule,
    weighting: Weighting,
    prediction: str,
    opts: DualRateOptions,
    *,
    labels: Tensor | None = None,
    time_sampling: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-example loss `w(l_t) e^{l_t} ||x - g(z_t, t, E(z_tau, tau))||^2` (mean over dims).
    `net(z_t, l_t, labels, z_tau=, logsnr_tau=)` is the dual-rate net (one forward, so a
    DDP-wrapped net works); draws: shift, times, then the trajectory's two noises."""
    x = translate(x, opts.translate, generator=generator)
    t, tau = dual_rate_times(
        x.shape[0], opts, time_sampling=time_sampling, generator=generator, device=x.device
    )
    l_t, l_tau = schedule.logsnr(t).to(x.dtype), schedule.logsnr(tau).to(x.dtype)
    z_tau, z_t = trajectory_pair(x, l_tau, l_t, generator=generator)
    cond = {} if labels is None else {"labels": labels}
    pred = net(z_t, l_t, z_tau=z_tau, logsnr_tau=l_tau, **cond)
    x_hat = x_from_prediction(z_t, pred, l_t, prediction)
    weight = weighting(l_t, -schedule.dlogsnr_dt(t).to(x.dtype))
    return weighted_x_loss(x, x_hat, l_t, weight)


def sample_dual_rate(
    net: nn.Module,
    noise: Tensor,
    schedule: Schedule,
    prediction: str,
    *,
    steps: int,
    refresh_every: int,
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Dual-rate DDPM samples of `net` from `noise` on `steps` uniform-`t` steps."""
    cond = {} if labels is None else {"labels": labels}
    denoise = DualRateDenoise.from_net(net, prediction, 1.0, **cond)
    grid = uniform_t_grid(schedule, steps)
    return sample_dual_rate_ddpm(
        denoise, noise, grid, refresh_every=refresh_every, generator=generator
    )


def _unwrap(net: nn.Module) -> nn.Module:
    return getattr(net, "module", net)  # DDP


def build(cfg: TrainConfig, net: nn.Module, dataset: Any) -> MethodParts:
    """The training method `dual_rate` (module docstring)."""
    from ..train.methods import method_options

    opts = method_options(cfg)
    if not (hasattr(net, "encode") and hasattr(net, "denoise_light")):
        raise ValueError(
            f"config key model.name: training method 'dual_rate' needs a dual-rate net "
            f"(model.name: dual_rate), got {cfg.model.name!r}"
        )
    d = cfg.diffusion
    if d.multiscale_min_resolution is not None:
        raise ValueError(
            "config key diffusion.multiscale_min_resolution: not supported by method dual_rate"
        )
    schedule, weighting = d.build_schedule(), d.build_weighting()

    def loss_fn(models: Mapping[str, nn.Module], batch, generator: torch.Generator) -> Tensor:
        x, labels = batch
        return dual_rate_loss(
            models["net"], x, schedule, weighting, d.prediction, opts, labels=labels,
            time_sampling=d.time_sampling, generator=generator,
        )  # fmt: skip

    def sample_fn(net: nn.Module, noise: Tensor, labels: Tensor | None) -> Tensor:
        gen = torch.Generator(noise.device).manual_seed(cfg.train.seed)
        return sample_dual_rate(
            _unwrap(net), noise, schedule, d.prediction, steps=opts.sample_steps,
            refresh_every=opts.sample_refresh, labels=labels, generator=gen,
        )  # fmt: skip

    return MethodParts(loss_fn, {}, sample_fn)


register_training_method("dual_rate", build, DualRateOptions)
