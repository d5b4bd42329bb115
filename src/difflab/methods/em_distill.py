"""EM Distillation (Xie et al. 2024): a one-step generator `x = g(z)`, in logsnr notation.

The generator is the teacher's architecture evaluated at one fixed level `l*`: `g(z) =
x_hat_eta(z, l*)` for `z ~ N(0, I)` (so its one-step sampler is DDIM on the grid `[l*, +inf]`).
Its noised marginal is `p_g(x_t) = E_z N(x_t; a_t g(z), s_t^2 I)`; EM raises the teacher's
expected log-likelihood of it. Reparametrised over `(eps, z)` with `x_t = a g(z) + s eps`, the
E-step's target `pi(eps, z) ~ p(x_t) / p_g(x_t) N(eps) N(z)` has the scores
(docs/methods/em_distill.md, eqs. E1-E2)

    d/d eps log pi = (a / s) delta - eps,        d/dz log pi = e^l J_g^T delta - z,
    delta = x_hat_teacher(x_t) - x_hat_student(x_t),

`x_hat_student` the student score network (an auxiliary denoiser fitted to the generator's samples
by denoising score matching). K Langevin steps (step `h_eps` for eps, `h_z s_t^2` for z) move the
generator's own draws towards `pi`; the injected noise `eta` (the part of `eps_K` linear in
`eps_0` and the Langevin noises) is cancelled; the M-step regresses `g(z_K)` towards
`g(z_K) + Delta`,

    Delta = delta_K + (1 - h_eps) (s / (a h_eps)) (eps_K - eta_K)           (eq. M2),

weighted by `w(l) = w_eps(l) e^l` (the teacher's training weighting in x-space). At K = 0,
`Delta = delta_0`: the update is exactly VSD / Diff-Instruct. The student score network is the
trainable extra module `aux` and alternates with the generator as in alternating moment matching.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..diffusion.losses import Weighting, weighted_x_loss
from ..diffusion.parameterization import Denoise, alpha_sigma, broadcast_logsnr, diffuse
from ..diffusion.schedules import Schedule
from ..sampling import sample_ddim
from .moment_matching import alternating_update, value_with_gradient, x_space_weight

Variable = Literal["eps_z", "x_z", "eps"]
Generator = Callable[[Tensor], Tensor]  # z -> x = g(z)


@dataclass(frozen=True)
class EMDConfig:
    """EM distillation of a one-step generator (`student_steps` is always 1).

    `mcmc_steps`: K Langevin steps of the E-step (0: VSD / Diff-Instruct).
    `step_eps`, `step_z`: Langevin step sizes of `eps` and of `z` (the latter times `s_t^2`).
    `variant`: the sampling variable, `"eps_z"` (the paper's reparametrised chain), `"x_z"`
    (`x_t` held fixed while `z` moves) or `"eps"` (`z` frozen; equal to `"x"`).
    `noise_cancel`: drop the injected noise from the M-step residual.
    `logsnr_star`: the level at which the generator reads `z`. `t_min`, `t_max`: training levels
    `t ~ U(t_min, t_max)` on the teacher's schedule. `aux_steps`: student-score updates per
    generator update.
    """

    student_steps: int = 1
    variant: Variable = "eps_z"
    mcmc_steps: int = 4
    step_eps: float = 0.1
    step_z: float = 0.05
    noise_cancel: bool = True
    logsnr_star: float = 0.0
    t_min: float = 0.02
    t_max: float = 0.98
    aux_steps: int = 1

    def __post_init__(self) -> None:
        if self.student_steps != 1:
            raise ValueError(
                "EMD trains a one-step generator: student_steps must be 1, got "
                f"{self.student_steps}"
            )
        if self.variant not in ("eps_z", "x_z", "eps"):
            raise ValueError(f"EMD variant must be 'eps_z', 'x_z' or 'eps', got {self.variant!r}")
        if isinstance(self.mcmc_steps, bool) or not isinstance(self.mcmc_steps, int):
            raise ValueError(f"mcmc_steps must be an integer >= 0, got {self.mcmc_steps!r}")
        if self.mcmc_steps < 0:
            raise ValueError(f"mcmc_steps must be >= 0, got {self.mcmc_steps}")
        if not 0 < self.step_eps < 1:
            raise ValueError(f"step_eps must be in (0, 1), got {self.step_eps}")
        if not self.step_z > 0:
            raise ValueError(f"step_z must be > 0, got {self.step_z}")
        if not math.isfinite(self.logsnr_star):
            raise ValueError(f"logsnr_star must be finite, got {self.logsnr_star}")
        if not 0 <= self.t_min < self.t_max <= 1:
            raise ValueError(
                f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}"
            )
        if self.aux_steps < 1:
            raise ValueError(f"aux_steps must be >= 1, got {self.aux_steps}")


def check_schedule(schedule) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise ValueError(
            f"EMD needs the teacher's noise schedule (got {type(schedule).__name__}): it places "
            "the levels of the E-step and the weighting"
        )
    return schedule


# --------------------------------------------------------------------------- the generator


def emd_grid(logsnr_star: float) -> Tensor:
    """The one-step grid `[l*, +inf]`: DDIM on it returns `x_hat(z, l*) = g(z)`."""
    return torch.tensor([logsnr_star, math.inf], dtype=torch.float64)


def one_step_generator(student: Denoise, logsnr_star: float) -> Generator:
    """`g(z) = student(z, l*)`: the student's denoiser reading `z` as a sample at level `l*`."""

    def g(z: Tensor) -> Tensor:
        return student(z, torch.full((z.shape[0],), logsnr_star, dtype=z.dtype, device=z.device))

    return g


def sample_emd(student: Denoise, z: Tensor, logsnr_star: float) -> Tensor:
    """The student's sampler: one DDIM step from `l*` to data. NFE = 1."""
    return sample_ddim(student, z, emd_grid(logsnr_star))


# --------------------------------------------------------------------------- the E-step


def training_draws(
    x: Tensor, schedule: Schedule, weighting: Weighting, cfg: EMDConfig, generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`(l, w(l), eps, z)` for a batch shaped like `x`: `t ~ U(t_min, t_max)` on `schedule`,
    `l = l(t)`, the weighting `w(l, -dl/dt)`, then `eps, z ~ N(0, I)` (drawn in this order)."""
    check_schedule(schedule)
    lo, hi = cfg.t_min, cfg.t_max
    u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float64)
    t = lo + (hi - lo) * u
    level = schedule.logsnr(t).to(x.dtype)
    weight = weighting(level, -schedule.dlogsnr_dt(t).to(x.dtype))
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return level, weight, eps, z


@dataclass
class Chain:
    """The end of the E-step: `eps_K`, `z_K`, `g(z_K)` (no gradient), `delta_K` at
    `x_t = a g(z_K) + s eps_K`, and the injected noise `eta_K` carried in `eps_K`."""

    eps: Tensor
    z: Tensor
    x: Tensor
    delta: Tensor
    noise: Tensor


def vjp(g: Generator, z: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """`(g(z), J_g(z)^T u)` without gradient to the generator's parameters."""
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        x = g(leaf)
        (jtu,) = torch.autograd.grad(x, leaf, u.to(x.dtype))
    return x.detach(), jtu


def langevin_e_step(
    g: Generator,
    teacher: Denoise,
    student_score: Denoise,
    eps: Tensor,
    z: Tensor,
    logsnr: Tensor,
    cfg: EMDConfig,
    *,
    generator: torch.Generator | None = None,
) -> Chain:
    """K Langevin steps on `pi(eps, z)` (module docstring), all variables updated at once from
    the gradients at the current state. `"x_z"`: `x_t` moves by the eps-step only and `z` by
    `(a/s) J^T eps - z` (the likelihood term); `eps` is then re-read as `(x_t - a g(z))/s`.
    Draws from `generator`, per step: the eps noise, then the z noise."""
    level = broadcast_logsnr(logsnr, eps)
    alpha, sigma = alpha_sigma(level)
    h_eps = cfg.step_eps
    h_z = cfg.step_z * sigma**2
    move_z = cfg.variant != "eps" and cfg.mcmc_steps > 0
    eps, z, noise = eps.detach(), z.detach(), eps.detach()
    with torch.no_grad():
        x = g(z)
    for _ in range(cfg.mcmc_steps):
        with torch.no_grad():
            x_t = alpha * x + sigma * eps
            delta = teacher(x_t, logsnr) - student_score(x_t, logsnr)
        n_eps = torch.randn(eps.shape, generator=generator, device=eps.device, dtype=eps.dtype)
        eps_new = eps + h_eps * ((alpha / sigma) * delta - eps) + math.sqrt(2 * h_eps) * n_eps
        noise = (1 - h_eps) * noise + math.sqrt(2 * h_eps) * n_eps
        if move_z:
            # h_z times the likelihood/score part of d/dz log pi, pushed through J_g^T
            u = h_z * (torch.exp(level) * delta if cfg.variant == "eps_z" else alpha / sigma * eps)
            _, jtu = vjp(g, z, u)
            n_z = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            z = z + jtu - h_z * z + (2 * h_z).sqrt() * n_z
            with torch.no_grad():
                x_new = g(z)
            if cfg.variant == "x_z":  # x_t fixed while z moves
                eps_new = eps_new - (alpha / sigma) * (x_new - x)
            x = x_new
        eps = eps_new
    with torch.no_grad():
        x_t = alpha * x + sigma * eps
        delta = teacher(x_t, logsnr) - student_score(x_t, logsnr)
    return Chain(eps, z, x, delta, noise)


def m_step_residual(chain: Chain, logsnr: Tensor, cfg: EMDConfig) -> Tensor:
    """`Delta = delta_K + (1 - h) (s / (a h)) (eps_K - eta_K)` (eta dropped without noise
    cancellation): the x-space displacement, per unit step, of the conditional mean of one more
    eps step of the chain (docs, eq. M2). At K = 0 with cancellation, `Delta = delta_0`."""
    alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, chain.eps))
    h = cfg.step_eps
    carried = chain.eps - chain.noise if cfg.noise_cancel else chain.eps
    return chain.delta + (1 - h) * sigma / (alpha * h) * carried


# --------------------------------------------------------------------------- the two updates


def emd_loss(
    student: Denoise,
    student_score: Denoise,
    teacher: Denoise,
    x: Tensor,
    schedule: Schedule,
    weighting: Weighting,
    cfg: EMDConfig,
    *,
    update: Literal["generator", "score"] = "generator",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-example loss of one update (`x` gives only the batch shape); the value is the
    mismatch `w e^l ||x_hat_phi - x_hat_teacher||^2` in both cases.

    `update="generator"`: E-step from the generator's own draws, then the M-step surrogate
    `-w(l) e^l Delta . g(z_K)` (mean over dims; its gradient regresses `g` towards `g + Delta`);
    the mismatch is taken at the end of the chain. `update="score"`: denoising score matching of
    the student score network on generator samples, `w(l) e^l ||sg g(z) - x_hat_phi(a g(z) + s
    eps)||^2`. Draws: levels, eps, z (then the chain's noises)."""
    if update not in ("generator", "score"):
        raise ValueError(f"update must be 'generator' or 'score', got {update!r}")
    level, weight, eps, z = training_draws(x, schedule, weighting, cfg, generator)
    g = one_step_generator(student, cfg.logsnr_star)
    if update == "generator":
        chain = langevin_e_step(g, teacher, student_score, eps, z, level, cfg, generator=generator)
        delta_x = m_step_residual(chain, level, cfg)
        x_gen = g(chain.z)
        wx = x_space_weight(weight, level, x_gen)
        surrogate = -(wx * delta_x.detach() * x_gen).flatten(1).mean(1)
        mismatch = weighted_x_loss(chain.delta, torch.zeros_like(chain.delta), level, weight)
        return value_with_gradient(mismatch, surrogate)
    with torch.no_grad():
        x_gen = g(z)
        x_t = diffuse(x_gen, eps, level)
        x_teacher = teacher(x_t, level)
    x_phi = student_score(x_t, level)
    mismatch = weighted_x_loss(x_phi.detach(), x_teacher, level, weight)
    return value_with_gradient(mismatch, weighted_x_loss(x_gen, x_phi, level, weight))


def emd_loss_fn(
    cfg: EMDConfig,
    schedule: Schedule,
    weighting: Weighting,
    make_student: Callable[[nn.Module, Tensor | None], Denoise],
    make_teacher: Callable[..., Denoise],
    step_fn: Callable[[], int] = lambda: 0,
):
    """`loss_fn(models, batch, generator)` for `difflab.train.Trainer`: the generator is
    `models["net"]`, the student score network `models["aux"]` (both through `make_student`),
    the teacher `make_teacher(labels=...)`. Updates alternate as in alternating MMD
    (`alternating_update(step_fn(), cfg.aux_steps)`: the score network first)."""
    check_schedule(schedule)

    def loss_fn(models: Mapping[str, nn.Module], batch, generator: torch.Generator) -> Tensor:
        x, labels = batch
        cond = {} if labels is None else {"labels": labels}
        update = alternating_update(step_fn(), cfg.aux_steps)
        return emd_loss(
            make_student(models["net"], labels),
            make_student(models["aux"], labels),
            make_teacher(**cond),
            x,
            schedule,
            weighting,
            cfg,
            update="generator" if update == "generator" else "score",
            generator=generator,
        )

    return loss_fn
