"""Run diffusers' schedulers on a difflab `Denoise` (the peers of `benchmarks/samplers_nfe.py`).

diffusers samples on `N` discrete timesteps `n = 0..N-1` with `alphas_cumprod[n]`; difflab on a
continuous logsnr schedule. The adapter makes the two describe the same process:

1. **Schedule.** `trained_betas` are derived from the difflab schedule at the `N` discrete times
   `t_n = (n + 1) / N`, so that `alphas_cumprod[n] = sigmoid(logsnr(t_n))` (up to the float32
   cumulative product diffusers computes): `beta_n = 1 - ab_n / ab_{n-1}`, `ab_{-1} = 1`.
   Timestep `N - 1` is `t = 1`, the noise level of the initial `z`.
2. **Levels.** Each model call is evaluated at the exact logsnr the scheduler's update assumes
   for the current sample: `log(ab / (1 - ab))` of `alphas_cumprod[timestep]` for DDIM, and
   `-2 log sigma` of the scheduler's own `sigmas[i]` (VE sigma = `sqrt((1 - ab) / ab)`) for the
   sigma-based schedulers (DPM-Solver, UniPC, Heun). With Karras sigmas the timestep handed to
   the model is rounded, but the sigma in the update is not: a continuous denoiser can be
   evaluated at the latter, which gives those schedulers their best case.
3. **Inputs and outputs.** `scale_model_input` turns a sigma-based scheduler's VE sample
   `x = z / alpha` back into the variance-preserving `z` (identity for the others); `x_hat` is
   converted to the `prediction_type` the scheduler is configured with (`epsilon`: `(z - alpha
   x_hat) / sigma`, `v_prediction`, or `sample`). The default is `sample` (`prediction="x"`):
   diffusers keeps its sigmas in float32, and turning `epsilon` back into `x0 = (z - sigma eps) /
   alpha` at logsnr = -15 (`alpha = 5.5e-4`) amplifies that rounding to ~1e-4 errors in `x0`,
   an adapter artefact that the `sample` path does not have. The initial sample is
   `z * init_noise_sigma`, as diffusers pipelines do.

Every scheduler is configured as a careful user would: no sample clipping or thresholding, and a
first timestep at `N - 1` (`timestep_spacing="trailing"` for DDIM, whose default "leading" spacing
never visits the noisiest level; "linspace", the default, for the others).

diffusers is an optional dependency (`pip install 'difflab[bench]'`); it is imported on use.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch
from torch import Tensor

from ..diffusion.parameterization import Denoise, check_prediction, prediction_from_x
from ..diffusion.schedules import Schedule

NUM_TRAIN_TIMESTEPS = 1000

PEERS: dict[str, tuple[str, dict]] = {
    "diffusers_ddim": ("DDIMScheduler", {"timestep_spacing": "trailing", "set_alpha_to_one": True}),
    "diffusers_dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "diffusers_dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "diffusers_dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
    "diffusers_unipc": ("UniPCMultistepScheduler", {"solver_type": "bh2", "predict_x0": True}),
    "diffusers_heun": ("HeunDiscreteScheduler", {}),
    "diffusers_heun_karras": ("HeunDiscreteScheduler", {"use_karras_sigmas": True}),
}
"""The peers by name: (diffusers class, config beyond the shared one)."""

_DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x": "sample"}


def discrete_alphas_cumprod(schedule: Schedule, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Tensor:
    """`alphas_cumprod[n] = sigmoid(logsnr(t_n))`, `t_n = (n + 1) / N` (float64)."""
    t = torch.arange(1, num_timesteps + 1, dtype=torch.float64) / num_timesteps
    return torch.sigmoid(schedule.logsnr(t))


def trained_betas(schedule: Schedule, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """The `trained_betas` whose cumulative product of `1 - beta` is `discrete_alphas_cumprod`."""
    ab = discrete_alphas_cumprod(schedule, num_timesteps)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    return (1.0 - ab / prev).numpy()


def make_scheduler(
    name: str,
    schedule: Schedule,
    *,
    prediction: str = "x",
    num_timesteps: int = NUM_TRAIN_TIMESTEPS,
    **config,
):
    """A diffusers scheduler from `PEERS` on `schedule` (see module docstring); `prediction` is
    difflab's name ("eps", "v", "x") of the model output it will be fed; `config` overrides."""
    import diffusers

    if name not in PEERS:
        raise ValueError(f"unknown diffusers peer {name!r}; known: {sorted(PEERS)}")
    check_prediction(prediction)
    cls_name, extra = PEERS[name]
    base = dict(
        num_train_timesteps=num_timesteps,
        trained_betas=trained_betas(schedule, num_timesteps),
        prediction_type=_DIFFUSERS_PREDICTION[prediction],
    )
    if cls_name != "HeunDiscreteScheduler":
        base["thresholding"] = False
    if cls_name == "DDIMScheduler":
        base["clip_sample"] = False
    return getattr(diffusers, cls_name)(**{**base, **extra, **config})


def _prediction_of(scheduler) -> str:
    inverse = {v: k for k, v in _DIFFUSERS_PREDICTION.items()}
    return inverse[scheduler.config.prediction_type]


def scheduler_logsnr(scheduler, index: int, timestep: Tensor) -> Tensor:
    """The logsnr (float64 scalar) of the sample at model call `index` (see module docstring)."""
    if getattr(scheduler, "sigmas", None) is not None:
        sigma = scheduler.sigmas[index].double()
        return -2.0 * torch.log(sigma)
    ab = scheduler.alphas_cumprod[int(timestep)].double()
    return torch.log(ab) - torch.log1p(-ab)


def scheduler_nfe(scheduler, steps: int) -> int:
    """Model calls of `scheduler` for `steps` inference steps (after `set_timesteps`)."""
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def scheduler_grid(scheduler, steps: int) -> Tensor:
    """The logsnr levels a sigma-based scheduler visits for `steps`, then +inf: hand them to a
    difflab sampler to run it on the same grid (float64)."""
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.double()
    return torch.cat([-2.0 * torch.log(sigmas[:-1]), torch.tensor([math.inf], dtype=torch.float64)])


@torch.no_grad()
def sample_with_scheduler(
    scheduler, denoise: Denoise, z: Tensor, steps: int, generator: torch.Generator | None = None
) -> Tensor:
    """Run `scheduler` for `steps` inference steps from the noise `z` (variance preserving, at the
    level of timestep `N - 1`) with `denoise`; returns the final sample `x`. `generator` feeds
    the step noise of a stochastic scheduler (those whose `step` takes one)."""
    prediction = _prediction_of(scheduler)
    scheduler.set_timesteps(steps)
    if hasattr(scheduler, "set_begin_index"):
        # walk the timesteps by position: rounded Karras timesteps can repeat (e.g. 999 twice),
        # and diffusers' lookup of the first index by value would then skip a step
        scheduler.set_begin_index(0)
    sample = z * scheduler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    noise = {"generator": generator} if generator is not None and takes_generator else {}
    for i, t in enumerate(scheduler.timesteps):
        z_vp = scheduler.scale_model_input(sample, t)
        logsnr = scheduler_logsnr(scheduler, i, t).to(device=z.device, dtype=z.dtype)
        level = logsnr.expand(z.shape[0])
        x_hat = denoise(z_vp, level)
        out = prediction_from_x(z_vp, x_hat, level, prediction)
        sample = scheduler.step(out, t, sample, **noise).prev_sample
    return sample
