"""Nets of Unified Latents (Heek, Hoogeboom, Mensink & Salimans, 2026): an encoder, a latent
prior and a pixel decoder conditioned on the noisy latent, held by one module.

- `LatentEncoder`: deterministic `x [B, C, H, W] -> z_clean [B, latent_channels, h, w]`, a small
  ResNet after a `patch_size` space-to-depth patching (the paper's encoder is a ResNet with 2x2
  patching); each further level halves the resolution with a stride-2 convolution. No output
  normalisation: the scale of `z_clean` against the fixed latent noise is what sets the bitrate,
  and the prior's ELBO pays for it.
  With `encoder_variance: learned` it outputs twice the latent channels, a mean and a
  log-variance per latent dimension (the KL-autoencoder's encoder).
- The prior is a U-ViT, residual U-ViT or U-Net (`PARTS`) over latents (`in_channels =
  latent_channels`, `resolution = h`); at 7x7 latents a one-level U-Net. Or a plain Gaussian
  (`GaussianLatentPrior`): `{arch: gaussian}` (zero mean, per latent dimension the variance
  fitted to the latents' running second moment) or `{arch: standard_normal}` (`N(0, I)`).
- `LatentConditionedDecoder`: a pixel denoiser of `PARTS` whose input is the concatenation of
  `x_t` and the nearest-neighbour upsampled noisy latent `z_0` (so the wrapped net is built with
  `in_channels = C + latent_channels`); only the first `C` output channels are the prediction.
- `UnifiedLatentsNet` (registered as `unified_latents`): encoder + prior + decoder in one module,
  so the trainer averages, checkpoints and exports them together.
- `LatentBaseNet` (registered as `ul_base`): the stage-2 base model over frozen latents, a
  denoiser of `PARTS` with the latent shape; its config's `in_channels`/`resolution` are those
  of the images it generates and is trained on (a frozen stage-1 encoder makes the latents).

All forward methods keep the `net(z, logsnr, labels=None)` contract of `difflab.nets.base`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from difflab.nets.base import DiffusionNet, build_from_registry
from difflab.nets.layers import group_norm, zero_init
from difflab.nets.unet import UNet
from difflab.nets.uvit import ResidualUViT, UViT

PARTS: dict[str, type[DiffusionNet]] = {"uvit": UViT, "residual_uvit": ResidualUViT, "unet": UNet}
"""The denoisers a UL prior, decoder or base model can be (by their registry names)."""


def _build(name: str, **kwargs) -> DiffusionNet:
    return build_from_registry(PARTS, name, kwargs, " for a UL part")


GAUSSIAN_PRIORS = ("gaussian", "standard_normal")
"""Prior archs that are a plain Gaussian over the latent (not a diffusion net)."""
ENCODER_VARIANCES = ("fixed", "learned")


class GaussianLatentPrior(nn.Module):
    """`p(z_0) = N(0, diag(s^2))` over latents of `shape`. `fitted`: `s^2` is the running
    average (`momentum`) of the batches' `E_q[z_0^2]` per latent dimension (buffer
    `second_moment`, initialised to 1), the variance that minimises the mean KL of the
    latent channel to a zero-mean Gaussian (moment matching; updated by the training step through
    `observe`, fixed at evaluation). Otherwise `N(0, I)`, no state."""

    momentum: ClassVar[float] = 0.9

    def __init__(self, shape: tuple[int, ...], fitted: bool):
        super().__init__()
        self.shape, self.fitted = tuple(shape), fitted
        if fitted:
            self.register_buffer("second_moment", torch.ones(self.shape))

    def log_variance(self, like: Tensor) -> Tensor:
        """The prior's log-variance `[*shape]` in the dtype and on the device of `like`."""
        if self.fitted:
            return self.second_moment.log().to(device=like.device, dtype=like.dtype)
        return like.new_zeros(self.shape)

    @torch.no_grad()
    def observe(self, moment: Tensor) -> None:
        """One running-average step towards a batch's `E_q[z_0^2]` (`[*shape]`); a no-op for
        `N(0, I)`."""
        if self.fitted:
            self.second_moment.lerp_(moment.detach().to(self.second_moment), 1 - self.momentum)


def _net_kwargs(spec: dict[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    """`{"arch": name, **config}` -> `(name, config)`; `in_channels`/`resolution` are set here."""
    if not isinstance(spec, dict) or "arch" not in spec:
        raise ValueError(
            f"config field {what} must be a mapping with an 'arch' key (one of PARTS), got {spec!r}"
        )
    kwargs = {k: v for k, v in spec.items() if k != "arch"}
    for key in ("in_channels", "resolution"):
        if key in kwargs:
            raise ValueError(f"config field {what}.{key} is set by the unified latents net")
    return spec["arch"], kwargs


class PlainResBlock(nn.Module):
    """`x + conv(silu(norm(conv(silu(norm(x))))))`, second conv zero-initialised (no
    conditioning: the encoder sees clean images only)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2, self.conv2 = group_norm(ch), zero_init(nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class LatentEncoder(nn.Module):
    """Space-to-depth by `patch_size`, then per level `blocks` residual blocks of width
    `channels[i]`, a stride-2 convolution between levels, and a 3x3 convolution to
    `latent_channels` (times `out_factor`: 2 stacks a mean and a log-variance). Output
    resolution `resolution / (patch_size * 2**(len(channels) - 1))`."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        patch_size: int,
        channels: tuple[int, ...],
        blocks: int,
        out_factor: int = 1,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.stem = nn.Conv2d(in_channels * patch_size**2, channels[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, ch in enumerate(channels):
            if i > 0:
                layers.append(nn.Conv2d(channels[i - 1], ch, 3, stride=2, padding=1))
            layers.extend(PlainResBlock(ch) for _ in range(blocks))
        self.body = nn.Sequential(*layers)
        self.norm = group_norm(channels[-1])
        self.out = nn.Conv2d(channels[-1], latent_channels * out_factor, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        h = rearrange(x, "b c (h p) (w q) -> b (c p q) h w", p=p, q=p) if p > 1 else x
        return self.out(F.silu(self.norm(self.body(self.stem(h)))))


class LatentConditionedDecoder(nn.Module):
    """A pixel denoiser conditioned on the noisy latent `z_0` by upsampled concatenation:
    `net([x_t, up(z_0)], logsnr)[:, :C]`, `up` = nearest neighbour by `scale`."""

    def __init__(self, net: nn.Module, image_channels: int, scale: int):
        super().__init__()
        self.net, self.image_channels, self.scale = net, image_channels, scale

    def forward(self, z: Tensor, logsnr: Tensor, latent: Tensor) -> Tensor:
        up = latent.repeat_interleave(self.scale, -2).repeat_interleave(self.scale, -1)
        if up.shape[0] != z.shape[0] or up.shape[-2:] != z.shape[-2:]:
            raise ValueError(
                f"latent of shape {tuple(latent.shape)} upsampled by {self.scale} does not "
                f"match z of shape {tuple(z.shape)}"
            )
        return self.net(torch.cat([z, up.to(z.dtype)], dim=1), logsnr)[:, : self.image_channels]


@dataclass(frozen=True)
class UnifiedLatentsConfig:
    """The three nets of UL. `in_channels`, `resolution`: the images; `latent_channels` and
    the encoder's `patch_size` and `encoder_channels` (one entry per level, each after the
    first halving the resolution) fix the latent shape; `encoder_blocks` residual blocks per
    level. `prior`, `decoder`: `{"arch": <a PARTS name>, **its config}` without
    `in_channels`/`resolution` (set from the latent and image shapes); the prior may also be a
    plain Gaussian, `{"arch": "gaussian"}` (fitted diagonal variance) or
    `{"arch": "standard_normal"}`. `encoder_variance`: `"fixed"` (a deterministic encoder; the
    method adds noise of one fixed level) or `"learned"` (the encoder outputs a mean and a
    log-variance, the KL-autoencoder's). `num_classes` is 0: the stage-1 model is unconditional
    (the trainer reads this field)."""

    in_channels: int = 1
    resolution: int = 28
    latent_channels: int = 4
    patch_size: int = 2
    encoder_channels: tuple[int, ...] = (32, 64)
    encoder_blocks: int = 1
    encoder_variance: str = "fixed"
    prior: dict[str, Any] = field(
        default_factory=lambda: {"arch": "unet", "channels": [64], "num_blocks": 1,
                                 "emb_dim": 64, "heads": 2}
    )  # fmt: skip
    decoder: dict[str, Any] = field(
        default_factory=lambda: {"arch": "uvit", "channels": [32], "num_blocks": 1,
                                 "transformer_width": 64, "transformer_depth": 2,
                                 "heads": 2, "emb_dim": 64}
    )  # fmt: skip
    num_classes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_channels", tuple(self.encoder_channels))
        for name in ("in_channels", "resolution", "latent_channels", "patch_size",
                     "encoder_blocks"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name} must be >= 1, got {getattr(self, name)}")
        if not self.encoder_channels or min(self.encoder_channels) < 1:
            raise ValueError(
                f"config field encoder_channels must be non-empty and positive, got "
                f"{self.encoder_channels}"
            )
        if self.resolution % self.downsample:
            raise ValueError(
                f"config field resolution={self.resolution} must be divisible by patch_size * "
                f"2**(len(encoder_channels) - 1) = {self.downsample}"
            )
        if self.num_classes != 0:
            raise ValueError("config field num_classes must be 0: the UL stage-1 net is "
                             "unconditional")  # fmt: skip
        if self.encoder_variance not in ENCODER_VARIANCES:
            raise ValueError(
                f"config field encoder_variance must be 'fixed' or 'learned', got "
                f"{self.encoder_variance!r}"
            )
        name, kwargs = _net_kwargs(self.prior, "prior")
        if name in GAUSSIAN_PRIORS and kwargs:
            raise ValueError(
                f"config field prior: the {name!r} prior takes no other keys, got {sorted(kwargs)}"
            )
        _net_kwargs(self.decoder, "decoder")

    @property
    def prior_kind(self) -> str:
        """`"diffusion"` (a `PARTS` net), `"gaussian"` or `"standard_normal"`."""
        name = self.prior["arch"]
        return name if name in GAUSSIAN_PRIORS else "diffusion"

    @property
    def downsample(self) -> int:
        return self.patch_size * 2 ** (len(self.encoder_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.downsample
        return (self.latent_channels, side, side)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.resolution, self.resolution)


class UnifiedLatentsNet(nn.Module):
    """Encoder, prior and decoder of UL in one module (`encode`, `prior`, `decode`); `forward`
    is the decoder's prediction given the noisy latent (`net(z, logsnr, latent=z_0)`)."""

    arch: ClassVar[str] = "unified_latents"
    config_class: ClassVar[type] = UnifiedLatentsConfig

    def __init__(self, config: UnifiedLatentsConfig):
        super().__init__()
        if not isinstance(config, UnifiedLatentsConfig):
            raise TypeError(f"UnifiedLatentsNet needs a UnifiedLatentsConfig, got "
                            f"{type(config).__name__}")  # fmt: skip
        self.config = c = config
        cz, side, _ = c.latent_shape
        learned = c.encoder_variance == "learned"
        self.encoder = LatentEncoder(
            c.in_channels, cz, c.patch_size, c.encoder_channels, c.encoder_blocks,
            out_factor=2 if learned else 1,
        )  # fmt: skip
        name, kwargs = _net_kwargs(c.prior, "prior")
        self.prior: nn.Module
        if name in GAUSSIAN_PRIORS:
            self.prior = GaussianLatentPrior(c.latent_shape, fitted=name == "gaussian")
        else:
            self.prior = _build(name, in_channels=cz, resolution=side, **kwargs)
        name, kwargs = _net_kwargs(c.decoder, "decoder")
        pixel = _build(name, in_channels=c.in_channels + cz, resolution=c.resolution, **kwargs)
        self.decoder = LatentConditionedDecoder(pixel, c.in_channels, c.downsample)

    def spec(self) -> dict:
        return {"arch": self.arch, "config": dataclasses.asdict(self.config)}

    def encode_stats(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """`(mean, logvar)` of the encoder: `logvar` is None for a fixed-variance encoder
        (`mean = z_clean = E(x)`), else clamped to [-30, 20]."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.config.image_shape:
            raise ValueError(
                f"x must have shape [B, {', '.join(map(str, self.config.image_shape))}], got "
                f"{tuple(x.shape)}"
            )
        out = self.encoder(x)
        if self.config.encoder_variance == "fixed":
            return out, None
        mean, logvar = out.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: Tensor) -> Tensor:
        """`z_clean = E(x)` (deterministic; the mean for a learned-variance encoder)."""
        return self.encode_stats(x)[0]

    def forward(
        self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None, *, latent: Tensor
    ) -> Tensor:
        if labels is not None:
            raise ValueError("labels given to the unconditional UL decoder")
        return self.decoder(z, logsnr, latent)


@dataclass(frozen=True)
class LatentBaseConfig:
    """Stage-2 base model over latents of shape `[latent_channels, latent_resolution,
    latent_resolution]` that decode to images `[image_channels, image_resolution,
    image_resolution]` (its `in_channels`/`resolution`, as for every image net). `net` is
    `{"arch": <a PARTS name>, **its config}` without `in_channels`/`resolution`.
    Unconditional (`num_classes = 0`)."""

    latent_channels: int = 4
    latent_resolution: int = 7
    image_channels: int = 1
    image_resolution: int = 28
    net: dict[str, Any] = field(
        default_factory=lambda: {"arch": "unet", "channels": [64], "num_blocks": 2,
                                 "emb_dim": 64, "heads": 2}
    )  # fmt: skip
    num_classes: int = 0

    def __post_init__(self) -> None:
        for name in ("latent_channels", "latent_resolution", "image_channels", "image_resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes != 0:
            raise ValueError("config field num_classes must be 0: the UL base model is "
                             "unconditional")  # fmt: skip
        _net_kwargs(self.net, "net")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_resolution, self.latent_resolution)

    @property
    def in_channels(self) -> int:
        """The generated images' channels (what the trainer and `api` compare with the data)."""
        return self.image_channels

    @property
    def resolution(self) -> int:
        """The generated images' side (the latents' is `latent_resolution`)."""
        return self.image_resolution


class LatentBaseNet(nn.Module):
    """The stage-2 base denoiser over latents: `net(z, logsnr, labels=None)` of the inner
    net of the latent shape."""

    arch: ClassVar[str] = "ul_base"
    config_class: ClassVar[type] = LatentBaseConfig

    def __init__(self, config: LatentBaseConfig):
        super().__init__()
        if not isinstance(config, LatentBaseConfig):
            raise TypeError(f"LatentBaseNet needs a LatentBaseConfig, got "
                            f"{type(config).__name__}")  # fmt: skip
        self.config = config
        name, kwargs = _net_kwargs(config.net, "net")
        self.net = _build(
            name, in_channels=config.latent_channels, resolution=config.latent_resolution, **kwargs
        )

    def spec(self) -> dict:
        return {"arch": self.arch, "config": dataclasses.asdict(self.config)}

    def example_inputs(self, batch: int = 1) -> tuple[Tensor, Tensor]:
        """Zero latents `[B, C_z, r, r]` and levels `[B]` (FLOP counting)."""
        c, param = self.config, next(self.parameters())
        z = param.new_zeros(batch, c.latent_channels, c.latent_resolution, c.latent_resolution)
        return z, param.new_zeros(batch)

    def forward(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(z, logsnr, labels)
