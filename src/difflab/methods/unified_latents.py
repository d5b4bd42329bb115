"""Unified Latents (Heek, Hoogeboom, Mensink & Salimans, 2026), in logsnr notation.

A deterministic encoder gives `z_clean = E(x)`; the latent handed on is noised to one fixed level
`l_0` (default 5): `z_0 = alpha_0 z_clean + sigma_0 eps`. The prior is a diffusion model over
latents whose forward process starts at `z_clean` and whose schedule *ends at* `l_0` (its
`logsnr_max`), so `z_0` is one of its levels; trained with the unweighted ELBO it bounds the
latent bitrate (docs/methods/unified_latents.md, eqs. R1-R4):

    rate(x) = KL(q(z_0 | x) || p(z_0))
           <= KL(q(z_1 | y) || N(0, I)) + 1/2 int_{l_min}^{l_0} e^l ||y - y_hat(z_l)||^2 dl
            = NELBO(z_0) - H(q(z_0 | x)),      H(q(z_0 | x)) = d_z / 2 log(2 pi e sigma_0^2),

with `y = z_clean` and `y_hat` the prior's denoiser.

The decoder is a pixel diffusion model `x_hat(x_t, l_t; z_0)` trained with the sigmoid-weighted
ELBO times the loss factor `c`; one training step draws separate `(t, eps)` for the prior and
the decoder and minimises `L_z + c L_x` (both in nats summed over dimensions, divided by the
number of pixel dimensions) over encoder, prior and decoder together. Stage 2 freezes the
encoder and decoder and trains a base model on the latents (sigmoid weighting, schedule ending at
`l_0`); sampling is base -> `z_0` (a grid that stops at `l_0`) -> decoder -> `x`, each through a
registered sampler.

Baselines of the same module (docs/methods/unified_latents.md, "Baselines"): the latent channel
`q(z_0 | x) = N(mean, diag(var))` is UL's fixed-noise channel (`mean = alpha_0 E(x)`,
`var = sigma_0^2`) or, with the net's `encoder_variance: learned`, the KL-autoencoder's
(`mean`, `log var` both from the encoder); the prior is the diffusion prior above or, with the
net's `prior: {arch: gaussian | standard_normal}`, a plain Gaussian (fitted diagonal variance, or
`N(0, I)`) whose rate `KL(q(z_0 | x) || p(z_0))` is closed form (`gaussian_rate`). `rate_weight`
(beta) multiplies the rate term: the KL-autoencoder's `beta`, 1 for UL.

Training methods: `unified_latents` (stage 1, net `unified_latents`) and `ul_base` (stage 2, net
`ul_base`, `method.kwargs.stage1` names the stage-1 checkpoint).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..diffusion.losses import Weighting, diffusion_loss, elbo_weight
from ..diffusion.parameterization import Denoise, as_denoiser, diffuse, prior_kl
from ..diffusion.schedules import Schedule, make_schedule
from ..eval.likelihood import elbo
from ..nets.latent import LatentBaseNet, UnifiedLatentsNet
from ..sampling.defaults import resolve_grid
from ..sampling.grids import uniform_t_grid
from ..sampling.registry import get_sampler
from ..train.checkpoint import load_model
from ..train.methods import MethodParts, method_options, register_training_method

DecoderKind = Literal["diffusion", "mse"]
LN2 = math.log(2.0)


@dataclass(frozen=True)
class ULConfig:
    """Stage-1 options (`method.kwargs` of `unified_latents`).

    `latent_logsnr`: the fixed level `l_0` of the encoder's output noise (the paper: 5).
    `prior_logsnr_min`, `prior_schedule`: the prior's schedule runs from `prior_logsnr_min` (noise)
    to `latent_logsnr` (its `logsnr_max`); `prior_prediction` its parameterization.
    `loss_factor`: `c` on the decoder's loss (the rate/distortion knob; the paper 1.3-2.1).
    `decoder`: `"diffusion"` (pixel diffusion with the `diffusion` section's schedule,
    parameterization and weighting, sigmoid with bias `b` in the paper) or `"mse"` (a
    deterministic decoder `x_hat(z_0)`, loss `c / 2 e^{mse_logsnr} ||x - x_hat||^2`: a Gaussian
    likelihood of variance `e^{-mse_logsnr}`). `time_sampling` of both diffusion losses.
    `rate_weight`: `beta` on the rate term (1: the bound as it is; the KL-autoencoder's weight).
    The prior's kind and the encoder's variance are the net's (`model.kwargs.prior`,
    `model.kwargs.encoder_variance`); the `prior_*` options concern a diffusion prior only.
    """

    latent_logsnr: float = 5.0
    prior_logsnr_min: float = -15.0
    prior_schedule: str = "cosine"
    prior_prediction: Literal["x", "eps", "v"] = "v"
    loss_factor: float = 1.5
    decoder: DecoderKind = "diffusion"
    mse_logsnr: float = 0.0
    time_sampling: Literal["uniform", "antithetic", "stratified"] = "stratified"
    rate_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("latent_logsnr", "prior_logsnr_min", "loss_factor", "mse_logsnr",
                     "rate_weight"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if not self.latent_logsnr > self.prior_logsnr_min:
            raise ValueError(
                f"latent_logsnr={self.latent_logsnr} lies outside the prior's range: the latent's "
                f"noise level must be below the prior's noisiest level, i.e. latent_logsnr > "
                f"prior_logsnr_min={self.prior_logsnr_min}"
            )
        if not self.loss_factor > 0:
            raise ValueError(
                f"loss_factor must be > 0, got {self.loss_factor} (at 0 the decoder is not "
                "trained and the encoder collapses to zero bits)"
            )
        if not self.rate_weight > 0:
            raise ValueError(
                f"rate_weight must be > 0, got {self.rate_weight} (without a rate term the "
                "latent's bits are free)"
            )
        if self.decoder not in ("diffusion", "mse"):
            raise ValueError(f"decoder must be 'diffusion' or 'mse', got {self.decoder!r}")
        if self.prior_prediction not in ("x", "eps", "v"):
            raise ValueError(f"prior_prediction must be x, eps or v, got {self.prior_prediction!r}")
        make_schedule(self.prior_schedule, **self.prior_range)  # unknown names fail here

    @property
    def prior_range(self) -> dict[str, float]:
        return {"logsnr_min": float(self.prior_logsnr_min), "logsnr_max": float(self.latent_logsnr)}

    def build_prior_schedule(self) -> Schedule:
        """The prior's schedule: `prior_schedule` over `[prior_logsnr_min, latent_logsnr]`."""
        return make_schedule(self.prior_schedule, **self.prior_range)


# --------------------------------------------------------------------------- the latent


def noisy_latent(z_clean: Tensor, latent_logsnr: float, eps: Tensor) -> Tensor:
    """`z_0 = alpha_0 z_clean + sigma_0 eps` at the fixed level `l_0`."""
    return diffuse(z_clean, eps, torch.tensor(latent_logsnr, dtype=z_clean.dtype))


def latent_entropy(latent_dims: int, latent_logsnr: float) -> float:
    """`H(q(z_0 | x)) = d_z / 2 log(2 pi e sigma_0^2)` nats, `sigma_0^2 = sigmoid(-l_0)`: the same
    for every `x` (deterministic encoder, fixed isotropic noise)."""
    sigma2 = 1.0 / (1.0 + math.exp(latent_logsnr))
    return 0.5 * latent_dims * math.log(2 * math.pi * math.e * sigma2)


@dataclass
class LatentSample:
    """The latent channel `q(z_0 | x) = N(mean, diag(exp(logvar)))` of a batch and one draw
    `z0` from it. Fixed variance (UL): `clean = y = E(x)`, `mean = alpha_0 y`,
    `logvar = log sigma_0^2`; learned variance (KL-autoencoder): `clean = mean` the encoder's
    mean, `logvar` its log-variance."""

    clean: Tensor
    mean: Tensor
    logvar: Tensor
    z0: Tensor
    learned: bool


def channel_stats(
    net: UnifiedLatentsNet, x: Tensor, options: ULConfig
) -> tuple[Tensor, Tensor, Tensor, bool]:
    """`(clean, mean, logvar, learned)` of `q(z_0 | x)` (no draw; see `LatentSample`)."""
    clean, logvar = net.encode_stats(x)
    if logvar is None:
        l0 = options.latent_logsnr
        alpha0 = math.sqrt(1.0 / (1.0 + math.exp(-l0)))
        log_sigma2 = -math.log1p(math.exp(l0))  # log sigmoid(-l_0)
        return clean, alpha0 * clean, torch.full_like(clean, log_sigma2), False
    return clean, clean, logvar, True


def encode_latent(
    net: UnifiedLatentsNet,
    x: Tensor,
    options: ULConfig,
    generator: torch.Generator | None = None,
) -> LatentSample:
    """Encode `x` and draw `z_0 ~ q(z_0 | x)` (one normal draw from `generator`)."""
    clean, mean, logvar, learned = channel_stats(net, x, options)
    eps = torch.randn(clean.shape, generator=generator, device=x.device, dtype=clean.dtype)
    if learned:
        z0 = mean + torch.exp(0.5 * logvar) * eps
    else:
        z0 = noisy_latent(clean, options.latent_logsnr, eps)
    return LatentSample(clean, mean, logvar, z0, learned)


def gaussian_rate(mean: Tensor, logvar: Tensor, prior_logvar: Tensor) -> Tensor:
    """`KL(N(mean, diag(e^logvar)) || N(0, diag(e^prior_logvar)))` in nats per example, summed
    over dimensions: `1/2 sum[(e^logvar + mean^2) e^-prior_logvar - 1 - logvar + prior_logvar]`
    (`prior_logvar` broadcasts over the batch)."""
    var_ratio = torch.exp(logvar - prior_logvar)
    kl = 0.5 * (var_ratio + mean.pow(2) * torch.exp(-prior_logvar) - 1 - logvar + prior_logvar)
    return kl.flatten(1).sum(1)


def learned_variance_correction(logvar: Tensor, latent_logsnr: float) -> Tensor:
    """`E[reconstruction] - H(q(z_0 | x)) = -1/2 sum(l_0 + logvar)` nats per example: what turns
    the diffusion prior's prior + diffusion terms on a drawn `z_0` into the rate of a
    learned-variance channel (the prior then models `z_0` itself, with VDM's Gaussian
    reconstruction of variance `e^{-l_0}` at its top level `l_0`)."""
    return -0.5 * (logvar + latent_logsnr).flatten(1).sum(1)


@dataclass
class LatentBits:
    """Per-example terms in nats: `rate` = the bound on `KL(q(z_0 | x) || p(z_0))`, `nelbo` =
    the bound on `E[-log p(z_0)]`, `entropy` = `H(q(z_0 | x))`; `rate = nelbo - entropy`."""

    rate: Tensor
    nelbo: Tensor
    entropy: float
    pixels: int

    @property
    def bits_per_pixel(self) -> Tensor:
        """`rate / (ln 2 * H * W)`: bits per image pixel (all colour channels of a pixel
        together)."""
        return self.rate / (LN2 * self.pixels)


def latent_bits(
    prior: Denoise,
    z_clean: Tensor,
    *,
    latent_logsnr: float,
    logsnr_min: float,
    pixels: int,
    num_t: int = 16,
    generator: torch.Generator | None = None,
) -> LatentBits:
    """The bitrate bound of the latents `z_clean` under the prior denoiser, from VDM's ELBO
    (`eval.likelihood.elbo`, continuous data, decoder level `l_0`).

    `elbo` bounds `-log p(z_clean)` for the density `p(y) = int p(z_0) N(y; z_0 / alpha_0,
    e^{-l_0} I) dz_0`; its reconstruction term is `-log N(z_clean; z_0 / alpha_0, e^{-l_0} I)`,
    whose mean is `d_z / 2 (1 + log 2 pi - l_0) = H(q(z_0 | x)) - d_z log alpha_0` (the change of
    variables `z_0 = alpha_0 y`). So `NELBO(z_0) = prior + diffusion + H`, and the rate is its
    prior and diffusion terms alone (the reconstruction term's noise is dropped: its mean is
    known exactly)."""
    terms = elbo(
        prior, z_clean, logsnr_min=logsnr_min, logsnr_max=latent_logsnr, num_t=num_t,
        bins=None, generator=generator,
    )  # fmt: skip
    rate = terms.prior + terms.diffusion
    entropy = latent_entropy(terms.num_dims, latent_logsnr)
    return LatentBits(rate, rate + entropy, entropy, pixels)


# --------------------------------------------------------------------------- the losses


def prior_loss(
    prior: Denoise,
    z_clean: Tensor,
    schedule: Schedule,
    *,
    time_sampling: str = "stratified",
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
) -> Tensor:
    """The prior's unweighted ELBO in nats per example (summed over latent dimensions):
    `KL(q(z_1 | z_clean) || N(0, I)) + E_t[1/2 (-dl/dt) e^l ||z_clean - z_hat||^2]` over the
    prior's schedule (which ends at `l_0`). One draw of `(t, eps)`, the same draws as `elbo`
    with `proposal=schedule`, `num_t=1`."""
    d = z_clean[0].numel()
    diffusion = diffusion_loss(
        prior, z_clean, schedule, elbo_weight, t=t, time_sampling=time_sampling,
        generator=generator,
    )  # fmt: skip
    return prior_kl(z_clean, schedule.logsnr_min) + d * diffusion


def rate_term(
    net: UnifiedLatentsNet,
    latent: LatentSample,
    options: ULConfig,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The rate `KL(q(z_0 | x) || p(z_0))` (a bound on it) in nats per example, as trained:

    - diffusion prior, fixed variance (UL): `prior_loss` on `z_clean` (one draw of `(t, eps)`);
    - diffusion prior, learned variance: `prior_loss` on the drawn `z_0` plus
      `learned_variance_correction` (the NELBO of `z_0` minus the entropy of `q(z_0 | x)`);
    - a Gaussian prior (`gaussian`, `standard_normal`): `gaussian_rate`, exact, no draw; in
      training mode a fitted prior first takes one running-average step towards the batch's
      `E_q[z_0^2]` (`GaussianLatentPrior.observe`)."""
    if net.config.prior_kind != "diffusion":
        if net.training:  # a fitted Gaussian moves towards this batch's E_q[z_0^2] first
            net.prior.observe((latent.logvar.exp() + latent.mean.pow(2)).mean(0))
        return gaussian_rate(latent.mean, latent.logvar, net.prior.log_variance(latent.mean))
    prior = as_denoiser(net.prior, options.prior_prediction)
    target = latent.z0 if latent.learned else latent.clean
    rate = prior_loss(
        prior, target, options.build_prior_schedule(), time_sampling=options.time_sampling,
        generator=generator,
    )  # fmt: skip
    if latent.learned:
        rate = rate + learned_variance_correction(latent.logvar, options.latent_logsnr)
    return rate


def latent_rate(
    net: UnifiedLatentsNet,
    x: Tensor,
    options: ULConfig,
    *,
    num_t: int = 16,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The rate of `x` for evaluation, nats per example: `latent_bits` (`num_t` stratified
    levels) for a diffusion prior, `gaussian_rate` (exact) for a Gaussian one."""
    clean, mean, logvar, learned = channel_stats(net, x, options)
    if net.config.prior_kind != "diffusion":
        return gaussian_rate(mean, logvar, net.prior.log_variance(mean))
    target = clean
    if learned:
        eps = torch.randn(clean.shape, generator=generator, device=x.device, dtype=clean.dtype)
        target = mean + torch.exp(0.5 * logvar) * eps
    bits = latent_bits(
        as_denoiser(net.prior, options.prior_prediction), target,
        latent_logsnr=options.latent_logsnr, logsnr_min=options.prior_logsnr_min, pixels=1,
        num_t=num_t, generator=generator,
    )  # fmt: skip
    if learned:
        return bits.rate + learned_variance_correction(logvar, options.latent_logsnr)
    return bits.rate


def decoder_denoiser(
    net: UnifiedLatentsNet, z0: Tensor, prediction: str, clip_x: float | None = None
) -> Denoise:
    """The decoder as an ordinary `Denoise` over pixels, with the noisy latent `z_0` bound in."""
    return as_denoiser(net, prediction, clip_x, latent=z0)


def mse_decode(net: UnifiedLatentsNet, z0: Tensor) -> Tensor:
    """The deterministic decoder of the `mse` baseline: the decoder net at input 0 and level 0,
    its raw output read as `x_hat(z_0)`."""
    c = net.config
    zeros = torch.zeros(z0.shape[0], *c.image_shape, dtype=z0.dtype, device=z0.device)
    return net(zeros, torch.zeros(z0.shape[0], dtype=z0.dtype, device=z0.device), latent=z0)


@dataclass
class ULTerms:
    """Per-example terms of one joint step: `prior` (nats, the rate bound `rate_term`),
    `decoder` (the weighted decoder loss times `c`, summed over pixels), `loss` =
    `(rate_weight * prior + decoder)` per pixel dimension (what the trainer minimises)."""

    prior: Tensor
    decoder: Tensor
    loss: Tensor


def ul_loss(
    net: UnifiedLatentsNet,
    x: Tensor,
    options: ULConfig,
    *,
    image_schedule: Schedule,
    weighting: Weighting,
    prediction: str,
    generator: torch.Generator | None = None,
) -> ULTerms:
    """One joint UL step: encode, draw `z_0 ~ q(z_0 | x)` (UL: noise to `l_0`), then the rate
    (`rate_term`: the prior's ELBO on `z_clean`, or a closed form) and the decoder's weighted
    loss given `z_0`, each diffusion loss with its own draws of `(t, eps)`."""
    latent = encode_latent(net, x, options, generator)
    z0 = latent.z0
    l_z = rate_term(net, latent, options, generator=generator)
    d = x[0].numel()
    if options.decoder == "mse":
        err = (x - mse_decode(net, z0)).float().pow(2).flatten(1).sum(1)
        l_x = options.loss_factor * 0.5 * math.exp(options.mse_logsnr) * err
    else:
        per_dim = diffusion_loss(
            decoder_denoiser(net, z0, prediction), x, image_schedule, weighting,
            time_sampling=options.time_sampling, generator=generator,
        )  # fmt: skip
        l_x = options.loss_factor * d * per_dim
    return ULTerms(l_z, l_x, (options.rate_weight * l_z + l_x) / d)


# --------------------------------------------------------------------------- sampling


def latent_grid(schedule: Schedule, steps: int) -> Tensor:
    """Uniform-t levels on `schedule` that stop at its `logsnr_max = l_0`: a sampler on it
    returns `z` at the latent's level, a draw of `z_0` (not the clean-latent estimate)."""
    return uniform_t_grid(schedule, steps, final=schedule.logsnr_max)


def sample_latents(
    prior: Denoise,
    shape: tuple[int, ...],
    schedule: Schedule,
    *,
    num: int,
    sampler: str = "ddim",
    steps: int = 32,
    options: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """`num` draws of `z_0` from a latent denoiser (the stage-1 prior or the stage-2 base) with
    the registered `sampler` over `latent_grid(schedule, steps)`."""
    spec = get_sampler(sampler)
    spec.check_options(dict(options or {}))
    z = torch.randn(num, *shape, generator=generator, device=device)
    return spec.fn(prior, z, latent_grid(schedule, steps), generator=generator, **(options or {}))


def sample_z0(
    stage1: UnifiedLatentsNet,
    latent_denoiser: Denoise | None,
    latent_schedule: Schedule | None,
    *,
    num: int,
    sampler: str = "ddim",
    steps: int = 32,
    options: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """`num` draws of the latent the decoder takes, `z_0`:

    - `latent_denoiser` None (stage 1 with a Gaussian prior): `z_0 ~ N(0, diag(s^2))`;
    - fixed-variance encoder: the sampler's output at the schedule's end `l_0` (`sample_latents`);
    - learned-variance encoder: the denoiser models `z_0` itself, as VDM's density with a
      Gaussian reconstruction at the schedule's top `l`: `z_0 = z_l / alpha_l + e^{-l/2} eps`."""
    shape = stage1.config.latent_shape
    if latent_denoiser is None:
        noise = torch.randn(num, *shape, generator=generator, device=device)
        return noise * torch.exp(0.5 * stage1.prior.log_variance(noise))
    if latent_schedule is None:
        raise ValueError("latent_schedule is needed with a latent denoiser")
    z = sample_latents(
        latent_denoiser, shape, latent_schedule, num=num, sampler=sampler, steps=steps,
        options=options, generator=generator, device=device,
    )  # fmt: skip
    if stage1.config.encoder_variance == "learned":
        top = latent_schedule.logsnr_max
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = z * math.sqrt(1.0 + math.exp(-top)) + math.exp(-0.5 * top) * noise
    return z


def stage1_latent_denoiser(net: UnifiedLatentsNet, options: ULConfig) -> Denoise | None:
    """The stage-1 prior as a latent `Denoise` (None for a Gaussian prior)."""
    if net.config.prior_kind != "diffusion":
        return None
    return as_denoiser(net.prior, options.prior_prediction)


def decode(
    net: UnifiedLatentsNet,
    z0: Tensor,
    options: ULConfig,
    *,
    image_schedule: Schedule,
    prediction: str,
    sampler: str = "ddim",
    steps: int = 32,
    grid: str | Tensor = "default",
    sampler_options: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`x ~ p(x | z_0)`: the diffusion decoder run by the registered `sampler` on its image
    schedule (`x_hat` clipped to [-1, 1]), or the `mse` decoder's `x_hat(z_0)`; in [-1, 1]."""
    if options.decoder == "mse":
        return mse_decode(net, z0).clamp(-1, 1)
    spec = get_sampler(sampler)
    spec.check_options(dict(sampler_options or {}))
    c = net.config
    noise = torch.randn(z0.shape[0], *c.image_shape, generator=generator, device=z0.device)
    logsnrs = resolve_grid(grid, sampler, image_schedule, steps)
    denoise = decoder_denoiser(net, z0, prediction, clip_x=1.0)
    x = spec.fn(denoise, noise, logsnrs, generator=generator, **(sampler_options or {}))
    return x.clamp(-1, 1)


def generate_images(
    stage1: UnifiedLatentsNet,
    options: ULConfig,
    *,
    latent_denoiser: Denoise | None,
    latent_schedule: Schedule | None,
    image_schedule: Schedule,
    prediction: str,
    num: int,
    sampler: str = "ddim",
    steps: int = 32,
    sampler_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> Tensor:
    """base (or prior) -> `z_0` (`sample_z0`) -> decoder -> `x`, in batches; `[num, C, H, W]`
    on the CPU."""
    device = next(stage1.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    out = []
    with torch.inference_mode():
        for lo in range(0, num, batch_size):
            n = min(batch_size, num - lo)
            z0 = sample_z0(
                stage1, latent_denoiser, latent_schedule, num=n, sampler=sampler, steps=steps,
                options=sampler_options, generator=gen, device=device,
            )  # fmt: skip
            x = decode(
                stage1, z0, options, image_schedule=image_schedule, prediction=prediction,
                sampler=sampler, steps=steps, sampler_options=sampler_options, generator=gen,
            )  # fmt: skip
            out.append(x.float().cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------- evaluation


def psnr(x: Tensor, x_rec: Tensor) -> Tensor:
    """Per-image PSNR in dB for data in [-1, 1] (peak-to-peak 2): `10 log10(4 / MSE)`."""
    mse = (x.double() - x_rec.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-20))


def reconstruct(
    net: UnifiedLatentsNet,
    x: Tensor,
    options: ULConfig,
    *,
    image_schedule: Schedule,
    prediction: str,
    sampler: str = "ddim",
    steps: int = 32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`x -> z_0 ~ q(z_0 | x) (fresh noise) -> decoder -> x_rec`."""
    z0 = encode_latent(net, x, options, generator).z0
    return decode(
        net, z0, options, image_schedule=image_schedule, prediction=prediction, sampler=sampler,
        steps=steps, generator=generator,
    )  # fmt: skip


def stage1_metrics(
    net: UnifiedLatentsNet,
    options: ULConfig,
    images: Tensor,
    *,
    image_schedule: Schedule,
    prediction: str,
    sampler: str = "ddim",
    steps: int = 32,
    num_t: int = 16,
    seed: int = 0,
    batch_size: int = 250,
) -> dict[str, float]:
    """Reconstruction PSNR (dB, mean over images) and the latent bitrate bound (`latent_rate`;
    bits per pixel, mean; and nats per latent dimension) of `images` (`[N, C, H, W]` in
    [-1, 1])."""
    device = next(net.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    pixels = images.shape[-1] * images.shape[-2]
    latent_dims = math.prod(net.config.latent_shape)
    psnrs, bpp, rates = [], [], []
    with torch.inference_mode():
        for batch in images.split(batch_size):
            x = batch.to(device)
            rate = latent_rate(net, x, options, num_t=num_t, generator=gen)
            bpp.append(rate.cpu() / (LN2 * pixels))
            rates.append(rate.cpu() / latent_dims)
            rec = reconstruct(
                net, x, options, image_schedule=image_schedule, prediction=prediction,
                sampler=sampler, steps=steps, generator=gen,
            )  # fmt: skip
            psnrs.append(psnr(x, rec).cpu())
    return {
        "psnr": float(torch.cat(psnrs).mean()),
        "bits_per_pixel": float(torch.cat(bpp).mean()),
        "bits_per_pixel_sem": float(torch.cat(bpp).std() / math.sqrt(len(images))),
        "latent_nats_per_dim": float(torch.cat(rates).mean()),
        "num_images": len(images),
    }


# --------------------------------------------------------------------------- training methods


def _unwrap(module: nn.Module) -> nn.Module:
    """The plain module under `torch.compile` (`_orig_mod`); UL calls the encoder, prior and
    decoder separately, so it trains in one process (no DDP)."""
    return getattr(module, "_orig_mod", module)


def _check_net(net: nn.Module, cls: type, name: str) -> None:
    if not isinstance(_unwrap(net), cls):
        raise ValueError(
            f"config key model.name: training method {name!r} needs the net "
            f"{cls.arch!r}, got {type(net).__name__}"
        )


def _build_stage1(cfg: TrainConfig, net: nn.Module, dataset: Any) -> MethodParts:
    options: ULConfig = method_options(cfg)
    _check_net(net, UnifiedLatentsNet, "unified_latents")
    image_schedule = cfg.diffusion.build_schedule()
    weighting = cfg.diffusion.build_weighting()
    prediction = cfg.diffusion.prediction
    prior_schedule = options.build_prior_schedule()

    def loss_fn(models: Mapping[str, nn.Module], batch, generator: torch.Generator) -> Tensor:
        x, _ = batch
        return ul_loss(
            _unwrap(models["net"]), x, options, image_schedule=image_schedule,
            weighting=weighting, prediction=prediction, generator=generator,
        ).loss  # fmt: skip

    def sample_fn(model: nn.Module, noise: Tensor, labels: Tensor | None) -> Tensor:
        model = _unwrap(model)
        return generate_images(
            model, options, latent_denoiser=stage1_latent_denoiser(model, options),
            latent_schedule=prior_schedule,
            image_schedule=image_schedule, prediction=prediction, num=noise.shape[0],
            steps=max(1, cfg.train.sample_steps), seed=cfg.train.seed,
        ).to(noise.device)  # fmt: skip

    return MethodParts(loss_fn, sample_fn=sample_fn)


@dataclass(frozen=True)
class ULBaseConfig:
    """Stage-2 options (`method.kwargs` of `ul_base`): `stage1` the stage-1 checkpoint (run
    directory, checkpoint folder or exported file; frozen, reloaded on every start), `stage1_ema`
    its EMA weights (True) or raw ones."""

    stage1: str = ""
    stage1_ema: bool = True

    def __post_init__(self) -> None:
        if not self.stage1:
            raise ValueError("stage1 must name the stage-1 UL checkpoint (a run directory, "
                             "checkpoint folder or exported .safetensors)")  # fmt: skip


def load_stage1(
    path: str | Path, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[UnifiedLatentsNet, TrainConfig, ULConfig]:
    """The frozen stage-1 net, its config and its UL options; errors name the path."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"stage-1 checkpoint {str(path)!r} does not exist")
    net, cfg = load_model(path, ema=ema, device=str(device))
    if cfg.method.name != "unified_latents" or not isinstance(net, UnifiedLatentsNet):
        raise ValueError(
            f"{path} is not a stage-1 Unified Latents model (method {cfg.method.name!r})"
        )
    return net, cfg, ULConfig(**cfg.method.kwargs)


def check_base_matches(cfg: TrainConfig, base: LatentBaseNet, stage1_options: ULConfig,
                       stage1: UnifiedLatentsNet) -> None:  # fmt: skip
    """The base net has the latent shape and (fixed-variance encoder) its schedule ends at the
    latent's level; a learned-variance encoder's base models the drawn `z_0` itself, to the
    schedule's top."""
    if tuple(base.config.latent_shape) != tuple(stage1.config.latent_shape):
        raise ValueError(
            f"config key model.kwargs: the base net's latent shape {base.config.latent_shape} "
            f"(latent_channels, latent_resolution) differs from the stage-1 latents "
            f"{stage1.config.latent_shape}"
        )
    images = (base.config.in_channels, base.config.resolution, base.config.resolution)
    if images != tuple(stage1.config.image_shape):
        raise ValueError(
            f"config key model.kwargs: the base net's image shape {images} (image_channels, "
            f"image_resolution) differs from the stage-1 images {stage1.config.image_shape}"
        )
    top = cfg.diffusion.build_schedule().logsnr_max
    if stage1.config.encoder_variance == "fixed" and abs(top - stage1_options.latent_logsnr) > 1e-6:
        raise ValueError(
            f"config key diffusion.schedule_kwargs.logsnr_max: the base schedule must end at the "
            f"latent's level {stage1_options.latent_logsnr}, got {top}"
        )


def base_target(
    stage1: UnifiedLatentsNet,
    x: Tensor,
    options: ULConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """What the stage-2 base model learns: `z_clean` for a fixed-variance encoder (its sampler
    stops at `l_0` and returns a draw of `z_0`), a draw `z_0 ~ q(z_0 | x)` for a learned-variance
    encoder (the Stable-Diffusion recipe)."""
    if stage1.config.encoder_variance == "fixed":
        return stage1.encode(x)
    return encode_latent(stage1, x, options, generator).z0


def _build_stage2(cfg: TrainConfig, net: nn.Module, dataset: Any) -> MethodParts:
    options: ULBaseConfig = method_options(cfg)
    _check_net(net, LatentBaseNet, "ul_base")
    stage1, cfg1, ul = load_stage1(options.stage1, options.stage1_ema)
    check_base_matches(cfg, _unwrap(net), ul, stage1)
    schedule, weighting = cfg.diffusion.build_schedule(), cfg.diffusion.build_weighting()
    image_schedule = cfg1.diffusion.build_schedule()

    def loss_fn(models: Mapping[str, nn.Module], batch, generator: torch.Generator) -> Tensor:
        x, _ = batch
        with torch.no_grad():
            target = base_target(models["stage1"], x, ul, generator)
        return diffusion_loss(
            as_denoiser(models["net"], cfg.diffusion.prediction), target, schedule, weighting,
            time_sampling=cfg.diffusion.time_sampling, generator=generator,
        )  # fmt: skip

    def sample_fn(model: nn.Module, noise: Tensor, labels: Tensor | None) -> Tensor:
        return generate_images(
            stage1.to(noise.device), ul,
            latent_denoiser=as_denoiser(model, cfg.diffusion.prediction),
            latent_schedule=schedule, image_schedule=image_schedule,
            prediction=cfg1.diffusion.prediction, num=noise.shape[0],
            steps=max(1, cfg.train.sample_steps), seed=cfg.train.seed,
        ).to(noise.device)  # fmt: skip

    return MethodParts(loss_fn, extra_modules={"stage1": stage1}, sample_fn=sample_fn)


register_training_method("unified_latents", _build_stage1, ULConfig)
register_training_method("ul_base", _build_stage2, ULBaseConfig)
UL_METHODS = ("unified_latents", "ul_base")


# --------------------------------------------------------------------------- loaded models


@dataclass
class ULModel:
    """A loaded UL model ready to sample: the stage-1 net and options, the latent denoiser
    (stage 2: the base model; stage 1: the ELBO-trained prior, None for a Gaussian prior) with
    its schedule."""

    stage1: UnifiedLatentsNet
    options: ULConfig
    image_schedule: Schedule
    prediction: str
    latent_denoiser: Denoise | None
    latent_schedule: Schedule
    stage: int


def ul_model(net: nn.Module, cfg: TrainConfig) -> ULModel:
    """`ULModel` of a loaded net and its config (`api.LoadedModel.net`, `.config`)."""
    if cfg.method.name == "unified_latents":
        ul = ULConfig(**cfg.method.kwargs)
        return ULModel(
            net, ul, cfg.diffusion.build_schedule(), cfg.diffusion.prediction,
            stage1_latent_denoiser(net, ul), ul.build_prior_schedule(), 1,
        )  # fmt: skip
    if cfg.method.name == "ul_base":
        base = ULBaseConfig(**cfg.method.kwargs)
        device = next(net.parameters()).device
        stage1, cfg1, ul = load_stage1(base.stage1, base.stage1_ema, device)
        return ULModel(
            stage1, ul, cfg1.diffusion.build_schedule(), cfg1.diffusion.prediction,
            as_denoiser(net, cfg.diffusion.prediction), cfg.diffusion.build_schedule(), 2,
        )  # fmt: skip
    raise ValueError(f"not a Unified Latents model (method {cfg.method.name!r})")


def ul_generate(model: ULModel, *, num: int, sampler: str | None = None, steps: int | None = None,
                options: Mapping[str, Any] | None = None, seed: int = 0,
                batch_size: int = 256) -> Tensor:  # fmt: skip
    """`num` images from a loaded UL model (`sampler` default ddim, `steps` default 32)."""
    return generate_images(
        model.stage1, model.options, latent_denoiser=model.latent_denoiser,
        latent_schedule=model.latent_schedule, image_schedule=model.image_schedule,
        prediction=model.prediction, num=num, sampler=sampler or "ddim", steps=steps or 32,
        sampler_options=options, seed=seed, batch_size=batch_size,
    )  # fmt: skip


def sample_to_folder(
    model, folder: Path, *, num: int, seed: int = 0, overwrite: bool = False,
    sampler: str | None = None, steps: int | None = None, grid=None, options=None,
    guidance: float = 0.0, interval=None, batch_size: int = 256,
) -> dict[str, Any]:  # fmt: skip
    """`difflab sample` on a UL model (`api.METHOD_SAMPLERS`): base/prior -> `z_0` -> decoder,
    PNGs, a grid and `samples.json` in `folder`. `model` is an `api.LoadedModel`."""
    from ..fileio import write_json_atomic
    from ..images import save_image_grid, save_images

    if guidance != 0 or interval is not None:
        raise ValueError("--guidance: the UL models are unconditional")
    if grid not in (None, "default"):
        raise ValueError("--grid: UL samples the latents on uniform-t levels ending at l_0 "
                         "and the pixels on the sampler's default grid")  # fmt: skip
    folder = Path(folder)
    if folder.is_dir() and not overwrite and any(folder.glob("*.png")):
        raise ValueError(f"output folder {folder} holds earlier samples; pass --overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    ul = ul_model(model.net, model.config)
    start = time.perf_counter()
    images = ul_generate(ul, num=num, sampler=sampler, steps=steps, options=options, seed=seed,
                         batch_size=batch_size)  # fmt: skip
    seconds = time.perf_counter() - start
    for old in folder.glob("*.png"):
        old.unlink()
    save_images(images, folder, "{:05d}.png")
    save_image_grid(images[:256], folder / "grid.png", scale=2)
    record = {
        "checkpoint": str(model.path),
        "method": model.config.method.name,
        "stage": ul.stage,
        "sampler": sampler or "ddim",
        "steps": steps or 32,
        "latent_grid": "uniform_t ending at latent_logsnr",
        "latent_logsnr": ul.options.latent_logsnr,
        "decoder": ul.options.decoder,
        "prior": ul.stage1.config.prior_kind,
        "encoder_variance": ul.stage1.config.encoder_variance,
        "seed": seed,
        "num": num,
        "seconds": round(seconds, 3),
    }
    write_json_atomic(folder / "samples.json", record)
    record["summary"] = (
        f"{num} UL samples (stage {ul.stage}: latents -> z_0 at logsnr {ul.options.latent_logsnr}"
        f" -> {ul.options.decoder} decoder) with {record['sampler']} x{record['steps']} in "
        f"{seconds:.1f} s\nimages: {folder}/  grid: {folder / 'grid.png'}"
    )
    return record


def evaluate_ul(
    model, *, metrics: list[str], num: int, dataset: str, split: str, ref_num: int,
    seed: int = 0, sampler: str | None = None, steps: int | None = None, options=None,
    batch_size: int = 256, num_t: int = 16,
) -> dict[str, Any]:  # fmt: skip
    """`difflab eval` on a UL model: reconstruction PSNR and bits per pixel (bound) of the
    first `min(num, ref_num)` reference images, plus the feature `metrics` (`fd-lenet`, ...)
    of `num` generated images (base/prior -> `z_0` -> decoder)."""
    from ..eval.reference import reference_images
    from ..eval.scores import FeatureScorer

    ul = ul_model(model.net, model.config)
    record: dict[str, Any] = {"method": model.config.method.name, "stage": ul.stage}
    n = min(num, ref_num)
    device = next(ul.stage1.parameters()).device
    images = reference_images(dataset, split, n).float() / 127.5 - 1
    start = time.perf_counter()
    record.update(
        stage1_metrics(
            ul.stage1, ul.options, images.to(device), image_schedule=ul.image_schedule,
            prediction=ul.prediction, sampler=sampler or "ddim", steps=steps or 32,
            num_t=num_t, seed=seed,
        )
    )  # fmt: skip
    record["stage1_seconds"] = round(time.perf_counter() - start, 2)
    feature = [m for m in metrics if m != "elbo"]
    if feature:
        scorer = FeatureScorer(feature, dataset=dataset, split=split, ref_num=ref_num,
                               device=device)  # fmt: skip
        start = time.perf_counter()
        samples = ul_generate(ul, num=num, sampler=sampler, steps=steps, options=options,
                              seed=seed, batch_size=batch_size)  # fmt: skip
        record["sampling_seconds"] = round(time.perf_counter() - start, 2)
        record.update(scorer(samples))
    return record


__all__ = [
    "UL_METHODS",
    "LatentBits",
    "ULBaseConfig",
    "LatentSample",
    "ULConfig",
    "ULModel",
    "ULTerms",
    "base_target",
    "channel_stats",
    "decode",
    "decoder_denoiser",
    "encode_latent",
    "evaluate_ul",
    "gaussian_rate",
    "generate_images",
    "latent_bits",
    "latent_entropy",
    "latent_grid",
    "latent_rate",
    "learned_variance_correction",
    "load_stage1",
    "noisy_latent",
    "prior_loss",
    "psnr",
    "rate_term",
    "reconstruct",
    "sample_latents",
    "sample_to_folder",
    "sample_z0",
    "stage1_latent_denoiser",
    "stage1_metrics",
    "ul_generate",
    "ul_loss",
    "ul_model",
]
