"""Discrete Moment Matching distillation (D-MMD, 2026) in logsnr notation.

The discrete counterpart of `moment_matching.py` (read that first): a `k`-step student samples
masked or uniform diffusion ancestrally. From `z_t` its generator predicts `p = x~(z_t)` (per
position, `[..., V]`), draws a hard `x ~ Cat(p)` and then `z_s ~ q(z_s | z_t, x)`, the discrete
posterior (`difflab.discrete.posterior`); the last step, at `l_s = +inf`, returns `x`. This is
exactly `difflab.discrete.sample_masked` / `sample_uniform` with the generator as denoiser
(`sample_dmmd`). Levels are `alpha = sigmoid(l)`: the probability that a token is untouched.

The student is right when the conditional moments match along its own trajectory,
`E_g[x | z_s] = x_hat_teacher(z_s)` for `s ~ U(0, 1)`, `t = min(1, s + U(0, 1/k))`,
`z_t ~ q(z_t | x)` from data (`moment_matching.mmd_times`). For one-hot `x` the first moment is
the whole conditional distribution of each token, so this is the condition that the student's
per-position posteriors equal the teacher's. An auxiliary denoiser `phi` (initialised from the
teacher) estimates `E_g[x | z_s]` from the student's samples; updates alternate:

    auxiliary:  L_phi = -sum_c (y + c x_hat_teacher(z_s))_c log x_hat_phi(z_s)_c
    generator:  L_g   = -sum_c p_c sg[log x_hat_teacher(z_s) - log x_hat_phi(z_s)]_c

summed over the positions `z_s` leaves free (masked: the masked positions; uniform: all) and
averaged over the sequence. The target `y` is the hard sample `x`, or a Rao-Blackwellised
stand-in with the same conditional mean `E[y | z_s] = E_g[x | z_s]`: for masked diffusion the
soft `p`, for both processes the posterior `p(x | z_t, z_s)` of the draw given the step it
caused (`difflab.discrete.step_x_posterior`; equal to `p` where a masked `z_s` is free). With
the posterior target the generator's `p` in `L_g` is replaced by the same posterior (with
gradient), whose conditional mean is the moment being matched (`p`'s is not, for uniform
diffusion; docs/methods/discrete_mmd.md). `L_phi` is minimal at
`x_hat_phi = (E_g[y | z_s] + c x_hat_teacher) / (1 + c)`, so `log x_hat_teacher - log x_hat_phi`
vanishes exactly when the moments match, and with it the generator's gradient. With squared
error in place of cross-entropy both losses are those of continuous moment matching.

Options the paper adds (all on `DMMDConfig`): an **extra Gaussian noise input** to a masked
student (`noise_dim`; a learned projection added to the residual stream, so one step can draw
correlated tokens: without it the tokens revealed in one step are independent given `z_t`), a
teacher **temperature**, and **top-p by a logit offset** (tokens outside the teacher's nucleus are
lowered by `top_p_offset`, not removed; `difflab.discrete.adjust_probs`). The value each loss
reports is the moment mismatch (the Jeffreys divergence between auxiliary and teacher, mean over
positions), the same curve on both kinds of steps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TrainConfig, config_from_dict, config_to_dict
from ..diffusion.schedules import Schedule
from ..discrete import (
    DiscreteOracle,
    adjust_probs,
    all_sequences,
    check_tokens,
    corrupt,
    denoiser_from_logits,
    discrete_grid,
    marginal_masked,
    marginal_uniform,
    posterior,
    sample_categorical,
    sample_masked,
    sample_posterior,
    sample_uniform,
    step_x_posterior,
)
from ..discrete.processes import check_process
from .consistency import check_student_steps
from .discrete_diffusion import discrete_parts
from .moment_matching import alternating_update, mmd_times, value_with_gradient

DiscreteDenoise = Callable[[Tensor, Tensor], Tensor]
Target = Literal["auto", "soft", "hard", "posterior"]
LOG_FLOOR = 1e-30
"""Probabilities are floored here before the logarithm (a SUBS row is exactly one-hot)."""
DEFAULT_NOISE_DIM = {"masked": 16, "uniform": 0}


@dataclass(frozen=True)
class DMMDConfig:
    """D-MMD with a `student_steps`-step ancestral student (module docstring).

    `target`: `"soft"` (the generator's `p`; masked diffusion only), `"hard"` (the sampled `x`,
    the paper's choice for uniform diffusion), `"posterior"` (`p(x | z_t, z_s)`, also in `L_g`)
    or `"auto"` (soft for masked, posterior for uniform; the two agree for masked).
    `noise_dim`: width of the student's extra Gaussian noise input (`None`: 16 for masked, 0 for
    uniform). `aux_teacher_weight` `c` and `aux_steps` as in moment matching. `temperature`,
    `top_p`, `top_p_offset` act on the teacher's predictions (its logits divided by the
    temperature; tokens outside the nucleus lowered by the offset)."""

    student_steps: int = 8
    variant: Literal["alternating"] = "alternating"
    target: Target = "auto"
    noise_dim: int | None = None
    aux_teacher_weight: float = 1.0
    aux_steps: int = 1
    temperature: float = 1.0
    top_p: float | None = None
    top_p_offset: float = 2.0

    def __post_init__(self) -> None:
        check_student_steps(self.student_steps)
        if self.variant != "alternating":
            raise ValueError(f"D-MMD variant must be 'alternating', got {self.variant!r}")
        if self.target not in ("auto", "soft", "hard", "posterior"):
            raise ValueError(
                f"target must be 'auto', 'soft', 'hard' or 'posterior', got {self.target!r}"
            )
        if self.noise_dim is not None and (
            isinstance(self.noise_dim, bool) or not isinstance(self.noise_dim, int)
            or self.noise_dim < 0
        ):  # fmt: skip
            raise ValueError(f"noise_dim must be an integer >= 0 or None, got {self.noise_dim!r}")
        if self.aux_teacher_weight < 0:
            raise ValueError(f"aux_teacher_weight must be >= 0, got {self.aux_teacher_weight}")
        if self.aux_steps < 1:
            raise ValueError(f"aux_steps must be >= 1, got {self.aux_steps}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")
        if not self.top_p_offset >= 0:
            raise ValueError(f"top_p_offset must be >= 0, got {self.top_p_offset}")


def resolve_target(cfg: DMMDConfig, process: str) -> Literal["soft", "hard", "posterior"]:
    """The target `y` of the auxiliary loss: `"auto"` is soft for masked, posterior for uniform
    (decided on the exact oracle: hard targets leave the 8-step uniform student worse than its
    teacher; docs/methods/discrete_mmd.md)."""
    if check_process(process) == "uniform" and cfg.target == "soft":
        raise ValueError(
            "target='soft' is only valid for masked diffusion: a uniform z_s depends on the very "
            "token it noises, so E[p | z_s] is not E[x | z_s]; use target='posterior' (or 'hard', "
            "'auto')"
        )
    if cfg.target == "auto":
        return "soft" if process == "masked" else "posterior"
    return cfg.target


def resolve_noise_dim(cfg: DMMDConfig, process: str) -> int:
    """The student's extra noise width: `cfg.noise_dim`, or the process's default."""
    if cfg.noise_dim is None:
        return DEFAULT_NOISE_DIM[check_process(process)]
    return cfg.noise_dim


# --------------------------------------------------------------------------- sampling


def dmmd_grid(schedule: Schedule, student_steps: int) -> Tensor:
    """The student's levels: uniform in `t` from 1 to 0 on `schedule`, then `+inf`."""
    return discrete_grid(check_student_steps(student_steps), schedule)


def sample_dmmd(
    student: DiscreteDenoise,
    z: Tensor,
    student_steps: int,
    schedule: Schedule,
    process: str,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The student's ancestral sampler (`x ~ Cat(x~(z_t))`, `z_s ~ q(z_s | z_t, x)`). NFE = steps.
    For masked diffusion drawing `x` and then the posterior is the same as the posterior of the
    mixture, so this is `sample_masked` / `sample_uniform` on `dmmd_grid`."""
    sampler = sample_masked if check_process(process) == "masked" else sample_uniform
    return sampler(student, z, dmmd_grid(schedule, student_steps), generator=generator)


# --------------------------------------------------------------------------- generators


def net_denoiser(
    net: nn.Module,
    process: str,
    vocab_size: int,
    *,
    noise_dim: int = 0,
    generator: torch.Generator | None = None,
) -> DiscreteDenoise:
    """A token net `net(z, logsnr[, noise]) -> logits` as a discrete denoiser (softmax; masked:
    unmasked tokens carried over). With `noise_dim > 0` every call draws a fresh Gaussian noise
    input `[B, L, noise_dim]` (`L` = tokens per example) from `generator`."""

    def logits(z: Tensor, logsnr: Tensor) -> Tensor:
        if noise_dim == 0:
            return net(z, logsnr)
        shape = (z.shape[0], math.prod(z.shape[1:]), noise_dim)
        noise = torch.randn(shape, generator=generator, device=z.device)
        return net(z, logsnr, noise=noise)

    return denoiser_from_logits(logits, vocab_size, check_process(process))


class OracleGenerator(nn.Module):
    """A student for the exact oracle: the oracle's log-probabilities plus a learned correction,

        logits(z, l, u) = log p_oracle(x_i | z) + f(onehot(z), tanh(l / 10), u),

    `f` an MLP whose last layer starts at zero, so the generator starts as the teacher (as a
    student initialised from a network teacher does). `u ~ N(0, I)` of width `extra_noise_dim`
    is the extra noise input; with it one step can draw correlated tokens."""

    def __init__(
        self, oracle: DiscreteOracle, process: str, extra_noise_dim: int = 0, hidden: int = 256
    ):
        super().__init__()
        self.oracle, self.process = oracle, check_process(process)
        self.extra_noise_dim = int(extra_noise_dim)
        states = oracle.vocab_size + (1 if process == "masked" else 0)
        width = oracle.length * (states + self.extra_noise_dim) + 1
        out = nn.Linear(hidden, oracle.length * oracle.vocab_size)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.correction = nn.Sequential(
            nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), out
        )

    def forward(self, z: Tensor, logsnr: Tensor, noise: Tensor | None = None) -> Tensor:
        oracle = self.oracle
        base = oracle.denoiser(self.process)(z, logsnr).clamp_min(LOG_FLOOR).log().float()
        states = oracle.vocab_size + (1 if self.process == "masked" else 0)
        level = torch.as_tensor(logsnr, dtype=torch.float32, device=z.device)
        level = torch.tanh(level.expand(z.shape[0]) / 10.0)[:, None]
        parts = [F.one_hot(z, states).float().flatten(1), level]
        if self.extra_noise_dim:
            if noise is None:
                noise = torch.randn(z.shape[0], oracle.length, self.extra_noise_dim)
            parts.append(noise.to(z.device, torch.float32).flatten(1))
        delta = self.correction(torch.cat(parts, dim=1))
        return base + delta.view(*z.shape, oracle.vocab_size)


# --------------------------------------------------------------------------- the losses


def free_positions(z_s: Tensor, process: str, vocab_size: int) -> Tensor:
    """Where the moments are compared, as a float mask shaped like `z_s`: the masked positions
    (masked diffusion: elsewhere every denoiser copies the token) or all (uniform)."""
    if check_process(process) == "masked":
        return (z_s == vocab_size).float()
    return torch.ones_like(z_s, dtype=torch.float32)


def floored_log(probs: Tensor) -> Tensor:
    return probs.clamp_min(LOG_FLOOR).log()


def _position_mean(per_position: Tensor, free: Tensor) -> Tensor:
    """`[B, ...]` per position -> `[B]`: zero outside `free`, mean over all positions."""
    return (per_position * free).flatten(1).mean(1)


def moment_mismatch(teacher_probs: Tensor, aux_probs: Tensor, free: Tensor) -> Tensor:
    """The Jeffreys divergence `sum_c (phi - T)_c (log phi - log T)_c` per free position,
    averaged over positions, `[B]`: zero iff the auxiliary equals the teacher there."""
    diff = (aux_probs - teacher_probs) * (floored_log(aux_probs) - floored_log(teacher_probs))
    return _position_mean(diff.sum(-1).float(), free)


def dmmd_generator_loss(
    gen_probs: Tensor, teacher_probs: Tensor, aux_probs: Tensor, free: Tensor
) -> Tensor:
    """`-sum_c p_c sg[log T - log phi]_c` per free position, mean over positions, `[B]`; the
    gradient reaches the generator through `p = gen_probs` only."""
    residual = (floored_log(teacher_probs) - floored_log(aux_probs)).detach()
    return _position_mean(-(gen_probs * residual.to(gen_probs.dtype)).sum(-1).float(), free)


def dmmd_auxiliary_loss(
    target: Tensor, teacher_probs: Tensor, aux_probs: Tensor, free: Tensor, teacher_weight: float
) -> Tensor:
    """`-sum_c (y + c T)_c log phi_c` per free position, mean over positions, `[B]`, for the
    auxiliary only (`y`, `T` are detached). Minimal at `phi = (E[y | z_s] + c T) / (1 + c)`."""
    mix = target.detach() + teacher_weight * teacher_probs.detach()
    return _position_mean(-(mix.to(aux_probs.dtype) * floored_log(aux_probs)).sum(-1).float(), free)


@dataclass
class DiscreteDraw:
    """One pass of the student over a data batch: levels, `z_t`, the generator's `p` (with
    gradient when asked), the hard draw `x`, `z_s ~ q(z_s | z_t, x)`, the auxiliary target `y`
    and `moment`, the generator's differentiable stand-in for `x` in `L_g`: `p`, or for
    `target="posterior"` the posterior `p(x | z_t, z_s)` (`difflab.discrete.step_x_posterior`)."""

    logsnr_t: Tensor
    logsnr_s: Tensor
    z_t: Tensor
    probs: Tensor
    x: Tensor
    z_s: Tensor
    target: Tensor
    moment: Tensor


def student_transition(
    student: DiscreteDenoise,
    x: Tensor,
    process: str,
    vocab_size: int,
    logsnr_t: Tensor,
    logsnr_s: Tensor,
    *,
    grad: bool,
    target: str = "hard",
    generator: torch.Generator | None = None,
) -> DiscreteDraw:
    """At given levels (`[B]`, float64): `z_t ~ q(z_t | x)`, `p = x~(z_t)`, `x ~ Cat(p)` (float64),
    `z_s ~ q(z_s | z_t, x)`; nothing after `p` carries a gradient. Draws from `generator` in
    order: `z_t`, the student's own noise, `x`, `z_s`. The arguments are checked here, once (three
    host reads: the tokens, the levels, the student's `p`); the steps inside do not re-check."""
    if target not in ("soft", "hard", "posterior"):
        raise ValueError(f"target must be 'soft', 'hard' or 'posterior', got {target!r}")
    x = check_tokens(x, vocab_size)
    if not bool((logsnr_s >= logsnr_t).all()):  # NaN fails too
        raise ValueError("logsnr_s must be >= logsnr_t everywhere and not NaN")
    z_t = corrupt(process, x, logsnr_t, vocab_size, generator=generator, check=False)
    dtype = torch.get_default_dtype()
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        probs = student(z_t, logsnr_t.to(dtype))
    if tuple(probs.shape) != (*x.shape, vocab_size):
        raise ValueError(
            f"the student returned probs of shape {list(probs.shape)}, expected "
            f"x.shape + (V,) = {[*x.shape, vocab_size]}"
        )
    x_gen = sample_categorical(probs.detach(), generator=generator)  # checks p: one host read
    hard = F.one_hot(x_gen, vocab_size).to(probs.dtype)
    z_s = sample_posterior(process, z_t, hard, logsnr_t, logsnr_s, generator=generator, check=False)
    if target == "posterior":
        moment = step_x_posterior(process, z_t, z_s, probs, logsnr_t, logsnr_s, check=False)
        y = moment.detach()
    else:
        moment, y = probs, (probs.detach() if target == "soft" else hard)
    return DiscreteDraw(logsnr_t.to(dtype), logsnr_s.to(dtype), z_t, probs, x_gen, z_s, y, moment)


def discrete_student_draw(
    student: DiscreteDenoise,
    x: Tensor,
    process: str,
    vocab_size: int,
    schedule: Schedule,
    student_steps: int,
    *,
    grad: bool,
    target: str = "hard",
    generator: torch.Generator | None = None,
) -> DiscreteDraw:
    """Levels `t, s` (`mmd_times`: `s ~ U(0, 1)`, `t = min(1, s + U(0, 1/k))`), then
    `student_transition`. Draws the times from `generator` first."""
    t, s = mmd_times(x.shape[0], student_steps, generator=generator, device=x.device)
    return student_transition(
        student, x, process, vocab_size, schedule.logsnr(t), schedule.logsnr(s),
        grad=grad, target=target, generator=generator,
    )  # fmt: skip


def teacher_targets(probs: Tensor, cfg: DMMDConfig) -> Tensor:
    """The teacher's predictions with the configured temperature and top-p offset."""
    return adjust_probs(
        probs, temperature=cfg.temperature, top_p=cfg.top_p, top_p_offset=cfg.top_p_offset
    )


def dmmd_alternating_loss(
    student: DiscreteDenoise,
    auxiliary: DiscreteDenoise,
    teacher: DiscreteDenoise,
    x: Tensor,
    process: str,
    vocab_size: int,
    schedule: Schedule,
    cfg: DMMDConfig,
    *,
    update: Literal["generator", "auxiliary"],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-example loss of one alternating update (module docstring); its value is the moment
    mismatch `J(phi, T)` in both cases, its gradient that of `L_g` (generator only) or `L_phi`
    (auxiliary only)."""
    if update not in ("generator", "auxiliary"):
        raise ValueError(f"update must be 'generator' or 'auxiliary', got {update!r}")
    on_generator = update == "generator"
    draw = discrete_student_draw(
        student, x, process, vocab_size, schedule, cfg.student_steps,
        grad=on_generator, target=resolve_target(cfg, process), generator=generator,
    )  # fmt: skip
    with torch.no_grad():
        t_probs = teacher_targets(teacher(draw.z_s, draw.logsnr_s), cfg)
    with torch.set_grad_enabled(not on_generator and torch.is_grad_enabled()):
        a_probs = auxiliary(draw.z_s, draw.logsnr_s)
    free = free_positions(draw.z_s, process, vocab_size)
    mismatch = moment_mismatch(t_probs, a_probs.detach(), free)
    if on_generator:
        surrogate = dmmd_generator_loss(draw.moment, t_probs, a_probs, free)
    else:
        surrogate = dmmd_auxiliary_loss(draw.target, t_probs, a_probs, free, cfg.aux_teacher_weight)
    return value_with_gradient(mismatch, surrogate)


def dmmd_loss_fn(
    cfg: DMMDConfig,
    process: str,
    vocab_size: int,
    schedule: Schedule,
    teacher: DiscreteDenoise,
    make_student: Callable[[nn.Module, torch.Generator | None], DiscreteDenoise],
    step_fn: Callable[[], int] = lambda: 0,
):
    """`loss_fn(models, batch, generator)` for `difflab.train.Trainer`: the student is
    `models["net"]`, the auxiliary `models["aux"]`, both wrapped by `make_student(module,
    generator)`; `step_fn()` (the trainer's step) picks the update. A batch is a token tensor or a
    tuple whose first entry is one (labels are ignored)."""
    check_process(process)
    resolve_target(cfg, process)

    def loss_fn(models: Mapping[str, nn.Module], batch, generator: torch.Generator) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return dmmd_alternating_loss(
            make_student(models["net"], generator),
            make_student(models["aux"], None),
            teacher,
            x,
            process,
            vocab_size,
            schedule,
            cfg,
            update=alternating_update(step_fn(), cfg.aux_steps),
            generator=generator,
        )

    return loss_fn


# --------------------------------------------------------------------------- a plain loop


@dataclass
class DMMDFit:
    """The result of `fit_dmmd`: the trained generator and auxiliary and the loss history."""

    student: nn.Module
    auxiliary: nn.Module
    history: list[dict[str, float]]


def fit_dmmd(
    student: nn.Module,
    auxiliary: nn.Module,
    teacher: DiscreteDenoise,
    data: Callable[[int, torch.Generator], Tensor],
    process: str,
    vocab_size: int,
    schedule: Schedule,
    cfg: DMMDConfig,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 0,
    callback: Callable[[int, nn.Module], None] | None = None,
) -> DMMDFit:
    """D-MMD without the Trainer (the oracle studies and tests): `steps` generator updates, each
    after `cfg.aux_steps` auxiliary updates, Adam with the moment matching paper's
    `betas = (0, 0.99)`, one optimizer per network. `data(n, generator)` draws a batch of tokens.
    `student` and `auxiliary` are token nets `net(z, logsnr[, noise]) -> logits` (the student
    gets a noise input when its `extra_noise_dim > 0`)."""
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    noise_dim = int(getattr(student, "extra_noise_dim", 0))
    opts = {
        name: torch.optim.Adam(net.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-12)
        for name, net in (("generator", student), ("auxiliary", auxiliary))
    }
    history: list[dict[str, float]] = []
    per_cycle = cfg.aux_steps + 1
    for i in range(steps * per_cycle):
        update = alternating_update(i, cfg.aux_steps)
        x = data(batch_size, gen)
        loss = dmmd_alternating_loss(
            net_denoiser(student, process, vocab_size, noise_dim=noise_dim, generator=gen),
            net_denoiser(auxiliary, process, vocab_size),
            teacher, x, process, vocab_size, schedule, cfg, update=update, generator=gen,
        ).mean()  # fmt: skip
        opt = opts[update]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if update == "generator":
            step = i // per_cycle + 1
            if log_every and (step % log_every == 0 or step == steps):
                history.append({"step": step, "mismatch": float(loss.detach())})
            if callback is not None:
                callback(step, student)
    return DMMDFit(student, auxiliary, history)


def oracle_data(oracle: DiscreteOracle) -> Callable[[int, torch.Generator], Tensor]:
    """`data(n, generator)`: exact draws from the oracle's joint."""
    return lambda n, generator: oracle.sample(n, generator=generator)


# --------------------------------------------------------------------------- exact moments


@dataclass
class ExactMoments:
    """The law of `z_s` on one pair of levels and the student's moments there (by enumeration):
    reachable `states [S, L]`, `p(z_s) [S]`, `hard = E_g[x | z_s]`, `soft = E_g[p | z_s]` (when
    the generator's `p` was given) and the teacher `T(z_s)`, each `[S, L, V]`; the reachable
    `z_t [N, L]` and the joint `weight = p(z_t, x, z_s) [N, V ** L, S]`."""

    states: Tensor
    prob: Tensor
    hard: Tensor
    soft: Tensor | None
    teacher: Tensor
    z_t: Tensor
    weight: Tensor

    def auxiliary_optimum(self, teacher_weight: float = 0.0, soft: bool = False) -> Tensor:
        """The minimiser `(E_g[y | z_s] + c T) / (1 + c)` of `L_phi` at every state."""
        mean = self.soft if soft else self.hard
        if mean is None:
            raise ValueError("soft moments need the generator's probabilities (probs=...)")
        return (mean + teacher_weight * self.teacher) / (1.0 + teacher_weight)


def _state_likelihood(rows: Tensor, states: Tensor) -> Tensor:
    """`prod_i rows[n, i, states[s, i]]` for every row `n` and state `s`: `[N, S]`."""
    length = states.shape[1]
    return rows[:, torch.arange(length)[None, :], states].prod(-1)


def exact_student_moments(
    oracle: DiscreteOracle,
    process: str,
    logsnr_t: float,
    logsnr_s: float,
    joint: Callable[[Tensor, Tensor], Tensor],
    probs: DiscreteDenoise | None = None,
) -> ExactMoments:
    """Enumerate `z_t ~ q(z_t | x_data)`, the student's hard draw `x` with joint law
    `joint(z_t, l_t) -> [N, V ** L]` and `z_s ~ q(z_s | z_t, x)`; `probs(z_t, l_t)` is the
    generator's `p` (the soft target) when given. Exact up to float64 rounding."""
    check_process(process)
    vocab, length = oracle.vocab_size, oracle.length
    states = all_sequences(length, vocab + 1 if process == "masked" else vocab)
    onehot = F.one_hot(oracle.sequences, vocab).double()  # [K, L, V]
    forward = marginal_masked if process == "masked" else marginal_uniform
    p_zt = oracle.joint @ _state_likelihood(forward(onehot, logsnr_t), states)  # [S]
    z_t = states[p_zt > 0]
    n, k = len(z_t), len(onehot)
    level_t = torch.full((n,), float(logsnr_t), dtype=torch.float64)
    draw = joint(z_t, level_t).double()  # [n, K]
    # q(z_s | z_t, x) for every pair (z_t, x), factorised over positions
    pairs_z = z_t[:, None, :].expand(n, k, length).reshape(-1, length)
    pairs_x = onehot[None].expand(n, k, length, vocab).reshape(-1, length, vocab)
    q = posterior(process, pairs_z, pairs_x, logsnr_t, logsnr_s)
    q_zs = _state_likelihood(q, states).view(n, k, len(states))
    weight = p_zt[p_zt > 0][:, None, None] * draw[..., None] * q_zs  # p(z_t, x, z_s)
    p_zs = weight.sum((0, 1))
    reach = p_zs > 0
    hard = torch.einsum("nks,klv->slv", weight, onehot)[reach] / p_zs[reach][:, None, None]
    soft = None
    if probs is not None:
        p = probs(z_t, level_t.to(torch.get_default_dtype())).double()  # [n, L, V]
        soft = torch.einsum("ns,nlv->slv", weight.sum(1), p)[reach] / p_zs[reach][:, None, None]
    level_s = torch.full((int(reach.sum()),), float(logsnr_s))
    teacher = oracle.denoiser(process)(states[reach], level_s).double()
    return ExactMoments(states[reach], p_zs[reach], hard, soft, teacher, z_t, weight[..., reach])


def posterior_joint(oracle: DiscreteOracle, process: str) -> Callable[[Tensor, Tensor], Tensor]:
    """`(z_t, l_t) -> [N, V ** L]`: the data's exact joint posterior `p(x | z_t)`, the law a
    perfect generator draws from (one with an unrestricted noise input)."""
    forward = marginal_masked if check_process(process) == "masked" else marginal_uniform
    onehot = F.one_hot(oracle.sequences, oracle.vocab_size).double()

    def joint(z_t: Tensor, logsnr_t: Tensor) -> Tensor:
        rows = []
        for z, level in zip(z_t, logsnr_t):
            post = oracle.joint * _state_likelihood(forward(onehot, float(level)), z[None])[:, 0]
            rows.append(post / post.sum())
        return torch.stack(rows)

    return joint


def product_joint(oracle: DiscreteOracle, denoise: DiscreteDenoise) -> Callable:
    """`(z_t, l_t) -> [N, V ** L]`: independent per-position draws from `denoise` (a generator
    without a noise input, e.g. the teacher's own ancestral step)."""
    onehot = F.one_hot(oracle.sequences, oracle.vocab_size).double()

    def joint(z_t: Tensor, logsnr_t: Tensor) -> Tensor:
        probs = denoise(z_t, logsnr_t.to(torch.get_default_dtype())).double()  # [N, L, V]
        # prod_i probs[n, i, x_i] for every sequence x
        return torch.exp(torch.einsum("nlv,klv->nk", probs.clamp_min(1e-300).log(), onehot))

    return joint


# --------------------------------------------------------------------------- teachers and runs


@dataclass
class DiscreteTeacher:
    """A frozen discrete diffusion teacher: a token net `net(z, logsnr) -> logits`, its process,
    vocabulary size (without the mask) and training schedule (the student's steps are placed on
    it). `guidance` is always 0 (the run plumbing reads it from every teacher)."""

    net: nn.Module
    process: str
    vocab_size: int
    schedule: Schedule
    guidance: float = 0.0

    def __post_init__(self) -> None:
        check_process(self.process)
        if not isinstance(self.schedule, Schedule):
            raise ValueError(
                f"the teacher's schedule must be a Schedule, got {type(self.schedule).__name__}"
            )
        if self.guidance:
            raise ValueError(f"guidance={self.guidance}: discrete teachers are unconditional")
        self.net.eval().requires_grad_(False)

    @property
    def denoise(self) -> DiscreteDenoise:
        return denoiser_from_logits(self.net, self.vocab_size, self.process)


def discrete_teacher_from_checkpoint(
    path: str | Path, *, guidance: float = 0.0, ema: float | bool = True, device: str = "cpu"
) -> tuple[DiscreteTeacher, TrainConfig]:
    """The teacher of a checkpoint, run directory or exported model trained by `difflab train`
    with `masked_diffusion` or `uniform_diffusion`, and its `TrainConfig`."""
    from ..train import load_model

    if guidance:
        raise ValueError(f"--guidance {guidance}: discrete teachers are unconditional")
    net, cfg = load_model(path, ema=ema, device=device)
    parts = discrete_parts(cfg)
    if parts.process is None:
        raise ValueError(
            f"{path} is an autoregressive model ({cfg.method.name}); D-MMD distils a masked or "
            "uniform diffusion teacher"
        )
    return DiscreteTeacher(net, parts.process, parts.vocab_size, parts.schedule), cfg


def dmmd_student_config(cfg: TrainConfig, method_cfg: DMMDConfig, process: str) -> TrainConfig:
    """The student's `TrainConfig`: `cfg` with the token net's `extra_noise_dim` set to the
    configured noise width (the teacher's `method` section stays, so `difflab sample` runs the
    student like its teacher, on the student's own steps)."""
    data = config_to_dict(cfg)
    kwargs = dict(data["model"]["kwargs"])
    kwargs["extra_noise_dim"] = resolve_noise_dim(method_cfg, process)
    data["model"]["kwargs"] = kwargs
    return config_from_dict(data)


def load_teacher_weights(student: nn.Module, teacher_net: nn.Module) -> list[str]:
    """Copy the teacher's weights into `student`, which may add an extra noise input (its
    projection keeps its own initialisation, zero for the token transformer); returns the
    missing keys. Any other mismatch is a `ValueError` naming the keys."""
    result = student.load_state_dict(teacher_net.state_dict(), strict=False)
    bad = [k for k in result.missing_keys if not k.startswith("noise_proj.")]
    bad += list(result.unexpected_keys)
    if bad:
        raise ValueError(f"the student does not match the teacher's net: keys {sorted(bad)[:4]}")
    return list(result.missing_keys)


def noise_width(net: nn.Module) -> int:
    """The extra noise input width of a (possibly DDP-wrapped or compiled) token net."""
    inner = getattr(net, "_orig_mod", net)
    inner = getattr(inner, "module", inner)
    config = getattr(inner, "config", None)
    return int(getattr(config, "extra_noise_dim", getattr(inner, "extra_noise_dim", 0)))


def dmmd_parts(
    method_cfg: DMMDConfig,
    teacher: DiscreteTeacher,
    step_fn: Callable[[], int],
) -> tuple[Callable, dict[str, nn.Module], dict[str, Any]]:
    """What a distillation run needs for D-MMD: the Trainer's `loss_fn`, the extra modules
    (`aux`: a trainable copy of the teacher net, without noise input) and the fields the
    student record adds (process, vocabulary, the registered discrete sampler)."""
    if not isinstance(teacher, DiscreteTeacher):
        raise TypeError(f"D-MMD needs a DiscreteTeacher, got {type(teacher).__name__}")
    process, vocab = teacher.process, teacher.vocab_size

    def make(net: nn.Module, generator: torch.Generator | None) -> DiscreteDenoise:
        return net_denoiser(net, process, vocab, noise_dim=noise_width(net), generator=generator)

    loss_fn = dmmd_loss_fn(
        method_cfg, process, vocab, teacher.schedule, teacher.denoise, make, step_fn
    )
    aux = copy.deepcopy(teacher.net).requires_grad_(True).train()
    record = {
        "process": process,
        "vocab_size": vocab,
        "noise_dim": resolve_noise_dim(method_cfg, process),
        "sampler": f"{process}_ancestral",
    }
    return loss_fn, {"aux": aux}, record
