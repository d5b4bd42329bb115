"""Continuous-time negative ELBOs of masked and uniform diffusion (nats per sequence).

Both are unbiased one-sample Monte Carlo estimates over a level `t ~ U(0, 1)` (one per example,
stratified over the batch when no `t` is given) and one corrupted state `z_t`; summed over the
tokens of each example, shape `[B]`. `logits_fn(z, logsnr) -> [..., V]` is a token net (or any
log-probabilities); `logsnr` is passed per example. With the schedule's full range
(`LinearMaskingSchedule()`, the default: `logsnr` from `+inf` to `-inf`) both bounds are the
integral alone; a clipped schedule adds the exact prior term at its lowest level and the
reconstruction term `E[-log p(x | z)]` at its highest. Derivations: `docs/methods/discrete.md`.

**Masked** (MD4 / MDLM, in logsnr form): with `alpha = sigmoid(l)`,

    NELBO(x) = E_t[ -l'(t) alpha(t) sum_{masked i} -log p(x_i | z_t) ]
             = int alpha(l) E[ sum_{masked i} -log p(x_i | z_l) ] dl,

since `-alpha' / (1 - alpha) = -l' alpha`. With the exact denoiser it equals `-log p(x)` for every
`x` (each masked position is predicted from exactly the information a left-to-right model would
have under a random order).

**Uniform**: the continuous-time bound of the Markov jump process that redraws each token at
rate `beta = -d log(alpha)/dt = -l' sigmoid(-l)` (to each of the `V` values with rate `beta / V`).
Per position, with `E = V e^l`, the model's ratio `s_y = q(z with z_i = y) / q(z)` implied by its
`p(x_i | z)`, and the true conditional ratio `r_y`,

    s_y = E p_y + p_{z_i} / (1 + E) + 1 - p_{z_i},   y != z_i,
    r_y = 1 / (1 + E)                       if z_i = x_i,
    r_{x_i} = 1 + E,  r_y = 1 (other y)     if z_i != x_i,

    NELBO(x) = E_t[ (beta / V) sum_i sum_{y != z_i} (s_y - r_y - r_y log(s_y / r_y)) ],

every term non-negative and zero when `s = r`; the exact denoiser gives `s = r` in expectation
and the bound equals `-log p(x)` too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.diffusion.schedules import Schedule

from .checks import check_tokens, keep_prob, reads_values
from .processes import check_process, corrupt_masked, corrupt_uniform
from .schedules import LinearMaskingSchedule

LogitsFn = Callable[[Tensor, Tensor], Tensor]

T_EPS = 1e-9
"""Training times are clamped to `[T_EPS, 1 - T_EPS]` (the integrand is finite there)."""


def training_times(
    batch: int, *, t: Tensor | None = None, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """`t` (checked, float64: one host read) or stratified times `(u + i / B) mod 1` from one
    uniform `u` (no check needed)."""
    if t is None:
        u = torch.rand((), generator=generator, device=device, dtype=torch.float64)
        t = (u + torch.arange(batch, device=device, dtype=torch.float64) / batch) % 1.0
    else:
        if not isinstance(t, Tensor) or tuple(t.shape) != (batch,):
            shape = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"t must be a tensor of shape [B]=[{batch}], got {shape}")
        if reads_values(t) and not bool(((t >= 0) & (t <= 1)).all()):  # NaN fails too
            raise ValueError("t must hold times in [0, 1]")
    return t.double().clamp(T_EPS, 1.0 - T_EPS)


def _model_log_probs(logits_fn: LogitsFn, z: Tensor, logsnr: Tensor, vocab: int) -> Tensor:
    logits = logits_fn(z, logsnr.to(torch.get_default_dtype()))
    if tuple(logits.shape) != (*z.shape, vocab):
        raise ValueError(
            f"logits_fn returned shape {list(logits.shape)}, expected z.shape + (V,) = "
            f"{[*z.shape, vocab]}"
        )
    return F.log_softmax(logits.float(), dim=-1)


def _ends(schedule: Schedule) -> tuple[float, float]:
    ends = schedule.logsnr(torch.tensor([1.0, 0.0], dtype=torch.float64))
    return float(ends[0]), float(ends[1])


def _per_example(values: Tensor) -> Tensor:
    return values.flatten(1).sum(1)


def _masked_ce(logp: Tensor, x: Tensor, z: Tensor, vocab: int) -> Tensor:
    """`sum over masked positions of -log p(x_i | z)`, per example."""
    ce = -logp.gather(-1, x[..., None]).squeeze(-1)
    return _per_example(torch.where(z == vocab, ce, torch.zeros_like(ce)))


def _nelbo_levels(
    x: Tensor, vocab_size: int, schedule: Schedule | None, t: Tensor | None, generator
) -> tuple[Tensor, Schedule, Tensor, Tensor]:
    """`(x, schedule, t, logsnr(t))` for a NELBO estimate: checked tokens, the schedule (default
    linear masking) and one training time per example (`t` if given)."""
    x = check_tokens(x, vocab_size)
    schedule = schedule or LinearMaskingSchedule()
    t = training_times(x.shape[0], t=t, generator=generator, device=x.device)
    return x, schedule, t, schedule.logsnr(t)


def masked_nelbo(
    logits_fn: LogitsFn,
    x: Tensor,
    vocab_size: int,
    *,
    schedule: Schedule | None = None,
    t: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The masked-diffusion NELBO of `x` in nats per example, `[B]` (module docstring)."""
    x, schedule, t, level = _nelbo_levels(x, vocab_size, schedule, t, generator)
    weight = -schedule.dlogsnr_dt(t) * keep_prob(level)
    z = corrupt_masked(x, level, vocab_size, generator=generator, check=False)
    logp = _model_log_probs(logits_fn, z, level, vocab_size)
    loss = weight.to(logp.dtype) * _masked_ce(logp, x, z, vocab_size)
    lo, hi = _ends(schedule)
    tokens = x[0].numel()
    if lo > -math.inf:  # prior: unmasked tokens at l_min are uniform under p(z_1)
        loss = loss + tokens * float(keep_prob(torch.tensor(lo))) * math.log(vocab_size)
    if hi < math.inf:  # reconstruction of the tokens still masked at l_max
        z0 = corrupt_masked(x, hi, vocab_size, generator=generator, check=False)
        level0 = torch.full_like(level, hi)
        loss = loss + _masked_ce(
            _model_log_probs(logits_fn, z0, level0, vocab_size), x, z0, vocab_size
        )
    return loss


def uniform_prior_kl(logsnr: float, vocab_size: int) -> float:
    """`KL(alpha onehot + (1 - alpha) / V || uniform)` of one token, in nats."""
    alpha = float(keep_prob(torch.tensor(float(logsnr), dtype=torch.float64)))
    c = (1.0 - alpha) / vocab_size
    own = (alpha + c) * math.log(vocab_size * (alpha + c))
    rest = (vocab_size - 1) * c * math.log(vocab_size * c) if c > 0 else 0.0
    return own + rest


def uniform_integrand(logp: Tensor, x: Tensor, z: Tensor, logsnr: Tensor) -> Tensor:
    """`sum_i sum_{y != z_i} (s_y - r_y - r_y log(s_y / r_y))` per example (module docstring),
    in float64; `logsnr` per example `[B]` or per token."""
    vocab = logp.shape[-1]
    p = logp.double().exp()
    level = logsnr.double()
    if level.ndim == 1:
        level = level.reshape(-1, *([1] * (z.ndim - 1)))
    big = (vocab * level.clamp(max=700.0).exp()).expand(z.shape)[..., None]  # E = V e^l
    p_z = p.gather(-1, z[..., None])
    s = big * p + p_z / (1.0 + big) + 1.0 - p_z
    same = (z == x)[..., None]
    at_x = F.one_hot(x, vocab).bool()
    r = torch.where(same, 1.0 / (1.0 + big), torch.where(at_x, 1.0 + big, torch.ones_like(big)))
    term = s - r - r * (s.log() - r.log())
    not_z = ~F.one_hot(z, vocab).bool()
    return _per_example(torch.where(not_z, term, torch.zeros_like(term)).sum(-1))


def uniform_nelbo(
    logits_fn: LogitsFn,
    x: Tensor,
    vocab_size: int,
    *,
    schedule: Schedule | None = None,
    t: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The uniform-diffusion NELBO of `x` in nats per example, `[B]` (module docstring)."""
    x, schedule, t, level = _nelbo_levels(x, vocab_size, schedule, t, generator)
    weight = -schedule.dlogsnr_dt(t) * keep_prob(-level) / vocab_size  # beta / V
    z = corrupt_uniform(x, level, vocab_size, generator=generator, check=False)
    logp = _model_log_probs(logits_fn, z, level, vocab_size)
    loss = weight * uniform_integrand(logp, x, z, level)
    lo, hi = _ends(schedule)
    if lo > -math.inf:
        loss = loss + x[0].numel() * uniform_prior_kl(lo, vocab_size)
    if hi < math.inf:
        z0 = corrupt_uniform(x, hi, vocab_size, generator=generator, check=False)
        logp0 = _model_log_probs(logits_fn, z0, torch.full_like(level, hi), vocab_size)
        loss = loss + _per_example(-logp0.double().gather(-1, x[..., None]).squeeze(-1))
    return loss.to(logp.dtype)


def nelbo(
    process: str,
    logits_fn: LogitsFn,
    x: Tensor,
    vocab_size: int,
    *,
    schedule: Schedule | None = None,
    t: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`masked_nelbo` or `uniform_nelbo` by name."""
    fn = masked_nelbo if check_process(process) == "masked" else uniform_nelbo
    return fn(logits_fn, x, vocab_size, schedule=schedule, t=t, generator=generator)
