"""An exact discrete oracle: an explicit joint table over short sequences.

`DiscreteOracle(table)` holds `p(x)` for every sequence of `L` tokens over `V` symbols (a tensor of
shape `[V] * L`; `V ** L` entries, e.g. `3 ** 6 = 729` or `4 ** 6 = 4096`). Everything a discrete
method needs is then exact, by enumeration:

- the denoisers `p(x_i | z)` of masked diffusion (the sequences consistent with the unmasked
  tokens, weighted by `p(x)`) and of uniform diffusion (`p(x) prod_i q(z_i | x_i)`, normalised);
- exact draws and log-probabilities;
- `exact_sampler_distribution`: the exact law of an ancestral sampler's output for ANY denoiser
  on this small space (a Markov chain over all `(V + 1) ** L` resp. `V ** L` states), so sampler
  error is a KL without Monte Carlo error.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_logsnr, check_tokens, check_vocab_size
from .nelbo import uniform_integrand
from .processes import adjust_probs, check_process, posterior
from .samplers import DiscreteDenoise, check_discrete_grid
from .schedules import LinearMaskingSchedule

MAX_STATES = 2**16
"""The largest table (`V ** L`) an oracle accepts."""


def all_sequences(length: int, base: int) -> Tensor:
    """Every sequence of `length` digits in `[0, base)`, `[base ** length, length]`, in the order
    of `index` (first position most significant)."""
    idx = torch.arange(base**length)
    powers = base ** torch.arange(length - 1, -1, -1)
    return (idx[:, None] // powers) % base


def sequence_index(x: Tensor, base: int) -> Tensor:
    """The flat index of each row of `x [N, L]` among `all_sequences(L, base)`."""
    powers = base ** torch.arange(x.shape[-1] - 1, -1, -1, device=x.device)
    return (x.long() * powers).sum(-1)


def kl_divergence(p: Tensor, q: Tensor) -> float:
    """`KL(p || q) = sum p log(p / q)` in nats (`0 log 0 = 0`; `inf` where `q = 0 < p`)."""
    p, q = p.double().flatten(), q.double().flatten()
    terms = torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p))
    return float(terms.sum())


class DiscreteOracle:
    """An explicit joint `p(x)` over `[V] * L` (module docstring). `table` need not be
    normalised; it must be non-negative with a positive sum."""

    def __init__(self, table: Tensor):
        if not isinstance(table, Tensor) or not table.is_floating_point() or table.ndim < 1:
            raise ValueError("table must be a float tensor of shape [V] * L")
        vocab = table.shape[0]
        if any(d != vocab for d in table.shape):
            raise ValueError(f"table must have shape [V] * L, got {list(table.shape)}")
        check_vocab_size(vocab, "table.shape[0] (V)")
        if table.numel() > MAX_STATES:
            raise ValueError(f"table has {table.numel()} entries, more than {MAX_STATES}")
        if bool((table < 0).any()) or not bool(torch.isfinite(table).all()):
            raise ValueError("table must be finite and non-negative")
        total = float(table.sum())
        if total <= 0:
            raise ValueError("table must have a positive sum")
        self.vocab_size, self.length = vocab, table.ndim
        self.joint = (table.double() / total).flatten()
        self.sequences = all_sequences(self.length, vocab)
        self._onehot = F.one_hot(self.sequences, vocab).double().reshape(len(self.joint), -1)
        self._log_joint = self.joint.log()

    @classmethod
    def random(
        cls,
        length: int = 6,
        vocab_size: int = 3,
        *,
        seed: int = 0,
        components: int = 4,
        sharpness: float = 0.3,
        floor: float = 0.02,
    ) -> DiscreteOracle:
        """A structured random joint: a mixture of `components` product distributions whose
        per-position categoricals are `Dirichlet(sharpness)` draws (small = peaked), so positions
        are strongly dependent, plus a `floor` of the uniform distribution (full support)."""
        check_vocab_size(vocab_size)
        rng = np.random.default_rng(seed)
        weights = torch.from_numpy(rng.dirichlet(np.ones(components)))
        marg = torch.from_numpy(
            rng.dirichlet(np.full(vocab_size, float(sharpness)), (components, length))
        )
        seqs = all_sequences(length, vocab_size)
        per = marg[:, torch.arange(length)[None, :], seqs]  # [M, K, L]
        mix = (weights[:, None] * per.prod(-1)).sum(0)
        table = (1.0 - floor) * mix + floor / vocab_size**length
        return cls(table.reshape([vocab_size] * length))

    # ------------------------------------------------------------------ the distribution

    @property
    def num_states(self) -> int:
        return len(self.joint)

    def entropy(self) -> float:
        """`H(p)` in nats."""
        p = self.joint
        return float(-(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum())

    def index(self, x: Tensor) -> Tensor:
        x = self._check_x(x)
        return sequence_index(x, self.vocab_size)

    def log_prob(self, x: Tensor) -> Tensor:
        """`log p(x)` per row of `x [N, L]`."""
        return self._log_joint.to(x.device)[self.index(x)]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """`n` exact draws `[n, L]` (inverse CDF in float64)."""
        cdf = self.joint.cumsum(0)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        idx = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=self.num_states - 1)
        return self.sequences[idx]

    def histogram(self, x: Tensor) -> Tensor:
        """The empirical distribution of the rows of `x` over the `V ** L` sequences."""
        counts = torch.bincount(self.index(x).cpu(), minlength=self.num_states).double()
        return counts / counts.sum()

    def kl_from_samples(self, x: Tensor) -> float:
        """`KL(empirical(x) || p)` in nats (biased up by about `(states - 1) / (2 n)`)."""
        return kl_divergence(self.histogram(x), self.joint)

    def _check_x(self, x: Tensor, allow_mask: bool = False, name: str = "x") -> Tensor:
        x = check_tokens(x, self.vocab_size, name=name, allow_mask=allow_mask)
        if x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(f"{name} must have shape [N, {self.length}], got {list(x.shape)}")
        return x

    # ------------------------------------------------------------------ exact denoisers

    def _marginals(self, log_weight: Tensor) -> Tensor:
        post = torch.softmax(log_weight, dim=-1)
        return (post @ self._onehot).reshape(-1, self.length, self.vocab_size)

    def _chunks(self, n: int):
        size = max(1, 2**22 // self.num_states)
        return [slice(i, min(n, i + size)) for i in range(0, n, size)]

    def denoise_masked(self, z: Tensor, logsnr: Tensor | float) -> Tensor:
        """Exact `p(x_i | z)` of masked diffusion, `[N, L, V]` (float64): `p(x)` restricted to
        the sequences that agree with every unmasked token of `z`. (The level does not enter:
        which tokens are masked carries all the information.)"""
        z = self._check_x(z, allow_mask=True, name="z")
        check_logsnr(logsnr, z.shape)
        device, z = z.device, z.cpu()
        shown = F.one_hot(z.clamp(max=self.vocab_size - 1), self.vocab_size).double()
        shown = (shown * (z != self.vocab_size)[..., None]).reshape(len(z), -1)
        needed = (z != self.vocab_size).sum(-1, keepdim=True).double()
        out = []
        for part in self._chunks(len(z)):
            agree = (shown[part] @ self._onehot.T) == needed[part]
            log_weight = torch.where(agree, self._log_joint, -math.inf)
            out.append(self._marginals(log_weight))
        return torch.cat(out).to(device)

    def denoise_uniform(self, z: Tensor, logsnr: Tensor | float) -> Tensor:
        """Exact `p(x_i | z)` of uniform diffusion, `[N, L, V]` (float64): the posterior
        `p(x) prod_i q(z_i | x_i)`; per position `log q(z_i | x_i) = log((1 - alpha) / V) +
        [x_i = z_i] softplus(l_i + log V)`, and the first part cancels."""
        z = self._check_x(z, name="z")
        level = check_logsnr(logsnr, z.shape).cpu()
        device, z = z.device, z.cpu()
        gain = F.softplus(level.clamp(-700.0, 700.0) + math.log(self.vocab_size))
        shown = (F.one_hot(z, self.vocab_size).double() * gain[..., None]).reshape(len(z), -1)
        out = []
        for part in self._chunks(len(z)):
            out.append(self._marginals(self._log_joint + shown[part] @ self._onehot.T))
        return torch.cat(out).to(device)

    def denoiser(self, process: str) -> DiscreteDenoise:
        """The exact denoiser of `process` ("masked" or "uniform")."""
        return self.denoise_masked if check_process(process) == "masked" else self.denoise_uniform

    def logits(self, process: str):
        """`(z, logsnr) -> log p(x_i | z)` of the exact denoiser (for the NELBO functions)."""
        denoise = self.denoiser(process)
        return lambda z, logsnr: denoise(z, logsnr).log()

    # ------------------------------------------------------------------ exact bounds

    def exact_nelbo(
        self,
        process: str,
        x: Tensor,
        *,
        logits_fn=None,
        points: int = 64,
    ) -> Tensor:
        """The continuous-time NELBO of each row of `x [N, L]` on the full linear masking
        schedule, with the expectation over `z_t` done exactly (all masking patterns, resp. all
        `V ** L` states) and the integral over `t = u^2 (3 - 2u)` by `points`-point
        Gauss-Legendre in `u`; `logits_fn`
        defaults to this oracle's exact denoiser. In nats, `[N]` (float64)."""
        check_process(process)
        x = self._check_x(x)
        logits_fn = logits_fn or self.logits(process)
        nodes, weights = np.polynomial.legendre.leggauss(points)
        # t = u^2 (3 - 2u): the Jacobian 6u(1 - u) tames the end points' t log t behaviour
        u = torch.from_numpy((nodes + 1.0) / 2.0)
        ts = u * u * (3.0 - 2.0 * u)
        ws = torch.from_numpy(weights / 2.0) * 6.0 * u * (1.0 - u)
        schedule = LinearMaskingSchedule()
        vocab, length = self.vocab_size, self.length
        out = torch.zeros(len(x), dtype=torch.float64)
        for n, row in enumerate(x):
            if process == "masked":
                hidden = all_sequences(length, 2).bool()  # every masking pattern
                z = torch.where(hidden, vocab, row[None, :])
            else:
                z = self.sequences
                same = z == row[None, :]
            for t, w in zip(ts, ws):
                level = schedule.logsnr(t)
                alpha = float(torch.sigmoid(level))
                levels = level.expand(len(z))
                logp = torch.log_softmax(logits_fn(z, levels).double(), dim=-1)
                if process == "masked":
                    weight = -schedule.dlogsnr_dt(t) * alpha
                    m = hidden.sum(-1)
                    q = alpha ** (length - m) * (1.0 - alpha) ** m
                    ce = -logp.gather(-1, row.expand(len(z), length)[..., None]).squeeze(-1)
                    values = torch.where(hidden, ce, torch.zeros_like(ce)).sum(-1)
                else:
                    weight = -schedule.dlogsnr_dt(t) * (1.0 - alpha) / vocab
                    c = (1.0 - alpha) / vocab
                    q = torch.where(same, alpha + c, c).prod(-1)
                    values = uniform_integrand(logp, row.expand(len(z), length), z, levels)
                out[n] += float(w * weight * (q * values).sum())
        return out

    # ------------------------------------------------------------------ samplers, exactly

    def sampler_distribution(
        self,
        process: str,
        logsnrs: Tensor,
        *,
        denoise: DiscreteDenoise | None = None,
        temperature: float = 1.0,
        top_p: float | None = None,
    ) -> Tensor:
        """The exact output law of the ancestral sampler of `process` on `logsnrs` with
        `denoise` (default: this oracle's exact denoiser), `[V ** L]`."""
        return exact_sampler_distribution(
            denoise or self.denoiser(process),
            process,
            self.length,
            self.vocab_size,
            logsnrs,
            temperature=temperature,
            top_p=top_p,
        )

    def kl_to(self, distribution: Tensor) -> float:
        """`KL(distribution || p)` in nats, for a law over the `V ** L` sequences."""
        return kl_divergence(distribution, self.joint)


def exact_sampler_distribution(
    denoise: DiscreteDenoise,
    process: str,
    length: int,
    vocab_size: int,
    logsnrs: Tensor,
    *,
    temperature: float = 1.0,
    top_p: float | None = None,
) -> Tensor:
    """The exact law `[V ** L]` of `sample_masked` / `sample_uniform` (`process`) started from
    the all-mask state (resp. uniform tokens) on `logsnrs`, for any `denoise`: the state
    distribution is pushed through each step's factorised transition over all states."""
    check_process(process)
    check_vocab_size(vocab_size)
    grid = check_discrete_grid(logsnrs)
    base = vocab_size + 1 if process == "masked" else vocab_size
    if base**length > MAX_STATES:
        raise ValueError(f"{base}**{length} states is more than {MAX_STATES}")
    states = all_sequences(length, base)
    if process == "masked":
        dist = torch.zeros(len(states), dtype=torch.float64)
        dist[-1] = 1.0  # all digits = V: every token masked
    else:
        dist = torch.full((len(states),), 1.0 / len(states), dtype=torch.float64)
    chunk = max(1, 2**23 // len(states))
    for i in range(grid.shape[0] - 1):
        live = torch.nonzero(dist > 0).squeeze(-1)
        new = torch.zeros_like(dist)
        for start in range(0, len(live), chunk):
            rows = live[start : start + chunk]
            z = states[rows]
            level = grid[i].expand(len(rows))
            probs = adjust_probs(
                denoise(z, level.to(torch.get_default_dtype())).double(),
                temperature=temperature,
                top_p=top_p,
            )
            q = posterior(process, z, probs, level, grid[i + 1].expand(len(rows)), check=False)
            out = dist[rows][:, None]
            for pos in range(length):
                out = (out[:, :, None] * q[:, pos, None, :]).reshape(len(rows), -1)
            new += out.sum(0)
        dist = new
    if process == "masked":  # at +inf no mask is left: keep the states without the mask digit
        clean = (states < vocab_size).all(-1)
        dist = dist[clean]
    return dist / dist.sum()


def sampler_error(oracle: DiscreteOracle, process: str, logsnrs: Tensor, **kwargs) -> float:
    """`KL(sampler law || p)` of the exact-denoiser ancestral sampler, exactly."""
    return oracle.kl_to(oracle.sampler_distribution(process, logsnrs, **kwargs))


__all__ = [
    "DiscreteOracle",
    "all_sequences",
    "exact_sampler_distribution",
    "kl_divergence",
    "sampler_error",
    "sequence_index",
]
