"""Moment Matching distillation (Salimans, Mensink, Heek & Hoogeboom 2024) in logsnr notation.

A `k`-step student `g(z_t, t) -> x~` samples ancestrally: from `z_t` it predicts `x~` and draws
`z_s ~ q(z_s | z_t, x~)`, the Gaussian diffusion posterior (mean
`e^{l_t - l_s} (a_s/a_t) z_t + a_s (1 - e^{l_t - l_s}) x~`, variance `s_s^2 (1 - e^{l_t - l_s})`;
`difflab.diffusion.transitions.posterior_sample`); the last step returns `x~`. This is DDPM's
ancestral step with `x_hat = x~` (`sample_mmd`).

The student is right when the conditional moments match along its own trajectory:
`E_g[x~ | z_s] = g_teacher(z_s)` for `s ~ U(0, 1)`, `t = min(1, s + U(0, 1/k))`, `z_t ~ q(z_t | x)`
from data. Two ways to enforce it (docs/methods/moment_matching.md derives both):

- **alternating** (paper Alg. 2): an auxiliary denoiser `phi` (initialised from the teacher) is fit
  to the student's samples, `w(s) [||x~ - g_phi(z_s)||^2 + ||g_teacher(z_s) - g_phi(z_s)||^2]`,
  and the generator follows `w(s) x~ . sg[g_phi(z_s) - g_teacher(z_s)]`; updates alternate.
- **parameter space** (paper Alg. 3): no auxiliary network. With the teacher's own loss
  `l(theta; x, z_s) = w(s) ||x - g_theta(z_s)||^2` and `m = E_student[grad_theta l]` (zero when the
  student matches the data, since the teacher is a stationary point of its loss there), minimise
  `1/2 m^T P m`, estimated without bias as `1/2 m_A^T P m_B` from two independent half-batches.
  Its gradient reaches the student only through `x~`, as `-(2 w / D) x~ . J_theta u`, one JVP of
  the teacher in parameter direction `u = P m_B`: the auxiliary denoiser is in effect the teacher
  after one virtual (preconditioned) gradient step on the student's samples. `P` is the identity
  or Adam's `1 / (sqrt(v) + eps)` with `v` the second moment of the teacher's minibatch gradients.

`w` is the teacher's training weighting (`difflab.diffusion.losses`), applied in x-space as in
`weighted_x_loss`. The value each loss reports is the quantity to watch, not the surrogate that
carries the gradient: the moment mismatch `w ||g_phi - g_teacher||^2` (alternating) and the
estimate of `1/2 m^T P m` (parameter space).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..diffusion.losses import Weighting, weighted_x_loss
from ..diffusion.parameterization import Denoise, as_denoiser, broadcast_logsnr, diffuse
from ..diffusion.schedules import Schedule
from ..diffusion.transitions import posterior_sample
from ..sampling import sample_ddpm, uniform_t_grid
from .consistency import check_student_steps

Variant = Literal["alternating", "param"]
Params = dict[str, Tensor]


@dataclass(frozen=True)
class MMDConfig:
    """Moment matching with a `student_steps`-step ancestral student.

    `aux_teacher_weight`: weight of `||g_teacher - g_phi||^2` in the auxiliary loss (alternating).
    `aux_steps`: auxiliary updates per generator update (alternating; the paper alternates 1:1).
    `preconditioner`: `"adam"` or `"none"` (parameter space); `"adam"` measures the teacher's
    gradient second moment on `preconditioner_batches` data minibatches before training.
    `freeze_encoder_steps`: for a dual-rate student (`difflab.nets.DualRateNet`), the encoder
    (initialised from the teacher's) gets no gradient for the first that many student updates;
    the student's rollouts run its light net on the features of its own encoder.
    """

    student_steps: int = 8
    variant: Variant = "alternating"
    aux_teacher_weight: float = 1.0
    aux_steps: int = 1
    preconditioner: Literal["adam", "none"] = "adam"
    preconditioner_batches: int = 16
    preconditioner_eps: float = 1e-8
    freeze_encoder_steps: int = 0

    def __post_init__(self) -> None:
        check_student_steps(self.student_steps)
        if self.freeze_encoder_steps < 0:
            raise ValueError(f"freeze_encoder_steps must be >= 0, got {self.freeze_encoder_steps}")
        if self.variant not in ("alternating", "param"):
            raise ValueError(f"MMD variant must be 'alternating' or 'param', got {self.variant!r}")
        if self.preconditioner not in ("adam", "none"):
            raise ValueError(
                f"preconditioner must be 'adam' or 'none', got {self.preconditioner!r}"
            )
        if self.aux_teacher_weight < 0:
            raise ValueError(f"aux_teacher_weight must be >= 0, got {self.aux_teacher_weight}")
        if self.aux_steps < 1:
            raise ValueError(f"aux_steps must be >= 1, got {self.aux_steps}")
        if self.preconditioner_batches < 1 or self.preconditioner_eps <= 0:
            raise ValueError("preconditioner_batches must be >= 1 and preconditioner_eps > 0")


# --------------------------------------------------------------------------- sampling


def mmd_grid(schedule: Schedule, student_steps: int) -> Tensor:
    """The student's levels `t = 1, (k-1)/k, ..., 1/k` on `schedule`, then clean data."""
    return uniform_t_grid(schedule, check_student_steps(student_steps))


def sample_mmd(
    student: Denoise,
    z: Tensor,
    student_steps: int,
    schedule: Schedule,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The student's ancestral sampler (`x~ = g(z_t)`, `z_s ~ q(z_s | z_t, x~)`). NFE = steps."""
    return sample_ddpm(student, z, mmd_grid(schedule, student_steps), generator=generator)


# --------------------------------------------------------------------------- shared pieces


def mmd_times(
    batch: int,
    student_steps: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """`(t, s)`: `s ~ U(0, 1)`, `t = min(1, s + U(0, 1/k))` (float64)."""
    shape = (batch,)
    s = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    gap = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    return (s + gap / student_steps).clamp(max=1.0), s


@dataclass
class StudentDraw:
    """One pass of the student over a data batch: levels, `x~` (with gradient if asked), `z_s`."""

    logsnr_t: Tensor
    logsnr_s: Tensor
    x_tilde: Tensor
    z_s: Tensor
    weight: Tensor  # the teacher's weighting factor on the eps-MSE at s, [B]


def student_draw(
    student: Denoise,
    x: Tensor,
    schedule: Schedule,
    weighting: Weighting,
    student_steps: int,
    *,
    grad: bool,
    generator: torch.Generator | None = None,
) -> StudentDraw:
    """`t, s`, then `z_t ~ q(z_t | x)`, `x~ = g(z_t, t)`, `z_s ~ q(z_s | z_t, sg x~)`.
    Draws from `generator` in order: times, the noise of `z_t`, the noise of `z_s`."""
    t, s = mmd_times(x.shape[0], student_steps, generator=generator, device=x.device)
    l_t, l_s = schedule.logsnr(t).to(x.dtype), schedule.logsnr(s).to(x.dtype)
    z_t = diffuse(x, torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), l_t)
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        x_tilde = student(z_t, l_t)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    z_s = posterior_sample(z_t, x_tilde.detach(), l_t, l_s, noise)
    weight = weighting(l_s, -schedule.dlogsnr_dt(s).to(x.dtype))
    return StudentDraw(l_t, l_s, x_tilde, z_s, weight)


def x_space_weight(weight: Tensor, logsnr: Tensor, like: Tensor) -> Tensor:
    """The factor `w(l) e^l` that `weighted_x_loss` puts on `(x - x_hat)^2`, shaped like `like`."""
    return broadcast_logsnr(weight * torch.exp(logsnr), like)


def value_with_gradient(value: Tensor, surrogate: Tensor) -> Tensor:
    """A tensor equal to `value` whose gradient is that of `surrogate`."""
    return value.detach() + (surrogate - surrogate.detach())


# --------------------------------------------------------------------------- alternating


def mmd_alternating_loss(
    student: Denoise,
    auxiliary: Denoise,
    teacher: Denoise,
    x: Tensor,
    schedule: Schedule,
    weighting: Weighting,
    cfg: MMDConfig,
    *,
    update: Literal["generator", "auxiliary"],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-example loss for one alternating update (module docstring); the value is the moment
    mismatch `w(s) ||g_phi(z_s) - g_teacher(z_s)||^2` (mean over dims) in both cases.

    `update="generator"`: gradient `w(s) e^l x~ . sg[g_phi - g_teacher]` for the student only.
    `update="auxiliary"`: gradient of `w(s) [||x~ - g_phi||^2 + c ||g_teacher - g_phi||^2]` for
    `phi` only (`c = cfg.aux_teacher_weight`)."""
    if update not in ("generator", "auxiliary"):
        raise ValueError(f"update must be 'generator' or 'auxiliary', got {update!r}")
    on_generator = update == "generator"
    draw = student_draw(
        student, x, schedule, weighting, cfg.student_steps, grad=on_generator, generator=generator
    )
    l_s, w = draw.logsnr_s, draw.weight
    with torch.no_grad():
        x_teacher = teacher(draw.z_s, l_s)
    with torch.set_grad_enabled(not on_generator and torch.is_grad_enabled()):
        x_aux = auxiliary(draw.z_s, l_s)
    mismatch = weighted_x_loss(x_aux.detach(), x_teacher, l_s, w)
    if on_generator:
        residual = (x_aux - x_teacher).detach()
        wx = x_space_weight(w, l_s, draw.x_tilde)
        surrogate = (wx * draw.x_tilde * residual).flatten(1).mean(1)
    else:
        surrogate = weighted_x_loss(draw.x_tilde.detach(), x_aux, l_s, w)
        if cfg.aux_teacher_weight:
            anchor = weighted_x_loss(x_teacher, x_aux, l_s, w)
            surrogate = surrogate + cfg.aux_teacher_weight * anchor
    return value_with_gradient(mismatch, surrogate)


def alternating_update(step: int, aux_steps: int = 1) -> Literal["generator", "auxiliary"]:
    """`aux_steps` auxiliary updates, then one generator update. The auxiliary goes first: it
    starts equal to the teacher, where the generator's gradient is zero."""
    return "generator" if step % (aux_steps + 1) == aux_steps else "auxiliary"


# --------------------------------------------------------------------------- parameter space


def teacher_parameters(net: nn.Module) -> Params:
    """The teacher's parameters by name, detached (the point `theta` the moments are taken at)."""
    return {name: p.detach() for name, p in net.named_parameters()}


def functional_teacher(
    net: nn.Module, params: Params, prediction: str, labels: Tensor | None = None
) -> Denoise:
    """The teacher's `Denoise` at parameters `params` (`torch.func.functional_call`)."""
    cond = {} if labels is None else {"labels": labels}

    def forward(z: Tensor, logsnr: Tensor, **kwargs) -> Tensor:
        return functional_call(net, params, (z, logsnr), kwargs)

    return as_denoiser(forward, prediction, **cond)


def teacher_loss_gradient(
    net: nn.Module,
    params: Params,
    prediction: str,
    x: Tensor,
    z_s: Tensor,
    logsnr_s: Tensor,
    weight: Tensor,
    labels: Tensor | None = None,
) -> Params:
    """`grad_theta` of the teacher's loss `mean_i w_i ||x_i - g_theta(z_i)||^2 / D` on the
    pairs `(x, z_s)` (`x` treated as data: no gradient flows into it)."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        x_hat = functional_teacher(net, leaves, prediction, labels)(z_s, logsnr_s)
        loss = weighted_x_loss(x.detach(), x_hat, logsnr_s, weight).mean()
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}


def teacher_output_jvp(
    net: nn.Module,
    params: Params,
    prediction: str,
    z_s: Tensor,
    logsnr_s: Tensor,
    direction: Params,
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """`(g_theta(z_s), J_theta g_theta(z_s) . direction)`: the teacher's output and its change
    along a parameter direction, by one forward-mode JVP (PyTorch's math attention kernel: the
    fused kernels have no forward AD)."""

    def output(p: Params) -> Tensor:
        return functional_teacher(net, p, prediction, labels)(z_s, logsnr_s)

    with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        return jvp(output, (params,), (direction,))


def precondition(grads: Params, preconditioner: Params | None) -> Params:
    """`P m`: elementwise with a diagonal preconditioner, or `m` itself (`P = I`)."""
    if preconditioner is None:
        return grads
    return {k: g * preconditioner[k].to(g) for k, g in grads.items()}


def mmd_parameter_loss(
    student: Denoise,
    teacher_net: nn.Module,
    teacher_prediction: str,
    x: Tensor,
    schedule: Schedule,
    weighting: Weighting,
    cfg: MMDConfig,
    *,
    preconditioner: Params | None = None,
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-example parameter-space moment matching loss (module docstring).

    The batch is split into halves A and B; with `m_A, m_B` the teacher-loss gradients on each
    half's student samples, the value is the unbiased estimate `1/2 m_A^T P m_B` of
    `1/2 ||E m||_P^2`; the gradient is its exact gradient through `x~` (symmetrised over the two
    halves): for `i` in A, `-(2 w_i e^l / D) x~_i . sg[J_theta g(z_i) P m_B]`, and vice versa."""
    if x.shape[0] < 2:
        raise ValueError(f"parameter-space MMD needs a batch of at least 2, got {x.shape[0]}")
    draw = student_draw(
        student, x, schedule, weighting, cfg.student_steps, grad=True, generator=generator
    )
    params = teacher_parameters(teacher_net)
    half = x.shape[0] // 2
    parts = (slice(0, half), slice(half, None))

    def take(t: Tensor | None, part: slice) -> Tensor | None:
        return None if t is None else t[part]

    grads = [
        teacher_loss_gradient(
            teacher_net,
            params,
            teacher_prediction,
            draw.x_tilde[p],
            draw.z_s[p],
            draw.logsnr_s[p],
            draw.weight[p],
            take(labels, p),
        )
        for p in parts
    ]
    values, surrogates = [], []
    for p, other in zip(parts, reversed(grads)):
        direction = precondition(other, preconditioner)
        x_teacher, delta = teacher_output_jvp(
            teacher_net,
            params,
            teacher_prediction,
            draw.z_s[p],
            draw.logsnr_s[p],
            direction,
            take(labels, p),
        )
        x_tilde = draw.x_tilde[p]
        wx = x_space_weight(draw.weight[p], draw.logsnr_s[p], x_tilde)
        residual = x_tilde - x_teacher.detach()
        s = -(2.0 * wx * residual * delta.detach()).flatten(1).mean(1)
        values.append(0.5 * s)
        surrogates.append(s)
    return value_with_gradient(torch.cat(values), torch.cat(surrogates))


@torch.no_grad()
def teacher_gradient_second_moment(
    teacher_net: nn.Module,
    teacher_prediction: str,
    batches: Iterable[tuple[Tensor, Tensor | None]],
    schedule: Schedule,
    weighting: Weighting,
    *,
    generator: torch.Generator | None = None,
) -> Params:
    """Adam's second moment at the teacher: the mean over data minibatches of the squared
    minibatch gradient of the teacher's loss (levels `s ~ U(0, 1)`, `z_s ~ q(z_s | x)`)."""
    params = teacher_parameters(teacher_net)
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    count = 0
    for x, labels in batches:
        s = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float64)
        l_s = schedule.logsnr(s).to(x.dtype)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        weight = weighting(l_s, -schedule.dlogsnr_dt(s).to(x.dtype))
        grads = teacher_loss_gradient(
            teacher_net, params, teacher_prediction, x, diffuse(x, eps, l_s), l_s, weight, labels
        )
        for k, g in grads.items():
            total[k] += g.pow(2)
        count += 1
    if count == 0:
        raise ValueError("the preconditioner needs at least one data batch")
    return {k: v / count for k, v in total.items()}


def adam_preconditioner(second_moment: Params, eps: float = 1e-8) -> Params:
    """Adam's diagonal preconditioner `1 / (sqrt(v) + eps)`."""
    return {k: 1.0 / (v.sqrt() + eps) for k, v in second_moment.items()}


# --------------------------------------------------------------------------- the Trainer's loss


def mmd_loss_fn(
    cfg: MMDConfig,
    schedule: Schedule,
    weighting: Weighting,
    make_student: Callable[[nn.Module, Tensor | None], Denoise],
    *,
    make_teacher: Callable[..., Denoise] | None = None,
    make_auxiliary: Callable[[nn.Module, Tensor | None], Denoise] | None = None,
    teacher_net: nn.Module | None = None,
    teacher_prediction: str | None = None,
    preconditioner: Params | None = None,
    step_fn: Callable[[], int] = lambda: 0,
):
    """`loss_fn(models, batch, generator)` for `difflab.train.Trainer`.

    Alternating: the student is `models["net"]`, the auxiliary `models["aux"]` (both wrapped by
    `make_student` / `make_auxiliary(module, labels)`), the teacher `make_teacher(labels=...)`;
    `step_fn()` (the trainer's step) picks the update, so a resumed run alternates in phase.
    Parameter space: `teacher_net` at its current parameters with `teacher_prediction`."""
    if cfg.variant == "alternating" and (make_teacher is None or make_auxiliary is None):
        raise ValueError("alternating MMD needs make_teacher and make_auxiliary")
    if cfg.variant == "param" and (teacher_net is None or teacher_prediction is None):
        raise ValueError("parameter-space MMD needs teacher_net and teacher_prediction")

    def loss_fn(models: Mapping[str, nn.Module], batch, generator: torch.Generator) -> Tensor:
        x, labels = batch
        cond = {} if labels is None else {"labels": labels}
        student = make_student(models["net"], labels)
        if cfg.variant == "param":
            return mmd_parameter_loss(
                student, teacher_net, teacher_prediction, x, schedule, weighting, cfg,
                preconditioner=preconditioner, labels=labels, generator=generator,
            )  # fmt: skip
        return mmd_alternating_loss(
            student,
            make_auxiliary(models["aux"], labels),
            make_teacher(**cond),
            x,
            schedule,
            weighting,
            cfg,
            update=alternating_update(step_fn(), cfg.aux_steps),
            generator=generator,
        )

    return loss_fn
