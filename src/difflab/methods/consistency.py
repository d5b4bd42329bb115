"""Multistep Consistency Models (Heek, Hoogeboom & Salimans 2024) in logsnr notation.

The time axis is cut into `student_steps` segments with boundaries `t_step = step / student_steps`.
Inside a segment the student `f(z_t, t) -> x` is trained so that one DDIM step with its output
lands where the teacher's probability-flow ODE lands at the segment's lower boundary:

    DDIM_{t->s}(x, z_t)    = a_s x + (s_s / s_t)(z_t - a_t x)
    invDDIM_{t->s}(z_s, z_t) = (z_s - (s_s / s_t) z_t) / (a_s - a_t s_s / s_t)

The two DDIM maps are `difflab.diffusion.transitions.ddim_step` and `inv_ddim`.

Training (paper Alg. 1/2; docs/methods/consistency.md): the teacher ODE is discretised into
`T = N_seg * student_steps` steps (`N_seg = round(N_teacher / student_steps)`, `N_teacher` annealed
from 64 to 1280); draw a segment `step` and `n ~ U{1..N_seg}`, `t = t_step + n / T`, `s = t - 1/T`;

    z_s    = aDDIM_{t->s}(x_teacher, z_t)          (CD: x_teacher = teacher(z_t); CT: x_teacher = x)
    x_ref  = sg f(z_s, s);  z_ref = DDIM_{s->t_step}(x_ref, z_s)
    loss   = (SNR(t) + 1) * pseudo_huber(invDDIM_{t->t_step}(z_ref, z_t) - f(z_t, t))

The student samples with plain DDIM over the segment boundaries (`sample_mcm`). With one segment
per teacher step (`N_seg = 1`) the target is `x_teacher` itself: CT is then diffusion training
with the v-MSE (SNR + 1) weighting. One segment (`student_steps = 1`) is a consistency model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..diffusion.parameterization import Denoise, broadcast_logsnr, diffuse
from ..diffusion.schedules import Schedule
from ..diffusion.transitions import ddim_step, inv_ddim
from ..sampling import sample_ddim, uniform_t_grid
from ..sampling.addim import addim_step, analytic_x_var

Variant = Literal["cd", "ct"]


# --------------------------------------------------------------------------- the training target


def annealed_teacher_steps(
    step: int, start: int = 64, end: int = 1280, anneal_steps: int = 100_000
) -> float:
    """`N_teacher(i) = exp(log start + clip(i / anneal_steps, 0, 1) (log end - log start))`."""
    frac = min(max(step / anneal_steps, 0.0), 1.0) if anneal_steps > 0 else 1.0
    return math.exp(math.log(start) + frac * (math.log(end) - math.log(start)))


def steps_per_segment(n_teacher: float, student_steps: int) -> int:
    """`N_seg = round(N_teacher / student_steps)`, at least one teacher step per segment."""
    return max(1, round(n_teacher / student_steps))


def mcm_times(
    batch: int,
    student_steps: int,
    n_seg: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`(t, s, t_step)` per example: a segment `step ~ U{0..K-1}`, `n ~ U{1..N_seg}`,
    `t = (step N_seg + n) / T`, `s = t - 1/T`, `t_step = step / K` with `T = N_seg K`."""
    total = n_seg * student_steps
    segment = torch.randint(0, student_steps, (batch,), generator=generator, device=device)
    n = torch.randint(1, n_seg + 1, (batch,), generator=generator, device=device)
    index = segment * n_seg + n  # teacher step index of t, in 1..T
    to_t = lambda i: i.double() / total  # noqa: E731
    return to_t(index), to_t(index - 1), to_t(segment * n_seg)


def mcm_target(
    student: Denoise,
    z_t: Tensor,
    z_s: Tensor,
    logsnr_t: Tensor,
    logsnr_s: Tensor,
    logsnr_step: Tensor,
) -> Tensor:
    """`invDDIM_{t->t_step}(DDIM_{s->t_step}(sg f(z_s, s), z_s), z_t)`: the `x` that takes `z_t`
    in one DDIM step to where the student, started from the teacher's `z_s`, lands."""
    with torch.no_grad():
        x_ref = student(z_s, logsnr_s.to(z_s.dtype)).double()
    z_ref = ddim_step(z_s.double(), x_ref, logsnr_s, logsnr_step)
    return inv_ddim(z_ref, z_t.double(), logsnr_t, logsnr_step)


def pseudo_huber(diff: Tensor, c: float | None) -> Tensor:
    """Per example `sqrt(||diff||^2 + c^2) - c` (Song & Dhariwal 2023); `c=None`: the mean
    squared error per dimension (the plain diffusion loss)."""
    sq = diff.flatten(1).pow(2)
    if c is None:
        return sq.mean(1)
    return torch.sqrt(sq.sum(1) + c * c) - c


@contextmanager
def same_randomness(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the global RNG seeded to `seed` and restore it afterwards: two student
    evaluations in such blocks with one seed draw identical dropout (and label-dropout) masks."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class MCMConfig:
    """Multistep consistency training (`ct`) or distillation (`cd`) with `student_steps` segments.

    `n_teacher_start/end/anneal_steps`: the annealed teacher discretisation `N_teacher(i)`.
    `x_var`: aDDIM's posterior variance for the teacher step, `"auto"` = `0.1 / (2 + SNR)` for CD
    and 0 for CT (a DDIM step with the true `x` already lands on the forward marginal).
    `huber_c`: pseudo-Huber constant per sqrt(dimension) (`c = huber_c sqrt(d)`, 0.00054 as in
    improved CT); `None` gives the squared error.
    """

    student_steps: int = 8
    variant: Variant = "cd"
    n_teacher_start: int = 64
    n_teacher_end: int = 1280
    anneal_steps: int = 100_000
    x_var: float | str = "auto"
    huber_c: float | None = 0.00054

    def __post_init__(self) -> None:
        check_student_steps(self.student_steps)
        if self.variant not in ("cd", "ct"):
            raise ValueError(f"MCM variant must be 'cd' or 'ct', got {self.variant!r}")
        if self.n_teacher_start < 1 or self.n_teacher_end < 1 or self.anneal_steps < 0:
            raise ValueError(
                f"need n_teacher_start, n_teacher_end >= 1 and anneal_steps >= 0, got "
                f"{self.n_teacher_start}, {self.n_teacher_end}, {self.anneal_steps}"
            )
        if self.x_var != "auto" and not (isinstance(self.x_var, (int, float)) and self.x_var >= 0):
            raise ValueError(f"x_var must be 'auto' or a float >= 0, got {self.x_var!r}")
        if self.huber_c is not None and self.huber_c <= 0:
            raise ValueError(f"huber_c must be positive or None, got {self.huber_c}")

    def n_seg(self, step: int) -> int:
        n = annealed_teacher_steps(
            step, self.n_teacher_start, self.n_teacher_end, self.anneal_steps
        )
        return steps_per_segment(n, self.student_steps)

    def teacher_x_var(self, logsnr_t: Tensor) -> Tensor | float:
        if self.x_var == "auto":
            return analytic_x_var(logsnr_t) if self.variant == "cd" else 0.0
        return float(self.x_var)


def check_student_steps(student_steps: int) -> int:
    if isinstance(student_steps, bool) or not isinstance(student_steps, int) or student_steps < 1:
        raise ValueError(f"student_steps must be an integer >= 1, got {student_steps!r}")
    return student_steps


def mcm_loss(
    student: Denoise,
    x: Tensor,
    schedule: Schedule,
    cfg: MCMConfig,
    *,
    teacher: Denoise | None = None,
    step: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-example MCM loss `(SNR(t) + 1) pseudo_huber(x_target - f(z_t, t))` (module docstring).

    `student`/`teacher`: `Denoise`s with any conditioning bound in; `teacher` is required for CD
    and ignored for CT. `step`: the training step, for the annealed `N_teacher`. Random draws from
    `generator`, in order: times, noise, then one seed that gives both student evaluations the same
    dropout masks."""
    if cfg.variant == "cd" and teacher is None:
        raise ValueError("consistency distillation (variant='cd') needs a teacher denoiser")
    device = x.device
    t, s, t_step = mcm_times(
        x.shape[0], cfg.student_steps, cfg.n_seg(step), generator=generator, device=device
    )
    l_t, l_s, l_step = schedule.logsnr(t), schedule.logsnr(s), schedule.logsnr(t_step)
    eps = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    z_t = diffuse(x, eps, l_t.to(x.dtype))
    with torch.no_grad():
        x_teacher = x if cfg.variant == "ct" else teacher(z_t, l_t.to(x.dtype))
        x_var = cfg.teacher_x_var(broadcast_logsnr(l_t, x))
        z_s = addim_step(z_t.double(), x_teacher.double(), l_t, l_s, x_var)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
    with same_randomness(seed, device):
        target = mcm_target(student, z_t, z_s.to(x.dtype), l_t, l_s, l_step)
    with same_randomness(seed, device):
        x_hat = student(z_t, l_t.to(x.dtype))
    # the loss in at least float32 (bf16 activations under autocast)
    dtype = torch.promote_types(x_hat.dtype, torch.float32)
    diff = target.to(dtype) - x_hat.to(dtype)
    c = None if cfg.huber_c is None else cfg.huber_c * math.sqrt(x[0].numel())
    return (torch.exp(l_t).to(dtype) + 1.0) * pseudo_huber(diff, c)


# --------------------------------------------------------------------------- sampling


def mcm_grid(schedule: Schedule, student_steps: int) -> Tensor:
    """The student's levels: the segment boundaries `t = 1, (K-1)/K, ..., 1/K` on `schedule`,
    then clean data (+inf), where DDIM returns `f`'s output."""
    return uniform_t_grid(schedule, check_student_steps(student_steps))


def sample_mcm(
    student: Denoise,
    z: Tensor,
    student_steps: int,
    schedule: Schedule,
) -> Tensor:
    """Multistep consistency sampling: plain DDIM over the segment boundaries. NFE = steps."""
    return sample_ddim(student, z, mcm_grid(schedule, student_steps))


# --------------------------------------------------------------------------- the Trainer's loss


MakeDenoise = Callable[..., Denoise]


def mcm_loss_fn(
    cfg: MCMConfig,
    schedule: Schedule,
    make_student: Callable[[nn.Module, Tensor | None], Denoise],
    make_teacher: MakeDenoise | None,
    step_fn: Callable[[], int],
):
    """`loss_fn(models, batch, generator)` for `difflab.train.Trainer`: the student is
    `make_student(models["net"], labels)`, the teacher `make_teacher(labels=labels)`, and
    `step_fn()` the trainer's current step (it drives the `N_teacher` annealing, so a resumed
    run anneals exactly like an uninterrupted one)."""

    def loss_fn(models: Mapping[str, nn.Module], batch, generator: torch.Generator) -> Tensor:
        x, labels = batch
        cond = {} if labels is None else {"labels": labels}
        teacher = None if make_teacher is None else make_teacher(**cond)
        return mcm_loss(
            make_student(models["net"], labels),
            x,
            schedule,
            cfg,
            teacher=teacher,
            step=step_fn(),
            generator=generator,
        )

    return loss_fn
