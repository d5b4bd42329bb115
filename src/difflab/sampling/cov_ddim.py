"""Covariance-aware DDIM: DDIM whose transition carries the data-posterior covariance, estimated
from the denoiser by Tweedie's second-order identity with one JVP per step (derivation and
measurements in docs/methods/cov_ddim.md and results/samplers/notes.md).

DDIM's update `z_s = alpha_s x + (sigma_s / sigma_t)(z_t - alpha_t x)` is exact in distribution
when `x ~ p(x | z_t)`; it is linear in `x` with slope `kappa = alpha_s - alpha_t sigma_s/sigma_t`
(`transitions.ddim_slope`). Writing `x = x_hat + delta` with `delta ~ N(0, Cov[x | z_t])`:

    z_s = alpha_s x_hat + sigma_s eps_hat + kappa delta,  eps_hat = (z_t - alpha_t x_hat)/sigma_t.

Tweedie gives `Cov[x | z_t] = (sigma_t^2 / alpha_t) d x_hat / d z_t`; one
`torch.func.jvp(denoise, z_t, v)` returns `x_hat` *and* `J v` for a probe `v`. The covariance is
taken diagonal in the orthonormal 2-D DCT basis `F` (images are close to stationary): with a
Rademacher probe `u` in DCT coordinates, `v = F^T u`, the products `u_k (F Cov v)_k` are
Hutchinson estimates of the diagonal (exact when `Cov` is diagonal in `F`); their noise is
averaged away over radial frequency bands and channels (`pooling="example"`), over the batch
(`"batch"`: one spectrum per level) or both (`"profile"`, the default: per-example band levels
times the batch's within-band shape), and the result is clipped to `[0, prior_var]`.

- `variant="stochastic"`: by default (`draw="jvp"`) `delta = F^T (g_b * w)`, the probe's
  response `w = F Cov F^T u` (from the same JVP) rescaled per band so that its energy is the
  estimated variance: it has the posterior's own directions (the mode differences, the uncertain
  pixels) where independent coefficients (`draw="diagonal"`, `delta = F^T (sqrt(c) * xi)`) turn
  them into stationary noise (`response_noise`; docs/methods/cov_ddim.md, "The shape of the draw").
- `variant="deterministic"`: no fresh noise; per band, `eps_hat` is rescaled so its energy grows
  by `kappa^2 c_b` per coefficient, `scale_b = sqrt(sigma_s^2 + kappa^2 c_b / mean_b(E^2))` with
  `E = F eps_hat` (aDDIM, `sampling/addim.py`, is the one-band case with `x_var` from a formula).
- The last step to logsnr = +inf has `kappa = 1`: by default it returns a posterior draw
  around `x_hat` (`final="stochastic"`) instead of the mean (`final="mean"`, no JVP there).

`cov_ddim_table` replaces the JVP by a table of the batch-average it estimates:
`E_z Cov[x | z_t] = E (x - x_hat)(x - x_hat)^T` (law of total variance), measured once per model
on data as the DCT spectrum of the denoiser's error (`measure_posterior_spectrum`): one forward
per step, no JVP; without data, `calibrate_posterior_spectrum` builds the table from the model
alone (the batch-pooled JVP spectra along the sampler's own trajectory, once per model). `run_cov`
is the step loop that `cov_dpmpp.py` reuses on 2M's mean path.

NFE (paper convention: a forward with its JVP is one evaluation) = steps; JVPs = steps
(steps - 1 with `final="mean"`). The JVP runs with PyTorch's math attention kernel
(`sdpa_kernel(SDPBackend.MATH)`: the fused kernels have no forward-mode AD). Levels may differ
per example (or per leading dim, e.g. per frame) with `pooling="example"` but must be constant
over the pooled dims `[C, H, W]`: the DCT structure assumes one noise level per image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..diffusion.dct import dct_matrix, radial_bands
from ..diffusion.parameterization import (
    Denoise,
    alpha_sigma,
    broadcast_logsnr,
    eps_from_x,
    level_for,
)
from ..diffusion.transitions import ddim_step, one_minus_snr_ratio
from .addim import VarianceTable, analytic_x_var, noise_like
from .grids import check_level_per_image, prepare_grid
from .registry import Callback, register_sampler

VARIANTS = ("stochastic", "deterministic")
FINALS = ("stochastic", "deterministic", "mean")
PROBES = ("rademacher", "gaussian")
POOLINGS = ("batch", "example", "profile")
DRAWS = ("jvp", "diagonal")


@dataclass(frozen=True)
class BandBasis:
    """The orthonormal 2-D DCT of `[..., C, H, W]` and averages over channels and radial bands
    (`bands=None`: every coefficient separate)."""

    mh: Tensor
    mw: Tensor
    bands: Tensor | None  # one-hot [H * W, num_bands] (None: no band pooling)

    @classmethod
    def for_shape(
        cls,
        shape: tuple[int, ...],
        num_bands: int | None = 8,
        *,
        device=None,
        dtype: torch.dtype = torch.float32,
    ) -> BandBasis:
        if len(shape) < 4:
            raise ValueError(f"cov_ddim needs image samples [B, ..., C, H, W], got shape {shape}")
        h, w = shape[-2:]
        onehot = None
        if num_bands is not None:
            if not isinstance(num_bands, int) or num_bands < 1:
                raise ValueError(f"num_bands must be a positive int or None, got {num_bands!r}")
            onehot = torch.nn.functional.one_hot(radial_bands(h, w, num_bands).flatten(), num_bands)
            onehot = onehot[:, onehot.sum(0) > 0].to(device=device, dtype=dtype)  # no empty bands
        m = {n: dct_matrix(n, dtype=dtype, device=device) for n in (h, w)}
        return cls(m[h], m[w], onehot)

    def to_freq(self, x: Tensor) -> Tensor:
        return self.mh @ x @ self.mw.T

    def from_freq(self, c: Tensor) -> Tensor:
        return self.mh.T @ c @ self.mw

    def pool(self, e: Tensor) -> Tensor:
        """Means of `e [..., C, H, W]` over channels and bands: `[..., 1, num_bands]` (or
        `[..., 1, H, W]` without bands)."""
        if self.bands is None:
            return e.mean(-3, keepdim=True)
        return (e.flatten(-2) @ self.bands / self.bands.sum(0)).mean(-2, keepdim=True)

    def expand(self, band_values: Tensor, shape: torch.Size) -> Tensor:
        """Inverse of `pool` on constants: the per-coefficient map `[..., C, H, W]`."""
        if self.bands is None:
            return band_values.expand(shape)
        return (band_values @ self.bands.T).unflatten(-1, shape[-2:]).expand(shape)


def draw_probe(shape: torch.Size, probe: str, generator, like: Tensor) -> Tensor:
    """A probe in DCT coordinates: Rademacher (+-1) or standard normal."""
    if probe == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
        return (2 * bits - 1).to(like.dtype)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def tweedie_response(
    denoise: Denoise, z: Tensor, logsnr: Tensor, basis: BandBasis, u: Tensor
) -> tuple[Tensor, Tensor]:
    """`(x_hat, F Cov F^T u)`: the posterior mean and the response of `Cov[x | z] = (sigma^2 /
    alpha) dx_hat/dz` to the probe `u` (DCT coordinates), from one JVP along `F^T u`."""
    level = level_for(logsnr, z)
    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no forward-mode AD
        x_hat, jv = torch.func.jvp(lambda y: denoise(y, level), (z,), (basis.from_freq(u),))
    alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, z))
    return x_hat, basis.to_freq(sigma**2 / alpha * jv)


def tweedie_probe(
    denoise: Denoise, z: Tensor, logsnr: Tensor, basis: BandBasis, u: Tensor
) -> tuple[Tensor, Tensor]:
    """`(x_hat, u * (F Cov F^T u))`: the posterior mean and the per-coefficient Hutchinson
    products of `Cov[x | z]` from one JVP along `F^T u`."""
    x_hat, response = tweedie_response(denoise, z, logsnr, basis, u)
    return x_hat, u * response


def response_noise(response: Tensor, c: Tensor, basis: BandBasis) -> Tensor:
    """Unit noise `n` (DCT coordinates) with `sqrt(c) * n = g * response`: the probe's response
    `w = F Cov F^T u`, rescaled per example and band so that its energy is the band's variance,
    `g_b^2 = mean_b(c) / mean_b(w^2)` (docs/methods/cov_ddim.md, "The shape of the draw"). Its
    covariance is `Cov G Cov`: `Cov` where `Cov` restricted to a band is a multiple of a
    projector (a flat DCT-diagonal band, one mode direction, a spatial mask), and zero wherever
    the posterior is certain. Without bands (`num_bands=None`) every coefficient is its own band
    and the draw is `sqrt(c) * sign(w)`: diagonal again, with Rademacher signs."""
    energy = basis.pool(response * response).clamp_min(torch.finfo(c.dtype).tiny)
    gain = basis.expand((basis.pool(c.expand(response.shape)) / energy).sqrt(), response.shape)
    root = c.sqrt()
    return torch.where(root > 0, gain * response / root.clamp_min(torch.finfo(c.dtype).tiny), 0)


def skew_signs(denoise: Denoise, z: Tensor, logsnr: Tensor, delta: Tensor, generator) -> Tensor:
    """Per-example factors `s` (mean 0, variance 1) that give the draw `s * delta` the posterior's
    skewness along `e = delta / |delta|` (docs/methods/cov_ddim.md, "A skewed draw"): with
    `r = sigma^2 / alpha`, second-order Tweedie gives the variance `v = r e.J e` and the third
    cumulant `k3 = r^2 e.(d^2 x_hat / dz^2)[e, e]` along `e` from one forward-over-forward JVP;
    `s` is two-point with that standardised skewness `g = k3 / v^1.5`, `+sqrt((1 - p)/p)` with
    probability `p = (1 - g / sqrt(g^2 + 4)) / 2` and `-sqrt(p / (1 - p))` otherwise. `g = 0`
    (a symmetric posterior, or `v <= 0`) gives random signs, the symmetric draw's law."""
    dims = tuple(range(1, z.ndim))
    norm = delta.square().sum(dims, keepdim=True).sqrt()
    e = delta / norm.clamp_min(torch.finfo(z.dtype).tiny)
    level = level_for(logsnr, z)

    def directional(y: Tensor) -> Tensor:
        return torch.func.jvp(lambda w: denoise(w, level), (y,), (e,))[1]

    with sdpa_kernel(SDPBackend.MATH):
        je, second = torch.func.jvp(directional, (z,), (e,))
    alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, z))
    ratio = sigma**2 / alpha  # one value per example, broadcast over its pixels
    v = (ratio * e * je).sum(dims)
    k3 = (ratio**2 * e * second).sum(dims)
    g = torch.where(v > 0, k3 / v.clamp_min(torch.finfo(z.dtype).tiny) ** 1.5, 0.0)
    p = (1 - g / torch.sqrt(g * g + 4)) / 2
    up = torch.rand(p.shape, generator=generator, device=z.device, dtype=z.dtype) < p
    s = torch.where(up, ((1 - p) / p).sqrt(), -(p / (1 - p)).sqrt())
    return s.view(-1, *(1,) * (z.ndim - 1))


def tweedie_band_covariance(
    denoise: Denoise, z: Tensor, logsnr: Tensor, basis: BandBasis, u: Tensor
) -> tuple[Tensor, Tensor]:
    """`(x_hat, c)`: the posterior mean and the band means (per example) of the DCT diagonal of
    `Cov[x | z]` from one JVP (`c`: `[..., 1, num_bands]`, unclipped)."""
    x_hat, products = tweedie_probe(denoise, z, logsnr, basis, u)
    return x_hat, basis.pool(products) / basis.pool(u * u)


def pooled_covariance(products: Tensor, u: Tensor, basis: BandBasis, pooling: str) -> Tensor:
    """The per-coefficient variance map `[B or 1, C, H, W]` from Hutchinson products:

    - "example": per example, averaged within bands and channels;
    - "batch": that, averaged over the batch too (one spectrum per level);
    - "profile": per-example band levels times the batch's per-coefficient shape within each
      band (`num_bands` sets how many per-example degrees of freedom there are).
    """
    uu = u * u
    if pooling == "example":
        return basis.expand(basis.pool(products) / basis.pool(uu), products.shape)
    shape = (1, *products.shape[1:])
    if pooling == "batch":
        band = basis.pool(products).mean(0, keepdim=True) / basis.pool(uu).mean(0, keepdim=True)
        return basis.expand(band, shape)
    full = BandBasis(basis.mh, basis.mw, None)
    profile = full.pool(products).mean(0, keepdim=True) / full.pool(uu).mean(0, keepdim=True)
    profile = profile.clamp_min(0)
    band_mean = basis.expand(basis.pool(profile), profile.shape)
    # within-band shape, <= the band's size: no overflow whatever the scale
    shape_k = torch.where(
        band_mean > 0, profile / band_mean.clamp_min(torch.finfo(u.dtype).tiny), 0
    )
    level = (basis.pool(products) / basis.pool(uu)).clamp_min(0)
    return basis.expand(level, products.shape) * shape_k


def cov_ddim_step(
    z: Tensor,
    x_hat: Tensor,
    c: Tensor,
    logsnr_t: Tensor,
    logsnr_s: Tensor,
    basis: BandBasis,
    variant: str,
    noise: Tensor | None = None,
    *,
    eta: float = 0.0,
    shaped: Tensor | None = None,
) -> Tensor:
    """One transition with the DCT-diagonal posterior variance map `c` (module docstring);
    `noise` (standard normal, DCT coordinates) is needed for the stochastic variant (unless
    `shaped` is given) or eta > 0. `shaped`: unit posterior noise (DCT coordinates; default
    `noise`): the stochastic variant's posterior draw is `F^T(sqrt(c) * shaped)`.

    `eta > 0` starts from DDIM(eta): `w^2 = eta^2 sigma_s^2 (1 - e^{l_t - l_s})` of the noise
    is fresh white noise, `eps_hat` keeps `sqrt(sigma_s^2 - w^2)`, and the slope in `x` becomes
    `kappa = alpha_s - alpha_t sqrt(sigma_s^2 - w^2) / sigma_t` (docs/methods/cov_ddim.md,
    "Covariance-aware DPM-Solver++(2M)", eq. M5)."""
    l_t, l_s = broadcast_logsnr(logsnr_t, z), broadcast_logsnr(logsnr_s, z)
    alpha_t, sigma_t = alpha_sigma(l_t)
    alpha_s, sigma_s = alpha_sigma(l_s)
    keep, white = sigma_s, None
    if eta > 0:
        white = (eta * sigma_s) ** 2 * one_minus_snr_ratio(l_t, l_s)
        keep = (sigma_s**2 - white).clamp_min(0).sqrt()
    kappa = alpha_s - alpha_t * keep / sigma_t
    eps_hat = eps_from_x(z, x_hat, l_t)
    if variant == "stochastic":
        out = alpha_s * x_hat + keep * eps_hat
        post = noise if shaped is None else shaped
        if white is None:
            return out + kappa * basis.from_freq(c.sqrt() * post)
        if shaped is None:
            return out + basis.from_freq((white + kappa**2 * c).sqrt() * noise)
        return out + basis.from_freq(kappa * c.sqrt() * shaped + white.sqrt() * noise)
    e = basis.to_freq(eps_hat)
    energy = basis.pool(e * e).clamp_min(torch.finfo(z.dtype).tiny)
    added = basis.pool(c.expand(z.shape)) / energy
    scale = (keep**2 + kappa**2 * basis.expand(added, z.shape)).sqrt()
    if white is None:
        return alpha_s * x_hat + basis.from_freq(scale * e)
    return alpha_s * x_hat + basis.from_freq(scale * e + white.sqrt() * noise)


def check_rules(variant: str, final: str | None) -> str:
    """Validate `variant` and `final`; returns the last step's rule (`final=None`: the variant)."""
    final = variant if final is None else final
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if final not in FINALS:
        raise ValueError(f"final must be one of {FINALS}, got {final!r}")
    return final


Estimate = Callable[[Tensor, Tensor], tuple[Tensor, ...]]
"""`(z, l_t) -> (x_hat, variance map)` or `(x_hat, variance map, unit posterior noise)`: one
denoiser call (with or without a JVP); the noise, if given, shapes the stochastic draw
(`cov_ddim_step`'s `shaped`)."""


def run_cov(
    denoise: Denoise,
    z: Tensor,
    grid: Tensor,
    estimate: Estimate,
    basis: BandBasis,
    variant: str,
    final: str,
    generator: torch.Generator | None,
    callback: Callback | None,
    *,
    extrapolation: Tensor | None = None,
    cov_weights: list[float] | None = None,
    eta: float = 0.0,
) -> Tensor:
    """The covariance-aware step loop on a prepared grid. Step `i` takes `x_hat` and the variance
    map `c` from `estimate`, or only `x_hat` from a plain forward where no covariance is used (a
    `final="mean"` last step, `cov_weights[i] = 0`); forms the data estimate `x_bar = x_hat +
    extrapolation[i] (x_hat - x_hat_{i-1})` (None: DDIM's mean path, `x_bar = x_hat`); and moves
    by `cov_ddim_step` with `cov_weights[i] * c` (None: weight 1), or by DDIM(eta)."""
    steps = grid.shape[0] - 1
    x_prev = None
    for i in range(steps):
        l_t, l_s = grid[i], grid[i + 1]
        rule = final if i == steps - 1 else variant
        weight = 1.0 if cov_weights is None else cov_weights[i]
        plain = rule == "mean" or weight == 0
        out = (denoise(z, level_for(l_t, z)), None) if plain else estimate(z, l_t)
        x_hat, c, shaped = out[0], out[1], (out[2] if len(out) > 2 else None)
        x_bar = x_hat
        if extrapolation is not None and x_prev is not None:
            x_bar = x_hat + broadcast_logsnr(extrapolation[i], z) * (x_hat - x_prev)
        noise = None
        if (not plain and rule == "stochastic" and shaped is None) or eta > 0:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        if plain:
            z = ddim_step(z, x_bar, l_t, l_s, eta=eta, noise=noise)
        else:
            c = c if weight == 1 else weight * c
            z = cov_ddim_step(z, x_bar, c, l_t, l_s, basis, rule, noise, eta=eta, shaped=shaped)
        if callback is not None:
            callback({"i": i, "z": z, "x_hat": x_hat, "logsnr": l_t})
        x_prev = x_hat
    return z


def bounded_trace(c: Tensor, x_hat: Tensor, data_bound: float) -> Tensor:
    """The variance map `c` scaled down, per example, so that its trace is at most
    `sum_i (b^2 - x_hat_i^2)`: for data in `[-b, b]` each pixel's posterior variance is at most
    `(b - m)(b + m)` around its posterior mean `m` (the Bhatia-Davis inequality), so the exact
    `Cov[x | z]` obeys this bound whatever the data; a trained net's Jacobian need not, and at
    high noise its errors are amplified by `sigma^2 / alpha` (docs/methods/cov_ddim.md, "Trained
    nets: the Jacobian at high noise"). The DCT is orthonormal: the trace is the same in both
    bases. `c` `[B or 1, C, H, W]` -> `[B, C, H, W]`."""
    budget = (data_bound**2 - x_hat.square()).clamp_min(0).flatten(1).sum(1)
    total = c.expand(x_hat.shape).flatten(1).sum(1)
    scale = torch.where(total > budget, budget / total.clamp_min(torch.finfo(c.dtype).tiny), 1.0)
    return c * scale.view(-1, *(1,) * (x_hat.ndim - 1))


def tweedie_estimator(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    pooling: str,
    num_bands: int | None,
    probe: str = "rademacher",
    prior_var: float | Tensor | None = None,
    data_bound: float | None = None,
    draw: str = "diagonal",
    skew: bool = False,
    generator: torch.Generator | None,
) -> tuple[BandBasis, Estimate]:
    """Validate the JVP options (on a prepared grid) and return the basis and the estimator:
    one forward+JVP, Hutchinson products pooled per `pooling`, clipped to `[0, prior_var]` and,
    with `data_bound`, to the trace the data range allows (`bounded_trace`); `draw="jvp"` also
    returns the probe's rescaled response as the posterior noise (`response_noise`),
    `"diagonal"` leaves the draw to independent Gaussian coefficients; `skew` (with `"jvp"`)
    gives that draw the posterior's skewness along itself (`skew_signs`)."""
    if data_bound is not None and not data_bound > 0:
        raise ValueError(f"data_bound must be positive or None, got {data_bound!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    if draw not in DRAWS:
        raise ValueError(f"draw must be one of {DRAWS}, got {draw!r}")
    if skew and draw != "jvp":
        raise ValueError(f"skew=True needs draw='jvp' (it skews that draw), got draw={draw!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling != "example" and logsnrs.ndim > 1:
        raise ValueError(f"pooling={pooling!r} needs one level for the whole batch (a 1-D grid)")
    basis = BandBasis.for_shape(tuple(z.shape), num_bands, device=z.device, dtype=z.dtype)
    check_level_per_image(logsnrs[0], z)
    upper = None if prior_var is None else torch.as_tensor(prior_var, dtype=z.dtype).to(z.device)

    def estimate(z: Tensor, l_t: Tensor) -> tuple[Tensor, ...]:
        u = draw_probe(z.shape, probe, generator, z)
        x_hat, response = tweedie_response(denoise, z, l_t, basis, u)
        c = pooled_covariance(u * response, u, basis, pooling).clamp_min(0)
        c = c if upper is None else torch.minimum(c, upper)
        c = c if data_bound is None else bounded_trace(c, x_hat, data_bound)
        if draw == "diagonal":
            return x_hat, c
        noise = response_noise(response, c, basis)
        if skew:
            delta = basis.from_freq(c.sqrt() * noise)
            noise = noise * skew_signs(denoise, z, l_t, delta, generator)
        return x_hat, c, noise

    return basis, estimate


def table_estimator(
    denoise: Denoise, z: Tensor, table: VarianceTable | None
) -> tuple[BandBasis, Estimate]:
    """The basis and the JVP-free estimator: one forward and the tabulated spectrum at `l_t`
    (None: aDDIM's analytic `x_var`, flat over frequencies)."""
    basis = BandBasis.for_shape(tuple(z.shape), None, device=z.device, dtype=z.dtype)

    def estimate(z: Tensor, l_t: Tensor) -> tuple[Tensor, Tensor]:
        x_hat = denoise(z, level_for(l_t, z))
        if table is None:
            return x_hat, broadcast_logsnr(analytic_x_var(l_t), z)
        c = table(l_t)  # [*level, 1, H, W]
        return x_hat, c if l_t.ndim else c.unsqueeze(0)

    return basis, estimate


@register_sampler(
    "cov_ddim",
    # with `skew` each step adds a forward-over-forward JVP, charged as two JVPs
    jvps=lambda steps, final=None, skew=False, **_: (steps - (final == "mean")) * (1 + 2 * skew),
    stochastic=True,
)
def sample_cov_ddim(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    variant: str = "stochastic",
    final: str | None = None,
    pooling: str = "profile",
    num_bands: int | None = 8,
    probe: str = "rademacher",
    prior_var: float | Tensor | None = None,
    data_bound: float | None = None,
    draw: str = "jvp",
    skew: bool = False,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Covariance-aware DDIM (one forward+JVP per step). NFE = steps, JVPs = steps.

    `variant`: "stochastic" | "deterministic" for the steps; `final`: the last step's rule,
    "stochastic" | "deterministic" | "mean" (default: the variant). The DCT-diagonal variance is
    estimated per coefficient and averaged per `pooling` ("batch" | "example" | "profile", see
    `pooled_covariance`) over `num_bands` radial bands (None: no band averaging) and over
    channels; `probe`: "rademacher" | "gaussian"; `prior_var`: upper clip (float or
    broadcastable per-coefficient tensor; None: none); `data_bound`: the data lie in `[-b, b]`,
    so the estimated trace is capped at `sum_i (b^2 - x_hat_i^2)` (`bounded_trace`; None: no
    cap; `difflab.api.sample` passes the model's `clip_x`, 1 for the shipped models: without it
    the Jacobian's errors at high noise ruin samples of trained nets). `draw`: the stochastic
    posterior draw, "jvp" (the probe's Jacobian response rescaled per band to the estimated
    variance: the posterior's own directions, no noise where it is certain; `response_noise`)
    or "diagonal" (independent Gaussian DCT coefficients, the default before issue 16: it turns
    the between-mode and spatially local parts of the covariance into stationary noise; docs/
    methods/cov_ddim.md, "The shape of the draw"). Defaults: measured on the exact
    oracles (results/samplers/notes.md): "profile" pooling with 8 bands (per-example band
    levels, so examples of narrow and broad modes each get their own scale: docs/methods/
    cov_ddim.md, "Mode weights"; it was "batch" per coefficient before issue 16). "batch" and
    "profile" couple the examples of a batch through the pooled estimate (use "example" with
    `num_bands` of 8-16 for batch-independent samples). `skew` (off by default): each draw
    gets the posterior's skewness along its own direction from the third cumulant (one more
    forward-over-forward JVP per step, counted as two JVPs; `skew_signs`).
    """
    final = check_rules(variant, final)
    grid = prepare_grid(z, logsnrs)
    basis, estimate = tweedie_estimator(
        denoise, z, grid, pooling=pooling, num_bands=num_bands, probe=probe,
        prior_var=prior_var, data_bound=data_bound, draw=draw, skew=skew, generator=generator,
    )  # fmt: skip
    return run_cov(denoise, z, grid, estimate, basis, variant, final, generator, callback)


# ----------------------------------------------------------------------------- without a JVP
@torch.no_grad()
def measure_posterior_spectrum(
    denoise: Denoise,
    data: Tensor,
    logsnrs: Tensor,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 512,
) -> VarianceTable:
    """The DCT diagonal of the *average* posterior covariance at each level, from data:
    `E_z Cov[x | z] = E (x - x_hat(z))(x - x_hat(z))^T` (law of total variance), so per DCT
    coefficient `k` the table holds `mean over data of (F (x - x_hat))_k^2` (channels averaged):
    `[n, 1, H, W]` at the increasing finite `logsnrs`."""
    if not isinstance(data, Tensor) or data.ndim < 4 or data.shape[0] < 1:
        raise ValueError("data must be image tensors [N, ..., C, H, W] with N >= 1")
    logsnrs = torch.as_tensor(logsnrs, dtype=torch.float64)
    if not torch.isfinite(logsnrs).all():
        raise ValueError("logsnrs must be finite")
    basis = BandBasis.for_shape(tuple(data.shape), None, device=data.device, dtype=data.dtype)
    values = []
    for level in logsnrs:
        total = 0.0
        for x in data.split(batch_size):
            eps = noise_like(x, generator)
            lvl = level.to(device=x.device, dtype=x.dtype).expand(x.shape[0])
            alpha, sigma = alpha_sigma(broadcast_logsnr(lvl, x))
            r = basis.to_freq(x - denoise(alpha * x + sigma * eps, lvl)).double()
            total = total + basis.pool(r * r).flatten(0, -4).sum(0)
        values.append(total / data[..., 0, 0, 0].numel())
    return VarianceTable(logsnrs, torch.stack(values))


def calibrate_posterior_spectrum(
    denoise: Denoise,
    shape: tuple[int, ...],
    logsnrs: Tensor,
    *,
    num: int = 256,
    data_bound: float | None = None,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> VarianceTable:
    """A posterior-spectrum table from the model alone (no data): `num` samples run through
    `cov_ddim` on the increasing finite `logsnrs` (then +inf), and the batch-pooled Tweedie
    spectrum it estimates at each level (one forward+JVP per level) is the table. On the true
    marginal its expectation is `E_z Cov[x | z]`, what `measure_posterior_spectrum` measures on
    data; here `z` comes from the sampler's own trajectory. Cost: `len(logsnrs)` JVPs on `num`
    examples, once per model (cache the table: `VarianceTable(logsnrs, values)`). `data_bound`:
    each example's estimate capped to the trace the data range allows (`bounded_trace`) before
    the average; use it for a trained net (`cov_ddim`'s option of the same name)."""
    logsnrs = torch.as_tensor(logsnrs, dtype=torch.float64)
    if logsnrs.ndim != 1 or not torch.isfinite(logsnrs).all() or logsnrs.shape[0] < 2:
        raise ValueError("logsnrs must be at least 2 finite increasing levels [n]")
    if not isinstance(num, int) or num < 2:
        raise ValueError(f"num must be an int >= 2, got {num!r}")
    z = torch.randn((num, *shape), generator=generator, device=device, dtype=dtype)
    grid = prepare_grid(z, torch.cat([logsnrs, torch.tensor([torch.inf], dtype=torch.float64)]))
    basis, estimate = tweedie_estimator(
        denoise,
        z,
        grid,
        pooling="batch",
        num_bands=None,
        data_bound=data_bound,
        generator=generator,
    )
    values = []
    for i in range(logsnrs.shape[0]):
        x_hat, c = estimate(z, grid[i])
        # one map for the batch, or one per example when capped: their mean; channels are pooled
        values.append(c.mean(0)[..., :1, :, :].detach().double().cpu())
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = cov_ddim_step(z, x_hat, c, grid[i], grid[i + 1], basis, "stochastic", noise).detach()
    return VarianceTable(logsnrs, torch.stack(values))


@register_sampler("cov_ddim_table", stochastic=True)
def sample_cov_ddim_table(
    denoise: Denoise,
    z: Tensor,
    logsnrs: Tensor,
    *,
    table: VarianceTable | None = None,
    variant: str = "stochastic",
    final: str | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Covariance-aware DDIM with a tabulated DCT posterior spectrum instead of a JVP.
    NFE = steps, no JVPs.

    `table`: `measure_posterior_spectrum` of the model on data (the batch-pooled Tweedie
    estimate `cov_ddim` makes with a JVP has this expectation); None: aDDIM's analytic
    `0.1 / (2 + e^logsnr)`, flat over frequencies. `variant`/`final` as in `cov_ddim`.
    Works with per-example levels.
    """
    final = check_rules(variant, final)
    grid = prepare_grid(z, logsnrs)
    basis, estimate = table_estimator(denoise, z, table)
    return run_cov(denoise, z, grid, estimate, basis, variant, final, generator, callback)
