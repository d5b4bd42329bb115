"""Forward processes, their posteriors `q(z_s | z_t, x)`, categorical draws and logit tweaks.

Two processes on tokens in `[0, V)`, both indexed by `alpha = sigmoid(logsnr)`:

- **masked** (absorbing): `z = x` with probability `alpha`, else the mask id `V`;
- **uniform**: `z ~ Cat(alpha onehot(x) + (1 - alpha) / V)`.

Both compose over levels: from the cleaner level `s` to the noisier `t` the kernel keeps a token
with probability `alpha_{t|s} = alpha_t / alpha_s` (masked: else masks it; uniform: else redraws
it uniformly). Bayes' rule then gives the posteriors below, which the samplers and losses use;
`docs/methods/discrete.md` derives them.

`x` enters the posteriors as a distribution `x_probs [..., V]`: `one_hot(x)` for known tokens,
or a denoiser's `p(x | z_t)`. For the second the result is the exact mixture
`sum_x p(x | z_t) q(z_s | z_t, x)`, the ancestral step of a model that predicts `x`.

**Checks.** Every public function here checks its arguments; the checks that read tensor
values on the host (token range, NaN levels, level order, finite probabilities) are skipped with
`check=False`, which the sampling loops, the NELBOs and the D-MMD losses pass after checking their
own inputs once (a loop step then never waits for the device). Shape and dtype checks cost
nothing and always run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import (
    check_level_order,
    check_logsnr,
    check_positive,
    check_tokens,
    check_vocab_size,
    keep_prob,
    reads_values,
)

PROCESSES = ("masked", "uniform")


def check_process(process: str) -> str:
    if process not in PROCESSES:
        raise ValueError(f"process must be one of {PROCESSES}, got {process!r}")
    return process


def _check_probs(x_probs: Tensor, name: str = "x_probs") -> Tensor:
    if not isinstance(x_probs, Tensor) or not x_probs.is_floating_point() or x_probs.ndim < 2:
        raise ValueError(f"{name} must be a float tensor [..., V] of probabilities")
    return x_probs


# ----------------------------------------------------------------------------- forward


def _keep(
    x: Tensor, logsnr: Tensor | float, vocab_size: int, generator, check: bool
) -> tuple[Tensor, Tensor]:
    """`(x, keep)`: the checked tokens and which of them the forward process keeps, each with
    probability `alpha = sigmoid(logsnr)` (one uniform draw per token, float64)."""
    x = check_tokens(x, vocab_size, values=check)
    alpha = keep_prob(check_logsnr(logsnr, x.shape, values=check))
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64)
    return x, u < alpha


def corrupt_masked(
    x: Tensor,
    logsnr: Tensor | float,
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
    check: bool = True,
) -> Tensor:
    """`z ~ q(z | x)` of masked diffusion: each token is kept with probability
    `sigmoid(logsnr)`, else replaced by the mask id `vocab_size`. `check=False`: no host reads
    (module docstring)."""
    x, keep = _keep(x, logsnr, vocab_size, generator, check)
    return torch.where(keep, x, torch.full_like(x, vocab_size))


def corrupt_uniform(
    x: Tensor,
    logsnr: Tensor | float,
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
    check: bool = True,
) -> Tensor:
    """`z ~ Cat(alpha onehot(x) + (1 - alpha) / V)`: each token is kept with probability
    `alpha = sigmoid(logsnr)`, else redrawn uniformly from `[0, V)` (possibly itself).
    `check=False`: no host reads (module docstring)."""
    x, keep = _keep(x, logsnr, vocab_size, generator, check)
    noise = torch.randint(0, vocab_size, x.shape, generator=generator, device=x.device)
    return torch.where(keep, x, noise)


def corrupt(
    process: str,
    x: Tensor,
    logsnr: Tensor | float,
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
    check: bool = True,
) -> Tensor:
    """`corrupt_masked` or `corrupt_uniform` by name."""
    fn = corrupt_masked if check_process(process) == "masked" else corrupt_uniform
    return fn(x, logsnr, vocab_size, generator=generator, check=check)


def prior_sample(
    process: str,
    shape: tuple[int, ...],
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The state at `logsnr = -inf`: all mask ids (masked) or uniform tokens (uniform)."""
    check_vocab_size(vocab_size)
    if check_process(process) == "masked":
        return torch.full(tuple(shape), vocab_size, dtype=torch.long, device=device)
    return torch.randint(0, vocab_size, tuple(shape), generator=generator, device=device)


def marginal_masked(x_probs: Tensor, logsnr: Tensor | float) -> Tensor:
    """`q(z | x)` of masked diffusion over `V + 1` states (the last is the mask):
    `[alpha x_probs, 1 - alpha]`."""
    x_probs = _check_probs(x_probs).double()
    alpha = keep_prob(check_logsnr(logsnr, x_probs.shape[:-1]))[..., None]
    return torch.cat([alpha * x_probs, 1.0 - alpha], dim=-1)


def marginal_uniform(x_probs: Tensor, logsnr: Tensor | float) -> Tensor:
    """`q(z | x) = alpha x_probs + (1 - alpha) / V`."""
    x_probs = _check_probs(x_probs).double()
    alpha = keep_prob(check_logsnr(logsnr, x_probs.shape[:-1]))[..., None]
    return alpha * x_probs + (1.0 - alpha) / x_probs.shape[-1]


# ----------------------------------------------------------------------------- posteriors


def _step_inputs(
    z_t: Tensor, x_probs: Tensor, logsnr_t, logsnr_s, *, allow_mask: bool, check: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The checked inputs of a reverse step: `z_t` (int64), `x_probs`, and both levels as float64
    at the token shape. `check=False` skips the value checks (host reads)."""
    x_probs = _check_probs(x_probs)
    vocab = x_probs.shape[-1]
    z_t = check_tokens(z_t, vocab, name="z_t", allow_mask=allow_mask, values=check)
    if tuple(x_probs.shape[:-1]) != tuple(z_t.shape):
        raise ValueError(
            f"x_probs must have shape z_t.shape + (V,) = {[*z_t.shape, vocab]}, "
            f"got {list(x_probs.shape)}"
        )
    lt = check_logsnr(logsnr_t, z_t.shape, name="logsnr_t", values=check)
    ls = check_logsnr(logsnr_s, z_t.shape, name="logsnr_s", values=check)
    if check:
        check_level_order(lt, ls)
    return z_t, x_probs, lt, ls


def posterior_masked(
    z_t: Tensor,
    x_probs: Tensor,
    logsnr_t: Tensor | float,
    logsnr_s: Tensor | float,
    *,
    check: bool = True,
) -> Tensor:
    """`q(z_s | z_t, x)` of masked diffusion, `[..., V + 1]` (last entry: the mask).

    An unmasked `z_t` stays. A masked one stays masked with probability
    `(1 - alpha_s) / (1 - alpha_t) = sigmoid(-l_s) / sigmoid(-l_t)`, else becomes token `j` with
    probability `(alpha_s - alpha_t) / (1 - alpha_t) * x_probs[j]` (the same for a hard `x` and a
    mixture over `x`, since `q(z_t = mask | x)` does not depend on `x`). `check=False`: no host
    reads (module docstring).
    """
    z_t, x_probs, lt, ls = _step_inputs(
        z_t, x_probs, logsnr_t, logsnr_s, allow_mask=True, check=check
    )
    vocab = x_probs.shape[-1]
    # log of the stay-masked probability; 0 when s is clean (l_s = +inf) or t is (no mask left)
    log_stay = F.logsigmoid(-ls) - F.logsigmoid(-lt)
    stay = torch.where(torch.isinf(lt) & (lt > 0), torch.zeros_like(lt), log_stay.exp())
    stay = stay.clamp(0.0, 1.0)[..., None]
    masked_row = torch.cat([(1.0 - stay) * x_probs.double(), stay], dim=-1)
    kept_row = F.one_hot(z_t.clamp(max=vocab), vocab + 1).double()
    return torch.where((z_t == vocab)[..., None], masked_row, kept_row)


def posterior_uniform(
    z_t: Tensor,
    x_probs: Tensor,
    logsnr_t: Tensor | float,
    logsnr_s: Tensor | float,
    *,
    check: bool = True,
) -> Tensor:
    """`sum_x x_probs(x) q(z_s | z_t, x)` of uniform diffusion, `[..., V]`.

    With `A = alpha_t / alpha_s`, `q(z_t | z_s = j) = A [j = z_t] + (1 - A) / V` and
    `q(z_s = j | x = k) = alpha_s [j = k] + (1 - alpha_s) / V`, Bayes per `k` and the mixture
    over `k` give, with `w_k = x_probs[k] / q(z_t | x = k)`,

        q(z_s = j | z_t) = (A [j = z_t] + (1 - A) / V) (alpha_s w_j + (1 - alpha_s) / V sum_k w_k).

    `w` is computed up to the common factor `(1 - alpha_t) / V`, and the result is normalised.
    `check=False`: no host reads (module docstring).
    """
    z_t, x_probs, lt, ls = _step_inputs(
        z_t, x_probs, logsnr_t, logsnr_s, allow_mask=False, check=check
    )
    vocab = x_probs.shape[-1]
    p = x_probs.double()
    at_zt = F.one_hot(z_t, vocab).bool()
    # (1 - alpha_t) / V / q(z_t | k): 1 for k != z_t, 1 / (1 + V e^{l_t}) = sigmoid(-l_t - log V)
    scale_zt = torch.sigmoid(-lt - math.log(vocab))[..., None]
    w = torch.where(at_zt, p * scale_zt, p)
    alpha_s = keep_prob(ls)[..., None]
    # A = alpha_t / alpha_s, 1 where both are pure noise (then z_s = z_t)
    ratio = (F.logsigmoid(lt) - F.logsigmoid(ls)).exp()
    a = torch.where(torch.isinf(ls) & (ls < 0), torch.ones_like(ls), ratio)
    a = a.clamp(0.0, 1.0)[..., None]
    back = torch.where(at_zt, a + (1.0 - a) / vocab, (1.0 - a) / vocab)
    out = back * (alpha_s * w + (1.0 - alpha_s) / vocab * w.sum(-1, keepdim=True))
    return out / out.sum(-1, keepdim=True)


def posterior(
    process: str,
    z_t: Tensor,
    x_probs: Tensor,
    logsnr_t: Tensor | float,
    logsnr_s: Tensor | float,
    *,
    check: bool = True,
) -> Tensor:
    """`posterior_masked` or `posterior_uniform` by name."""
    fn = posterior_masked if check_process(process) == "masked" else posterior_uniform
    return fn(z_t, x_probs, logsnr_t, logsnr_s, check=check)


def sample_posterior(
    process: str,
    z_t: Tensor,
    x_probs: Tensor,
    logsnr_t: Tensor | float,
    logsnr_s: Tensor | float,
    *,
    generator: torch.Generator | None = None,
    check: bool = True,
) -> Tensor:
    """A draw `z_s ~ posterior(process, z_t, x_probs, logsnr_t, logsnr_s)` (tokens; the mask id
    is `V` for masked diffusion). `check=False`: no host reads (module docstring)."""
    q = posterior(process, z_t, x_probs, logsnr_t, logsnr_s, check=check)
    return sample_categorical(q, generator=generator, check=check)


def step_x_posterior(
    process: str,
    z_t: Tensor,
    z_s: Tensor,
    x_probs: Tensor,
    logsnr_t: Tensor | float,
    logsnr_s: Tensor | float,
    *,
    check: bool = True,
) -> Tensor:
    """`p(x_i | z_t, z_s)` per position, `[..., V]` (float64), when every `x_i ~ x_probs[i]` is
    drawn independently and then `z_s ~ q(z_s | z_t, x)`: Bayes' rule with the one-position
    likelihood `q(z_s,i | z_t,i, x_i = k)`, differentiable in `x_probs`.

    Masked: the token `z_s` shows where this step revealed it, else `x_probs` (the likelihood
    does not depend on `k`; a denoiser carries a shown token over, so there it is that token).
    Uniform: the likelihood is proportional to `(1 + [z_s = k] V e^{l_s}) / (1 + [z_t = k] V
    e^{l_t})` (the factor `q(z_t | z_s)` does not depend on `k`), so `z_s` tilts `x_probs`
    towards the token it shows and away from the one `z_t` showed; levels are clamped to
    `[-700, 700]` (at `l_s = +inf` the result is the token of `z_s`). Its mean over `z_s`
    given `z_t` is `x_probs`, and its mean given `z_s` alone is `E[x | z_s]`: a
    Rao-Blackwellised stand-in for the draw `x` (docs/methods/discrete_mmd.md).
    """
    check_process(process)
    masked = process == "masked"
    z_t, x_probs, lt, ls = _step_inputs(
        z_t, x_probs, logsnr_t, logsnr_s, allow_mask=masked, check=check
    )
    vocab = x_probs.shape[-1]
    z_s = check_tokens(z_s, vocab, name="z_s", allow_mask=masked, values=check)
    if tuple(z_s.shape) != tuple(z_t.shape):
        raise ValueError(f"z_s must have the shape of z_t {list(z_t.shape)}, got {list(z_s.shape)}")
    p = x_probs.double()
    if masked:
        revealed = (z_t == vocab) & (z_s != vocab)
        shown = F.one_hot(z_s.clamp(max=vocab - 1), vocab).double()
        return torch.where(revealed[..., None], shown, p)
    log_v = math.log(vocab)
    gain_s = F.softplus(ls.clamp(-700.0, 700.0) + log_v)[..., None]
    gain_t = F.softplus(lt.clamp(-700.0, 700.0) + log_v)[..., None]
    log_w = F.one_hot(z_s, vocab) * gain_s - F.one_hot(z_t, vocab) * gain_t
    rel = log_w - log_w.amax(-1, keepdim=True)
    w = torch.where(rel > -200.0, rel.exp(), 0.0)  # no subnormal products (slow on CPUs)
    out = p * w
    return out / out.sum(-1, keepdim=True).clamp_min(1e-300)


# ----------------------------------------------------------------------------- categoricals


def sample_categorical(
    probs: Tensor, *, generator: torch.Generator | None = None, check: bool = True
) -> Tensor:
    """One draw per row of `probs [..., K]` (need not be normalised), by inverse CDF in float64
    (float32 Gumbel or multinomial draws measurably bias rare tokens). A zero-probability entry
    is never drawn. `check=False` skips the value checks (host reads), for sampling loops that
    check their inputs once after the loop."""
    if not isinstance(probs, Tensor) or not probs.is_floating_point() or probs.ndim < 1:
        raise ValueError("probs must be a float tensor [..., K]")
    cdf = probs.double().cumsum(-1)
    total = cdf[..., -1:]
    if check and reads_values(probs):
        rows_ok = torch.isfinite(total).all() & (total > 0).all()
        if not bool(rows_ok & (probs >= 0).all()):  # one host read; the cause only on failure
            if not bool(rows_ok):
                raise FloatingPointError("probs has a row that is non-finite or sums to zero")
            raise ValueError("probs has negative entries")
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=torch.float64)
    idx = torch.searchsorted(cdf.contiguous(), (u * total).contiguous(), right=True)
    return idx.squeeze(-1).clamp(max=probs.shape[-1] - 1)


def adjust_probs(
    probs: Tensor,
    *,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_p_offset: float = 2.0,
) -> Tensor:
    """Temperature and nucleus (top-p) sampling by logit offsets, on the last axis of `probs`.

    `logits = log(probs) / temperature`; with `top_p`, tokens outside the nucleus (the smallest
    set of most probable tokens, after temperature, whose mass reaches `top_p`) get their logits
    lowered by `top_p_offset` (2 in D-MMD; `inf` is hard top-p). `temperature=1, top_p=None`
    returns `probs` unchanged.
    """
    temperature = check_positive(temperature, "temperature")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not (isinstance(top_p_offset, (int, float)) and top_p_offset >= 0):
        raise ValueError(f"top_p_offset must be >= 0, got {top_p_offset!r}")
    if temperature == 1.0 and top_p is None:
        return probs
    logits = torch.log(probs.double()) / temperature
    if top_p is not None and top_p < 1.0:
        sharpened = torch.softmax(logits, dim=-1)
        sorted_p, order = sharpened.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the more probable tokens
        outside_sorted = before >= top_p
        outside = torch.zeros_like(outside_sorted).scatter(-1, order, outside_sorted)
        logits = logits - torch.where(outside, float(top_p_offset), 0.0)
    return torch.softmax(logits, dim=-1).to(probs.dtype)


def denoiser_from_logits(logits_fn, vocab_size: int, process: str):
    """A discrete denoiser `denoise(z, logsnr) -> probs` from `logits_fn(z, logsnr) -> [..., V]`
    (a token net): softmax over the vocabulary; for masked diffusion, unmasked positions carry
    their own token (the carry-over / SUBS rule)."""
    check_vocab_size(vocab_size)
    check_process(process)

    def denoise(z: Tensor, logsnr: Tensor) -> Tensor:
        logits = logits_fn(z, logsnr)
        if tuple(logits.shape) != (*z.shape, vocab_size):
            raise ValueError(
                f"the net returned logits of shape {list(logits.shape)}, expected "
                f"z.shape + (V,) = {[*z.shape, vocab_size]}"
            )
        probs = torch.softmax(logits.float(), dim=-1)
        if process == "masked":
            keep = z != vocab_size
            own = F.one_hot(z.clamp(max=vocab_size - 1), vocab_size).to(probs.dtype)
            probs = torch.where(keep[..., None], own, probs)
        return probs

    return denoise
