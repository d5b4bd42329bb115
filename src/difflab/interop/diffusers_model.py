"""A diffusers model (`UNet2DModel`, `UNet2DConditionModel`, `DiTTransformer2DModel`, ...) with
its noise scheduler, seen as a difflab `Denoise` on a difflab `Schedule`.

A diffusers model is trained on `N` discrete timesteps `n = 0..N-1` with
`alphas_cumprod[n] = alpha_n^2` and called as `model(z, n, **cond)`; difflab talks logsnr.
`from_diffusers(model, scheduler)` bridges the two:

- **Levels.** Timestep `n` has the logsnr `l_n = log(ab_n / (1 - ab_n))` of the scheduler's own
  `alphas_cumprod` (`logsnr_of_timesteps`, float64), strictly decreasing in `n`.
- **Schedule.** `AlphasCumprodSchedule` makes the chain continuous: `t = n / (N - 1)` maps onto the
  timesteps, and `logsnr(t)` is the piecewise-linear interpolation of `l_n` in the fractional
  timestep `tau = t (N - 1)`. `t = 0` is timestep 0 (`logsnr_max = l_0`), `t = 1` is timestep
  `N - 1` (`logsnr_min = l_{N-1}`); sampling grids built on it (`uniform_t_grid`, `edm_grid`, ...)
  stay inside the levels the model was trained on.
- **Off-grid levels** (the rule). A level `l` is handed to the model as the fractional timestep
  `tau(l)` that interpolates linearly in logsnr between the two neighbouring timesteps,
  `tau = n + (l_n - l) / (l_n - l_{n+1})` for `l_{n+1} <= l <= l_n` (the same rule, linear in
  `log sigma`, as k-diffusion's continuous-time wrappers of discrete models). A level equal to a
  timestep's logsnr at the precision it is given (`float32` levels against the `float32`-rounded
  `l_n`) gets that integer timestep exactly, so on a grid of the scheduler's own timesteps the
  model sees exactly what diffusers feeds it. Levels outside `[l_{N-1}, l_0]` are evaluated at
  the end timestep (the model never saw them). The error of the rule: on the grid it is exact;
  between timesteps the network is evaluated at a timestep embedding it was not trained on, so
  the error is at most the change of the model's output across one timestep, which is small
  where the chain is fine (the logsnr spacing of DDPM's 1000 linear-beta steps is below 0.02 for
  `n > 100` and 0.78 between `n = 0` and `1`) and goes to 0 for a model that is smooth in its
  timestep embedding.
- **Predictions.** The scheduler's `prediction_type` names the model output: `epsilon` -> difflab
  `eps`, `v_prediction` -> `v` (the same `v = alpha eps - sigma x`), `sample` -> `x`; the
  conversion to `x_hat` is `difflab.diffusion.parameterization`'s (`as_denoiser`).
- **Inputs.** `z` is the variance-preserving `z = alpha x + sigma eps`, which is what a DDPM-type
  model takes; it is cast to the model's dtype and device, the output cast back to `z`'s.
  Conditioning (`class_labels=`, `encoder_hidden_states=`, ...) is bound into the `Denoise` with
  `denoiser(**cond)`; difflab's `labels` become `class_labels`. A model whose output has twice the
  input channels (DDPM/ADM's learned variance) is read from its first half.

diffusers is imported on use only (`load_diffusers` reads a `save_pretrained` folder with
safetensors, never pickle).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..diffusion.parameterization import Denoise, as_denoiser, level_for
from ..diffusion.schedules import Schedule

PREDICTION_OF_DIFFUSERS = {"epsilon": "eps", "v_prediction": "v", "sample": "x"}
"""diffusers' `prediction_type` -> difflab's prediction name."""
DIFFUSERS_OF_PREDICTION = {v: k for k, v in PREDICTION_OF_DIFFUSERS.items()}

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
CONFIG_FILE = "config.json"
SCHEDULER_CONFIG_FILE = "scheduler_config.json"
MODEL_SUBFOLDERS = ("unet", "transformer")


def prediction_of_scheduler(scheduler: Any) -> str:
    """difflab's prediction name of a diffusers scheduler's `config.prediction_type`."""
    kind = getattr(getattr(scheduler, "config", None), "prediction_type", None)
    if kind not in PREDICTION_OF_DIFFUSERS:
        raise ValueError(
            f"scheduler.config.prediction_type {kind!r} is not supported; "
            f"known: {sorted(PREDICTION_OF_DIFFUSERS)}"
        )
    return PREDICTION_OF_DIFFUSERS[kind]


def logsnr_of_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """`log(ab / (1 - ab))` in float64, checked to be finite and strictly decreasing."""
    ab = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
    if ab.ndim != 1 or ab.numel() < 2:
        raise ValueError(f"alphas_cumprod must be 1-d with >= 2 entries, got {tuple(ab.shape)}")
    if not bool(((ab > 0) & (ab < 1)).all()):
        raise ValueError(
            "alphas_cumprod must lie strictly inside (0, 1): a zero-terminal-SNR schedule "
            "(alphas_cumprod[-1] = 0, logsnr = -inf) has no finite continuous-time range"
        )
    logsnr = torch.log(ab) - torch.log1p(-ab)
    if not bool((logsnr[1:] < logsnr[:-1]).all()):
        raise ValueError("alphas_cumprod must be strictly decreasing in the timestep")
    return logsnr


@dataclass(frozen=True, eq=False)
class AlphasCumprodSchedule(Schedule):
    """The continuous-time schedule of a discrete chain: `logsnr(t)` interpolates the per-timestep
    logsnr `knots[n]` linearly in the fractional timestep `tau = t (N - 1)` (module docstring).
    `timestep_of(l)` is the inverse in timestep units; `t_of(l) = timestep_of(l) / (N - 1)`."""

    knots: Tensor  # float64 [N], strictly decreasing

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor) -> AlphasCumprodSchedule:
        return cls(logsnr_of_alphas_cumprod(alphas_cumprod))

    @property
    def num_timesteps(self) -> int:
        return int(self.knots.numel())

    @property
    def logsnr_min(self) -> float:  # type: ignore[override]
        return float(self.knots[-1])

    @property
    def logsnr_max(self) -> float:  # type: ignore[override]
        return float(self.knots[0])

    def _knots_like(self, x: Tensor) -> Tensor:
        return self.knots.to(device=x.device)

    def logsnr_at_timestep(self, tau: Tensor) -> Tensor:
        """The logsnr of a (fractional) timestep `tau in [0, N - 1]` (clamped), float64; exact at
        integers."""
        tau = torch.as_tensor(tau, dtype=torch.float64).clamp(0, self.num_timesteps - 1)
        knots = self._knots_like(tau)
        lo = tau.floor().long().clamp(max=self.num_timesteps - 2)
        w = tau - lo
        return torch.lerp(knots[lo], knots[lo + 1], w)

    def timestep_of(self, logsnr: Tensor) -> Tensor:
        """The fractional timestep of each level (float64), the inverse of `logsnr_at_timestep`;
        a level equal to `knots[n]` rounded to its own dtype gets exactly `n`; levels outside
        the range are clamped to the end timesteps."""
        logsnr = torch.as_tensor(logsnr)
        knots = self._knots_like(logsnr)
        asc = knots.flip(0)  # increasing
        n_max = self.num_timesteps - 1
        level = logsnr.to(torch.float64).clamp(float(asc[0]), float(asc[-1]))
        j = torch.searchsorted(asc, level.contiguous()).clamp(1, n_max)
        tau = (n_max - j).to(torch.float64) + (asc[j] - level) / (asc[j] - asc[j - 1])
        if logsnr.is_floating_point() and logsnr.dtype != torch.float64:
            # snap levels that are a timestep's logsnr at the precision they were given
            hit = logsnr.unsqueeze(-1) == knots.to(logsnr.dtype)
            index = hit.to(torch.int8).argmax(-1).to(torch.float64)
            tau = torch.where(hit.any(-1), index, tau)
        return tau

    def logsnr(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        out = self.logsnr_at_timestep(t.to(torch.float64) * (self.num_timesteps - 1))
        return out.to(t.dtype) if t.is_floating_point() else out

    def t_of(self, logsnr: Tensor) -> Tensor:
        tau = self.timestep_of(logsnr) / (self.num_timesteps - 1)
        return tau.to(logsnr.dtype) if logsnr.is_floating_point() else tau

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        """The slope of the segment `t` lies on (the right one at a knot), `(N - 1) (l_{n+1} -
        l_n)`."""
        t = torch.as_tensor(t)
        tau = t.to(torch.float64).clamp(0, 1) * (self.num_timesteps - 1)
        knots = self._knots_like(tau)
        lo = tau.floor().long().clamp(max=self.num_timesteps - 2)
        slope = (knots[lo + 1] - knots[lo]) * (self.num_timesteps - 1)
        return slope.to(t.dtype) if t.is_floating_point() else slope


@dataclass
class NetConfigView:
    """What difflab reads from a network's `config` (`api.LoadedModel.shape`, `num_classes`)."""

    in_channels: int
    resolution: int
    num_classes: int = 0


class DiffusersNet(nn.Module):
    """A diffusers model as a difflab network `net(z, logsnr, labels=None, **cond) ->
    prediction` (of the scheduler's kind): the level becomes the fractional timestep of
    `schedule.timestep_of` (module docstring), `labels` become `class_labels`."""

    def __init__(self, model: nn.Module, schedule: AlphasCumprodSchedule, prediction: str):
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.prediction = prediction
        cfg = getattr(model, "config", None)
        size = getattr(cfg, "sample_size", 0) or 0
        self.config = NetConfigView(
            in_channels=int(getattr(cfg, "in_channels", 0) or 0),
            resolution=int(size if isinstance(size, int) else size[0]),
            num_classes=int(getattr(cfg, "num_class_embeds", 0) or 0),
        )

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.model.parameters(), None)
        return torch.float32 if p is None else p.dtype

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return torch.device("cpu") if p is None else p.device

    def timesteps(self, logsnr: Tensor, batch: int) -> Tensor:
        """The model's timestep input `[B]` (float32 on the model's device) for levels `[B]` or a
        scalar."""
        if logsnr.ndim > 1:
            flat = logsnr.reshape(logsnr.shape[0], -1)
            if flat.shape[1] != 1:
                raise ValueError(
                    f"a diffusers model takes one level per example: logsnr of shape "
                    f"{tuple(logsnr.shape)} varies within an example"
                )
            logsnr = flat[:, 0]
        tau = self.schedule.timestep_of(logsnr).expand(batch)
        return tau.to(device=self.device, dtype=torch.float32)

    def forward(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None, **cond) -> Tensor:
        if labels is not None:
            cond = {"class_labels": labels.to(self.device), **cond}
        t = self.timesteps(level_for(logsnr, z), z.shape[0])
        out = self.model(z.to(device=self.device, dtype=self.dtype), t, **cond)
        out = out.sample if hasattr(out, "sample") else out[0] if isinstance(out, tuple) else out
        if out.shape[1] == 2 * z.shape[1]:
            out = out[:, : z.shape[1]]  # learned variance: the mean prediction is the first half
        return out.to(device=z.device, dtype=z.dtype)


@dataclass
class DiffusersModel:
    """What `from_diffusers` returns: `denoise` (the unconditional / bound `Denoise`),
    `schedule` (`AlphasCumprodSchedule`), `prediction`, `net` (`DiffusersNet`), the factory
    `make_denoise(labels=None)` that `difflab.sampling.generate` takes, and
    `logsnr_of_timesteps`."""

    net: DiffusersNet
    scheduler: Any
    clip_x: float | None = None
    cond: Mapping[str, Any] | None = None

    @property
    def schedule(self) -> AlphasCumprodSchedule:
        return self.net.schedule

    @property
    def prediction(self) -> str:
        return self.net.prediction

    @property
    def model(self) -> nn.Module:
        return self.net.model

    @property
    def device(self) -> torch.device:
        return self.net.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.dtype

    def logsnr_of_timesteps(self, timesteps: Tensor) -> Tensor:
        """The logsnr (float64) of diffusers timesteps: exact at integers, interpolated (the
        module's rule) at fractional ones."""
        timesteps = torch.as_tensor(timesteps)
        n = self.schedule.num_timesteps
        if bool(((timesteps < 0) | (timesteps > n - 1)).any()):
            raise ValueError(f"timesteps must lie in [0, {n - 1}], got {timesteps.tolist()}")
        return self.schedule.logsnr_at_timestep(timesteps.to(torch.float64))

    def denoiser(self, **cond) -> Denoise:
        """The `Denoise` with conditioning `cond` bound (`labels=` or the model's own keywords,
        e.g. `class_labels=`, `encoder_hidden_states=`)."""
        return as_denoiser(self.net, self.prediction, self.clip_x, **{**(self.cond or {}), **cond})

    @property
    def denoise(self) -> Denoise:
        return self.denoiser()

    def make_denoise(self, labels: Tensor | None = None) -> Denoise:
        return self.denoiser() if labels is None else self.denoiser(labels=labels)


def from_diffusers(
    model: nn.Module, scheduler: Any, *, clip_x: float | None = None, **cond
) -> DiffusersModel:
    """A diffusers `model` and its noise `scheduler` (any with `alphas_cumprod` and
    `config.prediction_type`: `DDPMScheduler`, `DDIMScheduler`, `DPMSolverMultistepScheduler`,
    ...) as a difflab `DiffusersModel`: `.denoise`, `.schedule`, `.logsnr_of_timesteps` (module
    docstring). `clip_x` clamps `x_hat` (None: no clipping, as diffusers' schedulers with
    `clip_sample=False`); `cond` is bound into `.denoise` (e.g. `class_labels=y`)."""
    prediction = prediction_of_scheduler(scheduler)
    ab = getattr(scheduler, "alphas_cumprod", None)
    if ab is None:
        raise ValueError(f"scheduler {type(scheduler).__name__} has no alphas_cumprod")
    if not callable(model):
        raise ValueError(f"model must be a callable diffusers model, got {type(model).__name__}")
    schedule = AlphasCumprodSchedule.from_alphas_cumprod(ab)
    return DiffusersModel(DiffusersNet(model, schedule, prediction), scheduler, clip_x, cond)


# ----------------------------------------------------------------------------- folders


def diffusers_folders(path: str | Path) -> tuple[Path, Path | None] | None:
    """`(model folder, scheduler config file or None)` if `path` is a diffusers model folder
    (`config.json` + `diffusion_pytorch_model.safetensors`, as `save_pretrained` writes) or a
    pipeline folder (`unet/` or `transformer/` beside `scheduler/`); None otherwise."""
    path = Path(path)
    if not path.is_dir():
        return None
    model_dir = path
    for sub in MODEL_SUBFOLDERS:
        if (path / sub / CONFIG_FILE).is_file():
            model_dir = path / sub
            break
    config = model_dir / CONFIG_FILE
    if not config.is_file():
        return None
    try:
        meta = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or "_diffusers_version" not in meta:
        return None
    candidates = (
        model_dir / SCHEDULER_CONFIG_FILE,
        model_dir.parent / "scheduler" / SCHEDULER_CONFIG_FILE,
    )
    scheduler = next((c for c in candidates if c.is_file()), None)
    return model_dir, scheduler


def _class(name: Any, what: str, where: Path) -> Any:
    import diffusers

    cls = getattr(diffusers, str(name), None) if name else None
    if cls is None:
        raise ValueError(f"{where}: unknown diffusers {what} class {name!r} in '_class_name'")
    return cls


def load_diffusers(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    clip_x: float | None = None,
) -> DiffusersModel:
    """Load a diffusers model folder (`diffusers_folders`) with safetensors only (no pickle) and
    wrap it with `from_diffusers`. The scheduler is read from `scheduler_config.json` beside the
    weights or from the pipeline's `scheduler/` folder; without either, diffusers' default
    `DDPMScheduler` (1000 linear-beta steps, epsilon) is assumed, with a warning."""
    from safetensors.torch import load_file

    path = Path(path)
    found = diffusers_folders(path)
    if found is None:
        raise ValueError(
            f"{path} is not a diffusers model folder: expected {CONFIG_FILE} (with "
            f"'_diffusers_version') and {WEIGHTS_FILE}, or a pipeline folder with unet/ and "
            "scheduler/"
        )
    model_dir, scheduler_file = found
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{model_dir}: no {WEIGHTS_FILE} (only safetensors weights are loaded)")
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    model = _class(config.get("_class_name"), "model", model_dir / CONFIG_FILE).from_config(config)
    try:
        model.load_state_dict(load_file(weights), strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"{weights} does not match {model_dir / CONFIG_FILE}: {first}") from None
    model = model.to(device=device) if dtype is None else model.to(device=device, dtype=dtype)
    model = model.eval().requires_grad_(False)
    if scheduler_file is None:
        import diffusers

        warnings.warn(
            f"{path}: no {SCHEDULER_CONFIG_FILE}; assuming diffusers' default DDPMScheduler "
            "(1000 linear-beta steps, epsilon prediction)",
            stacklevel=2,
        )
        scheduler = diffusers.DDPMScheduler()
    else:
        sconf = json.loads(scheduler_file.read_text())
        scheduler = _class(sconf.get("_class_name"), "scheduler", scheduler_file).from_config(sconf)
    return from_diffusers(model, scheduler, clip_x=clip_x)
