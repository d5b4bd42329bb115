"""Rolling Diffusion (Ruhe, Heek, Salimans & Hoogeboom, "Rolling Diffusion Models", 2024).

Sequences are `[B, T, C, H, W]`; every frame has its own noise level, a logsnr of shape `[B, T]`
(broadcast over `C, H, W` by `broadcast_logsnr`), and `+inf` marks a clean frame. The sequence
denoiser is the usual `denoise(z, logsnr) -> x_hat` over `Tc` clean context frames followed by
the `W` frames of the window (docs/methods/rolling.md derives everything below).

**Local time.** Frame `k = 0 .. W-1` of the window (0 at the front, nearest the context) sits at

    rolling:  t_k = clip((k + t) / W, 0, 1),        init:  t_k = clip(k / W + t, 0, 1),

for a global time `t` running from 1 to 0. A rolling sweep takes the front frame from `1/W` to
clean, every other frame one `1/W` further, so after it the window shifts by one frame: the front
frame is emitted, a pure-noise frame joins at the back, and the local times are those at `t = 1`
again. The init sweep brings an all-noise window (`t = 1`) to the rolling state at `t = 0`. Local
time becomes a level through the model's schedule, `l_k = schedule.logsnr(t_k)`, with local
time 0 read as `+inf` by the samplers (the last step returns `x_hat`, as every sampler's grid).

**Training** (`rolling_loss`): `t ~ U(0, 1)`; with probability `init_prob` (the paper's
beta, 0.1 here) the init local times, else the rolling ones; the loss is the per-frame weighted
diffusion loss at each frame's own level (`weighted_x_loss` with per-frame levels and weights),
averaged over the window's frames. Block diffusion (`block_loss`) is the same with one shared
`t_k = t`. Under the rolling schedule the local time of a uniformly chosen frame is uniform on
`[0, 1]`, so a weighting keeps its meaning as a density over levels.

**Sampling.** `sample_rolling` runs the init sweep (`W * steps_per_frame` denoiser calls) and
then one rolling sweep of `steps_per_frame` calls per further frame; every call steps all window
frames with the core's DDIM(eta) kernel (`transitions.ddim_step`, eta = 1 is the posterior
draw), each frame between its own two levels. `sample_blocks` is standard diffusion on blocks of
`W` frames at one shared level, `W * steps_per_frame` calls per block, so both spend
`steps_per_frame` calls per generated frame (plus the rolling init's `(W - 1) *
steps_per_frame`) and every frame passes through the same `W * steps_per_frame` levels.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..diffusion.dct import dct2, idct2, radial_frequency
from ..diffusion.losses import Weighting, sample_t, weighted_x_loss
from ..diffusion.parameterization import Denoise, as_denoiser, diffuse
from ..diffusion.schedules import Schedule
from ..diffusion.transitions import ddim_step
from ..fileio import write_atomic, write_json_atomic
from ..images import save_image_grid
from ..train.methods import MethodParts, method_options, register_training_method

INIT_PROB = 0.1
"""The probability of an init-schedule example in training (the paper's beta)."""

# ----------------------------------------------------------------------------- local time


def check_window(window: int, name: str = "window") -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"{name} must be a positive integer, got {window!r}")
    return window


def _frame_index(window: int, t: Tensor) -> Tensor:
    return torch.arange(window, device=t.device, dtype=t.dtype)


def rolling_local_time(t: Tensor | float, window: int) -> Tensor:
    """`t_k = clip((k + t) / W, 0, 1)` for `k = 0 .. W-1`, shape `t.shape + (W,)`: at `t = 0` the
    front frame is clean (0) and the back frame at `(W-1)/W`; at `t = 1` the front frame is at
    `1/W` and the back frame pure noise (1)."""
    t = torch.as_tensor(t, dtype=torch.float64 if not isinstance(t, Tensor) else None)
    check_window(window)
    k = _frame_index(window, t)
    return ((k + t[..., None]) / window).clamp(0.0, 1.0)


def init_local_time(t: Tensor | float, window: int) -> Tensor:
    """`t_k = clip(k / W + t, 0, 1)`: all noise at `t = 1`, the rolling state of `t = 0` at
    `t = 0` (`rolling_local_time(0, W)`)."""
    t = torch.as_tensor(t, dtype=torch.float64 if not isinstance(t, Tensor) else None)
    check_window(window)
    k = _frame_index(window, t)
    return (k / window + t[..., None]).clamp(0.0, 1.0)


def training_local_time(
    batch: int,
    window: int,
    *,
    init_prob: float = INIT_PROB,
    block: bool = False,
    time_sampling: str = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Local times `[B, W]` of one training batch: `t ~ U(0, 1)` per example (`sample_t`'s
    `time_sampling`), then the init schedule with probability `init_prob`, else the rolling one;
    `block=True` gives every frame the shared `t` (standard diffusion over the window)."""
    if not 0.0 <= init_prob <= 1.0:
        raise ValueError(f"init_prob must be in [0, 1], got {init_prob}")
    t = sample_t(batch, time_sampling, generator=generator, device=device)
    if block:
        return t[:, None].expand(batch, check_window(window)).clone()
    use_init = torch.rand(batch, generator=generator, device=device) < init_prob
    return torch.where(use_init[:, None], init_local_time(t, window), rolling_local_time(t, window))


def frame_logsnr(schedule: Schedule, t_local: Tensor) -> Tensor:
    """Levels of local times for sampling: `schedule.logsnr(t)`, and `+inf` (clean) at `t = 0`."""
    level = schedule.logsnr(t_local.clamp(0.0, 1.0))
    return torch.where(t_local <= 0, torch.full_like(level, math.inf), level)


def rolling_levels(schedule: Schedule, window: int, steps_per_frame: int) -> Tensor:
    """The `steps_per_frame + 1` level rows `[n + 1, W]` of one rolling sweep, global
    `t_i = 1 - i / n` (float64)."""
    n = check_window(steps_per_frame, "steps_per_frame")
    t = 1.0 - torch.arange(n + 1, dtype=torch.float64) / n
    return frame_logsnr(schedule, rolling_local_time(t, window))


def init_levels(schedule: Schedule, window: int, steps_per_frame: int) -> Tensor:
    """The `W n + 1` level rows `[W n + 1, W]` of the init sweep, global `t_i = 1 - i / (W n)`:
    the front frame passes through the same levels as in the rolling sweeps."""
    n = check_window(steps_per_frame, "steps_per_frame") * check_window(window)
    t = 1.0 - torch.arange(n + 1, dtype=torch.float64) / n
    return frame_logsnr(schedule, init_local_time(t, window))


def block_levels(schedule: Schedule, window: int, steps_per_frame: int) -> Tensor:
    """The `W n + 1` level rows `[W n + 1, W]` of one block, all frames at the shared `t_i`."""
    n = check_window(steps_per_frame, "steps_per_frame") * check_window(window)
    t = 1.0 - torch.arange(n + 1, dtype=torch.float64) / n
    return frame_logsnr(schedule, t[:, None].expand(n + 1, window))


# ----------------------------------------------------------------------------- loss


def check_sequence(x: Tensor, name: str = "x", min_frames: int = 1) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 5:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape [B, T, C, H, W], got {shape}")
    if x.shape[1] < min_frames:
        raise ValueError(
            f"{name} must have at least {min_frames} frame(s) on dim 1, got shape {tuple(x.shape)}"
        )
    return x


def sequence_loss(
    denoise: Denoise,
    x: Tensor,
    t_local: Tensor,
    schedule: Schedule,
    weighting: Weighting,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-example loss `[B]` of sequences `x` `[B, Tc + W, C, H, W]` whose last `W` frames are
    noised at local times `t_local` `[B, W]` and whose first `Tc` frames stay clean (`+inf`):
    the mean over window frames and pixels of `w(l_k) e^{l_k} ||x_k - x_hat_k||^2`."""
    check_sequence(x)
    if t_local.ndim != 2 or t_local.shape[0] != x.shape[0] or t_local.shape[1] > x.shape[1]:
        raise ValueError(
            f"t_local must have shape [B, W] with W <= T for x of shape {tuple(x.shape)}, "
            f"got {tuple(t_local.shape)}"
        )
    tc = x.shape[1] - t_local.shape[1]
    t_local = t_local.to(x.device, torch.float32 if x.dtype != torch.float64 else x.dtype)
    level = schedule.logsnr(t_local)
    weight = weighting(level, -schedule.dlogsnr_dt(t_local))
    target = x[:, tc:]
    eps = torch.randn(target.shape, generator=generator, device=x.device, dtype=x.dtype)
    z = torch.cat([x[:, :tc], diffuse(target, eps, level)], dim=1)
    clean = torch.full((x.shape[0], tc), math.inf, device=x.device, dtype=level.dtype)
    x_hat = denoise(z, torch.cat([clean, level], dim=1))
    if x_hat.shape != x.shape:
        raise ValueError(
            f"denoise returned shape {tuple(x_hat.shape)} for input of shape {tuple(x.shape)}"
        )
    return weighted_x_loss(target, x_hat[:, tc:], level, weight)


def rolling_loss(
    denoise: Denoise,
    x: Tensor,
    schedule: Schedule,
    weighting: Weighting,
    *,
    window: int,
    init_prob: float = INIT_PROB,
    time_sampling: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """The Rolling Diffusion loss on `x` `[B, Tc + W, C, H, W]` (module docstring)."""
    _check_split(x, window)
    t_local = training_local_time(
        x.shape[0], window, init_prob=init_prob, time_sampling=time_sampling,
        generator=generator, device=x.device,
    )  # fmt: skip
    return sequence_loss(denoise, x, t_local, schedule, weighting, generator=generator)


def block_loss(
    denoise: Denoise,
    x: Tensor,
    schedule: Schedule,
    weighting: Weighting,
    *,
    window: int,
    time_sampling: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Standard (block) diffusion over the last `window` frames at one shared level."""
    _check_split(x, window)
    t_local = training_local_time(
        x.shape[0], window, block=True, time_sampling=time_sampling, generator=generator,
        device=x.device,
    )  # fmt: skip
    return sequence_loss(denoise, x, t_local, schedule, weighting, generator=generator)


def _check_split(x: Tensor, window: int) -> None:
    check_sequence(x)
    check_window(window)
    if x.shape[1] <= window:
        raise ValueError(
            f"x of shape {tuple(x.shape)} has {x.shape[1]} frames; window={window} needs at "
            "least one clean context frame before it (T > window)"
        )


# ----------------------------------------------------------------------------- samplers


def _check_sampling(context: Tensor, num_frames: int, window: int, steps_per_frame: int) -> None:
    check_sequence(context, "context")
    check_window(window)
    check_window(steps_per_frame, "steps_per_frame")
    check_window(num_frames, "num_frames")


def _denoise_window(denoise: Denoise, context: Tensor, z: Tensor, level: Tensor) -> Tensor:
    """`x_hat` of the window `z` `[B, W, ...]` at levels `[W]` after the clean `context`."""
    b, tc = context.shape[:2]
    seq = torch.cat([context, z], dim=1)
    levels = torch.cat([torch.full((tc,), math.inf, dtype=level.dtype), level])
    levels = levels.to(z.device, z.dtype if z.dtype == torch.float64 else torch.float32)
    x_hat = denoise(seq, levels.expand(b, -1))
    if x_hat.shape != seq.shape:
        raise ValueError(
            f"denoise returned shape {tuple(x_hat.shape)} for input of shape {tuple(seq.shape)}"
        )
    return x_hat[:, tc:]


def _step(
    denoise: Denoise,
    context: Tensor,
    z: Tensor,
    l_t: Tensor,
    l_s: Tensor,
    eta: float,
    generator: torch.Generator | None,
) -> Tensor:
    x_hat = _denoise_window(denoise, context, z, l_t)
    shape = (1, -1, 1, 1, 1)
    lt = l_t.to(z.device, z.dtype).reshape(shape)
    ls = l_s.to(z.device, z.dtype).reshape(shape)
    noise = None
    if eta > 0:
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    # a frame that stays at the same level (the back of the init sweep) is left untouched
    return torch.where(lt == ls, z, ddim_step(z, x_hat, lt, ls, eta=eta, noise=noise))


def _noise(like: Tensor, frames: int, generator: torch.Generator | None) -> Tensor:
    shape = (like.shape[0], frames, *like.shape[2:])
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def rolling_nfe(num_frames: int, window: int, steps_per_frame: int) -> int:
    """Denoiser calls of `sample_rolling`: `n (W + num_frames - 1)`."""
    return steps_per_frame * (window + num_frames - 1)


def block_nfe(num_frames: int, window: int, steps_per_frame: int) -> int:
    """Denoiser calls of `sample_blocks`: `ceil(num_frames / W)` blocks of `W n` calls."""
    return math.ceil(num_frames / window) * window * steps_per_frame


def sample_rolling(
    denoise: Denoise,
    context: Tensor,
    num_frames: int,
    *,
    window: int,
    steps_per_frame: int,
    schedule: Schedule,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
) -> Tensor:
    """The `num_frames` frames `[B, num_frames, C, H, W]` after `context` `[B, Tc, C, H, W]` by
    Rolling Diffusion: the init sweep, then one rolling sweep of `steps_per_frame` denoiser
    calls per emitted frame. The denoiser sees the last `Tc` clean frames and the window."""
    _check_sampling(context, num_frames, window, steps_per_frame)
    tc = context.shape[1]
    init = init_levels(schedule, window, steps_per_frame)
    roll = rolling_levels(schedule, window, steps_per_frame)
    z = _noise(context, window, generator)
    for i in range(init.shape[0] - 1):
        z = _step(denoise, context, z, init[i], init[i + 1], eta, generator)
    frames = [z[:, 0]]
    while len(frames) < num_frames:
        context = torch.cat([context, z[:, :1]], dim=1)[:, -tc:]
        z = torch.cat([z[:, 1:], _noise(context, 1, generator)], dim=1)
        for i in range(roll.shape[0] - 1):
            z = _step(denoise, context, z, roll[i], roll[i + 1], eta, generator)
        frames.append(z[:, 0])
    return _finite(torch.stack(frames, dim=1), "sample_rolling")


def sample_blocks(
    denoise: Denoise,
    context: Tensor,
    num_frames: int,
    *,
    window: int,
    steps_per_frame: int,
    schedule: Schedule,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
) -> Tensor:
    """Standard diffusion baseline with `sample_rolling`'s signature: blocks of `window` frames at
    one shared level, `window * steps_per_frame` calls each, every block conditioned on the last
    `Tc` clean frames; the last block is cut to `num_frames`."""
    _check_sampling(context, num_frames, window, steps_per_frame)
    tc = context.shape[1]
    levels = block_levels(schedule, window, steps_per_frame)
    blocks, made = [], 0
    while made < num_frames:
        z = _noise(context, window, generator)
        for i in range(levels.shape[0] - 1):
            z = _step(denoise, context, z, levels[i], levels[i + 1], eta, generator)
        blocks.append(z)
        made += window
        context = torch.cat([context, z], dim=1)[:, -tc:]
    return _finite(torch.cat(blocks, dim=1)[:, :num_frames], "sample_blocks")


SEQUENCE_SAMPLERS = {"rolling": sample_rolling, "block": sample_blocks}
NFE = {"rolling": rolling_nfe, "block": block_nfe}


def _finite(x: Tensor, name: str) -> Tensor:
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"{name} produced non-finite frames")
    return x


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class RollingOptions:
    """`method.kwargs` of `rolling` / `block` training: `context` clean frames, then a `window`
    of noisy frames (the clips must have `context + window` frames, as must the net);
    `init_prob` is beta, the share of init-schedule examples (rolling only)."""

    context: int = 2
    window: int = 8
    init_prob: float = INIT_PROB

    def __post_init__(self) -> None:
        check_window(self.context, "context")
        check_window(self.window)
        if not 0.0 <= self.init_prob <= 1.0:
            raise ValueError(f"init_prob must be in [0, 1], got {self.init_prob}")

    @property
    def frames(self) -> int:
        return self.context + self.window


def _build(cfg, net, dataset, *, block: bool) -> MethodParts:
    options: RollingOptions = method_options(cfg)
    for owner, frames in (("model.kwargs", getattr(getattr(net, "config", None), "frames", None)),
                          ("data.kwargs", getattr(dataset, "frames", None))):  # fmt: skip
        if frames is not None and frames != options.frames:
            raise ValueError(
                f"config key {owner}.frames={frames} must equal method.kwargs.context + "
                f"method.kwargs.window = {options.frames}"
            )
    schedule, weighting = cfg.diffusion.build_schedule(), cfg.diffusion.build_weighting()
    prediction, time_sampling = cfg.diffusion.prediction, cfg.diffusion.time_sampling

    def loss_fn(models, batch, generator):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        denoise = as_denoiser(models["net"], prediction)
        if block:
            return block_loss(denoise, x, schedule, weighting, window=options.window,
                              time_sampling=time_sampling, generator=generator)  # fmt: skip
        return rolling_loss(denoise, x, schedule, weighting, window=options.window,
                            init_prob=options.init_prob, time_sampling=time_sampling,
                            generator=generator)  # fmt: skip

    return MethodParts(loss_fn)


def build_rolling(cfg, net, dataset):
    """`difflab train` with `method.name: rolling` (`RollingOptions`)."""
    return _build(cfg, net, dataset, block=False)


def build_block(cfg, net, dataset):
    """`difflab train` with `method.name: block`: the same net and data, one shared level."""
    return _build(cfg, net, dataset, block=True)


register_training_method("rolling", build_rolling, RollingOptions)
register_training_method("block", build_block, RollingOptions)


# ----------------------------------------------------------------------------- rollouts

DEFAULT_STEPS_PER_FRAME = 4
DEFAULT_FRAMES = 32


def test_clips(cfg, frames: int, num: int) -> Tensor:
    """`num` clips of `frames` frames from the test split of the model's data set, spread evenly
    over it (float32 `[num, frames, C, H, W]`)."""
    from ..data import make_dataset

    kwargs = {**cfg.data.kwargs, "frames": frames}
    dataset = make_dataset(cfg.data.name, "test", **kwargs)
    if num > len(dataset):
        raise ValueError(f"--num {num}: the test split has only {len(dataset)} clips")
    index = torch.linspace(0, len(dataset) - 1, num).round().long().tolist()
    return torch.stack([dataset[i][0] for i in index]).float()


def rollout_strip(context: Tensor, sample: Tensor, truth: Tensor | None, max_columns: int = 32):
    """Rows `truth` (if given) and `sample` of one sequence, context frames first, as one image
    batch `[rows * columns, C, H, W]` and the column count (frames subsampled evenly)."""
    frames = torch.cat([context, sample])
    rows = [frames] if truth is None else [torch.cat([context, truth]), frames]
    keep = torch.linspace(0, len(frames) - 1, min(max_columns, len(frames))).round().long()
    return torch.cat([r[keep] for r in rows]), len(keep)


def save_gif(path, rows: Sequence[Tensor], scale: int = 4, ms: int = 120) -> None:
    """An animated GIF of frame sequences `[T, C, H, W]` in [-1, 1] shown side by side."""
    from PIL import Image

    video = torch.cat(list(rows), dim=-1)  # [T, C, H, sum W]
    pixels = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    images = []
    for frame in pixels:
        mode, array = ("L", frame[0]) if frame.shape[0] == 1 else ("RGB", frame.permute(1, 2, 0))
        img = Image.fromarray(array.numpy(), mode=mode)
        images.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=ms,
                   loop=0)  # fmt: skip
    write_atomic(path, buffer.getvalue())


def sample_rollouts_to_folder(
    model, folder, *, num: int, seed: int = 0, overwrite: bool = False,
    frames: int | None = None, steps: int | None = None, options=None, sampler=None, grid=None,
    guidance: float = 0.0, interval=None, batch_size: int = 256,
) -> dict:  # fmt: skip
    """`difflab sample` on a `rolling` or `block` model: `num` rollouts of `frames` frames after
    the context frames of evenly spread test clips, with `steps` (= steps_per_frame) denoiser
    calls per frame; writes `strip_XXXXX.png` (truth above, sample below), `rollout_XXXXX.gif`
    (truth | sample), `rollouts.npz` and `samples.json` to `folder` (already checked)."""
    if sampler is not None or grid not in (None, "default"):
        raise ValueError("--sampler/--grid: a sequence model samples with its own method "
                         "(rolling or block) on uniform local-time levels")  # fmt: skip
    if guidance != 0 or interval is not None:
        raise ValueError("--guidance: sequence models are unconditional")
    options = dict(options or {})
    eta = float(options.pop("eta", 0.0))
    if options:
        raise ValueError(f"--opt {sorted(options)}: sequence sampling takes only eta")
    cfg, folder = model.config, Path(folder)
    opts = RollingOptions(**cfg.method.kwargs)
    frames = DEFAULT_FRAMES if frames is None else frames
    steps = DEFAULT_STEPS_PER_FRAME if steps is None else steps
    clips = test_clips(cfg, opts.context + frames, num)
    context, truth = clips[:, : opts.context], clips[:, opts.context :]
    device = next(model.net.parameters()).device
    fn = SEQUENCE_SAMPLERS[cfg.method.name]
    denoise = as_denoiser(model.net, model.prediction)
    gen = torch.Generator(device).manual_seed(seed)
    start, out = time.perf_counter(), []
    with torch.inference_mode():
        for i in range(0, num, batch_size):
            ctx = context[i : i + batch_size].to(device)
            out.append(fn(denoise, ctx, frames, window=opts.window, steps_per_frame=steps,
                          schedule=model.schedule, generator=gen, eta=eta).cpu())  # fmt: skip
    samples, seconds = torch.cat(out), time.perf_counter() - start
    if overwrite:
        for old in [*folder.glob("strip_*.png"), *folder.glob("rollout_*.gif")]:
            old.unlink()
    for i in range(num):
        strip, columns = rollout_strip(context[i], samples[i], truth[i])
        save_image_grid(strip, folder / f"strip_{i:05d}.png", nrow=columns, scale=2)
        pair = [torch.cat([context[i], truth[i]]), torch.cat([context[i], samples[i]])]
        save_gif(folder / f"rollout_{i:05d}.gif", pair)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, samples=samples.numpy(), truth=truth.numpy(),
                        context=context.numpy())  # fmt: skip
    write_atomic(folder / "rollouts.npz", buffer.getvalue())
    nfe = NFE[cfg.method.name](frames, opts.window, steps)
    record = {
        "checkpoint": str(model.path),
        "method": cfg.method.name,
        "context": opts.context,
        "window": opts.window,
        "frames": frames,
        "steps_per_frame": steps,
        "eta": eta,
        "nfe_per_rollout": nfe,
        "seed": seed,
        "num": num,
        "mse": float((samples - truth).pow(2).mean()),
        "seconds": round(seconds, 3),
    }
    write_json_atomic(folder / "samples.json", record)
    record["summary"] = (
        f"{num} {cfg.method.name} rollouts of {frames} frames after {opts.context} context frames "
        f"({steps} calls per frame, {nfe} per rollout) in {seconds:.1f} s; MSE to the truth "
        f"{record['mse']:.4f}\nstrips/GIFs: {folder}/  record: {folder / 'samples.json'}"
    )
    return record


# ----------------------------------------------------------------------------- exact oracle


@dataclass(frozen=True)
class GaussianFrames:
    """A stationary Gaussian process over frames `[C, H, W]` with an exact denoiser.

    Every pixel is AR(1) in time with coefficient `rho`; space has the power-law spectrum
    `s_j^2 = (1 + f_j / f_0)^(-power)` over the 2-D DCT frequencies `f_j` (normalised to mean
    variance 1): `y_{t+1} = rho y_t + sqrt(1 - rho^2) s e`, `x = idct(y)`. In the DCT basis the
    coordinates are independent, each a Gaussian vector over frames with covariance
    `s_j^2 R`, `R_{ab} = rho^|a - b|`; with per-frame levels `z = A y + S e`, so

        E[y | z] = s_j^2 R A (s_j^2 A R A + S^2)^{-1} z        (per coordinate, per example).
    """

    shape: tuple[int, int, int] = (1, 8, 8)
    rho: float = 0.9
    power: float = 2.0
    f0: float = 0.1

    def __post_init__(self) -> None:
        if not -1.0 < self.rho < 1.0:
            raise ValueError(f"rho must be in (-1, 1), got {self.rho}")

    def spectrum(self) -> Tensor:
        """`s_j^2` `[C, H, W]` (float64), mean 1."""
        c, h, w = self.shape
        s2 = (1.0 + radial_frequency(h, w) / self.f0) ** (-self.power)
        return (s2 / s2.mean()).expand(c, h, w)

    def sample(self, batch: int, frames: int, generator: torch.Generator | None = None) -> Tensor:
        """Stationary sequences `[B, T, C, H, W]` (float64)."""
        s = self.spectrum().sqrt()
        y = torch.randn((batch, *self.shape), generator=generator, dtype=torch.float64) * s
        out = [y]
        innov = math.sqrt(1.0 - self.rho**2)
        for _ in range(frames - 1):
            e = torch.randn((batch, *self.shape), generator=generator, dtype=torch.float64)
            out.append(self.rho * out[-1] + innov * s * e)
        return _idct_frames(torch.stack(out, dim=1))

    def correlation(self, frames: int) -> Tensor:
        k = torch.arange(frames, dtype=torch.float64)
        return self.rho ** (k[:, None] - k[None, :]).abs()

    def denoise(self, z: Tensor, logsnr: Tensor) -> Tensor:
        """Exact `E[x | z]` for `z` `[B, T, C, H, W]` at per-frame levels `[B, T]` (or `[T]`)."""
        check_sequence(z, "z")
        b, t = z.shape[:2]
        level = logsnr.to(torch.float64)
        if level.ndim == 1:
            level = level[None]
        if tuple(level.shape) not in ((b, t), (1, t)):
            raise ValueError(f"logsnr must have shape [B, T]=[{b}, {t}], got {tuple(logsnr.shape)}")
        if level.shape[0] > 1 and bool((level == level[:1]).all()):
            level = level[:1]  # one gain per coordinate for the whole batch
        alpha, sigma2 = torch.sigmoid(level).sqrt(), torch.sigmoid(-level)  # [b', T]
        s2 = self.spectrum().reshape(-1)  # [D]
        r = self.correlation(t)
        ra = (r * alpha[:, None, :])[:, None]  # R A: [b', 1, T, T]
        cov = s2[None, :, None, None] * alpha[:, None, :, None] * ra  # s2 A R A
        cov = cov + torch.diag_embed(sigma2)[:, None]  # + S^2: [b', D, T, T]
        gain = s2[None, :, None, None] * ra @ torch.linalg.inv(cov)  # [b', D, T, T]
        y = _dct_frames(z.to(torch.float64)).reshape(b, t, -1).transpose(1, 2)  # [B, D, T]
        y_hat = (gain @ y[..., None])[..., 0]
        x_hat = _idct_frames(y_hat.transpose(1, 2).reshape(z.shape))
        return x_hat.to(z.dtype)

    def statistics(self, frames: Tensor, max_lag: int) -> dict[str, Tensor]:
        """Whitened moments of sequences `[B, T, C, H, W]`: `variance[t]` = mean of `y_t^2 / s^2`
        per frame (1 for the process) and `correlation[k]` = mean of `y_t y_{t+k} / s^2` over
        frames (`rho^k`), in the DCT basis, averaged over examples and coordinates."""
        check_sequence(frames, "frames")
        y = _dct_frames(frames.to(torch.float64)) / self.spectrum().sqrt()
        variance = y.pow(2).mean(dim=(0, 2, 3, 4))
        lags = [
            (y[:, k:] * y[:, : y.shape[1] - k]).mean() if k < y.shape[1] else torch.tensor(math.nan)
            for k in range(max_lag + 1)
        ]
        return {"variance": variance, "correlation": torch.stack(lags)}

    def moment_errors(self, frames: Tensor, lags: Sequence[int] = (1, 2, 4)) -> dict[str, float]:
        """`variance`: mean over frames of `|var_t - 1|`; `variance_max`: its worst frame;
        `lag_k`: `|corr_k - rho^k|` for each lag (the targets are exact)."""
        stats = self.statistics(frames, max(lags))
        dev = (stats["variance"] - 1.0).abs()
        out = {"variance": float(dev.mean()), "variance_max": float(dev.max())}
        for k in lags:
            out[f"lag_{k}"] = float((stats["correlation"][k] - self.rho**k).abs())
        return out


def _dct_frames(x: Tensor) -> Tensor:
    return dct2(x)


def _idct_frames(y: Tensor) -> Tensor:
    return idct2(y)
