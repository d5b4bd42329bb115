"""Dual-Rate Diffusion's two nets: a heavy context encoder and a light denoiser
(docs/methods/dual_rate.md).

- `UViTEncoder`: the U-ViT trunk (`difflab.nets.uvit.UViT` without its pixel head) at the level
  `tau`; `encode` returns the last-layer features of every resolution level
  (`UViT.features`: the transformer's tokens, then each decoder level's output).
- `LightDenoiser`: a small residual U-Net with one level per feature resolution. It sees the
  current state (`z_t` and the map of `logsnr_t`, as every difflab net), is FiLM-conditioned on
  both `t` and `tau` (`emb = cond_t(u_t, labels) + cond_tau(u_tau)`), and concatenates the
  1x1-projected encoder features at the matching resolutions. In training mode all features of
  an example are zeroed with probability `feature_dropout` (one draw per example).
- `DualRateNet`: both, as one net registered in `NETS` (one module to train, EMA, checkpoint and
  export). `forward(z, logsnr, labels=None, *, z_tau=None, logsnr_tau=None)` is
  `denoise_light(z, logsnr, encode(z_tau, logsnr_tau))`, with `tau = t` (`z_tau = z`) when not
  given: the composed single-rate net. `encode` and `denoise_light` are the two callables the
  dual-rate sampler interleaves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from difflab.diffusion.parameterization import broadcast_logsnr
from difflab.nets.base import DiffusionNet, check_inputs
from difflab.nets.layers import (
    Conditioning,
    Downsample,
    PixelHead,
    PixelStem,
    ResBlock,
    Upsample,
    normalise_logsnr,
)
from difflab.nets.uvit import UViT, UViTConfig

FEATURE_LEVELS: tuple[str, ...] = ("all", "last")


@dataclass(frozen=True)
class DualRateConfig(UViTConfig):
    """The encoder is the U-ViT of the `UViTConfig` fields (label dropout applied once, by the
    composite). The light denoiser: `light_channels[j]` channels at level `j` (resolution
    `resolution / (patch_size * 2**j)`, one level per encoder feature resolution, so
    `len(light_channels) == len(channels) + 1`), `light_blocks` residual blocks per level on the
    way down and up, conditioning width `light_emb_dim`. `feature_levels`: `"all"` (every
    resolution) or `"last"` (only the encoder's final map, at the stem resolution).
    `feature_dropout`: probability of zeroing all features of an example in training."""

    light_channels: tuple[int, ...] = (16, 32)
    light_blocks: int = 1
    light_emb_dim: int = 64
    feature_levels: str = "all"
    feature_dropout: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.light_channels, int) or not all(
            isinstance(c, int) and c > 0 for c in self.light_channels
        ):
            raise ValueError(
                f"config field light_channels must be a tuple of positive ints, got "
                f"{self.light_channels!r}"
            )
        object.__setattr__(self, "light_channels", tuple(self.light_channels))
        if len(self.light_channels) != len(self.channels) + 1:
            raise ValueError(
                f"config field light_channels needs len(channels) + 1 = {len(self.channels) + 1} "
                f"entries (one per encoder feature resolution), got {self.light_channels}"
            )
        if self.light_blocks < 1 or self.light_emb_dim < 1:
            raise ValueError("config fields light_blocks and light_emb_dim must be >= 1")
        if self.feature_levels not in FEATURE_LEVELS:
            raise ValueError(
                f"config field feature_levels must be one of {FEATURE_LEVELS}, "
                f"got {self.feature_levels!r}"
            )
        if not 0.0 <= self.feature_dropout < 1.0:
            raise ValueError(
                f"config field feature_dropout must be in [0, 1), got {self.feature_dropout}"
            )

    def encoder_config(self) -> UViTConfig:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(UViTConfig)}
        return UViTConfig(**{**fields, "label_dropout": 0.0})


@dataclass(frozen=True)
class EncoderFeatures:
    """What one encoder call hands to the light denoiser: the feature maps (lowest resolution
    first) and the encoder's normalised level `u_tau = tanh(logsnr_tau / 10)` per example."""

    maps: tuple[Tensor, ...]
    u_tau: Tensor


class UViTEncoder(UViT):
    """The U-ViT trunk: `UViT` without the pixel head; its output is `features`."""

    arch = "uvit_encoder"

    def __init__(self, config: UViTConfig):
        super().__init__(config)
        del self.head

    def forward(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> list[Tensor]:
        return self.features(z, logsnr, labels)


class LightDenoiser(nn.Module):
    """`g(z_t, u_t_map, u_t, u_tau, features, labels)`: see the module docstring."""

    def __init__(self, config: DualRateConfig, feature_shapes: list[tuple[int, int]]):
        super().__init__()
        c, ch = config, config.light_channels
        self.feature_dropout = c.feature_dropout
        self.cond_t = Conditioning(c.light_emb_dim, c.num_classes)
        self.cond_tau = Conditioning(c.light_emb_dim, 0)
        self.stem = PixelStem(c.stem, c.patch_size, 2 * c.in_channels, ch[0])
        # feature_shapes: lowest resolution first; level j reads feature L - j
        levels = len(ch)
        used = range(levels) if c.feature_levels == "all" else (0,)
        self.proj = nn.ModuleDict(
            {str(j): nn.Conv2d(feature_shapes[levels - 1 - j][0], ch[j], 1) for j in used}
        )
        self.downs = nn.ModuleList(Downsample(a, b) for a, b in zip(ch, ch[1:]))
        self.ups = nn.ModuleList(Upsample(b, a) for a, b in zip(ch, ch[1:]))
        self.down_blocks, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        for j in range(levels):
            first = ch[j] * (2 if str(j) in self.proj else 1)
            blocks = [ResBlock(first, ch[j], c.light_emb_dim)]
            blocks += [ResBlock(ch[j], ch[j], c.light_emb_dim) for _ in range(c.light_blocks - 1)]
            self.down_blocks.append(nn.ModuleList(blocks))
            if j < levels - 1:
                up = [ResBlock(ch[j], ch[j], c.light_emb_dim) for _ in range(c.light_blocks)]
                self.up_blocks.append(nn.ModuleList(up))
        self.head = PixelHead(c.stem, c.patch_size, ch[0], c.in_channels)

    def forward(
        self,
        z: Tensor,
        u_map: Tensor,
        u_t: Tensor,
        features: EncoderFeatures,
        labels: Tensor | None,
    ) -> Tensor:
        emb = self.cond_t(u_t, labels) + self.cond_tau(features.u_tau.to(z.dtype))
        maps = features.maps
        keep = None
        if self.training and self.feature_dropout > 0:
            drop = torch.rand(z.shape[0], device=z.device) < self.feature_dropout
            keep = (~drop).to(z.dtype)[:, None, None, None]
        h, skips, levels = self.stem(torch.cat([z, u_map], dim=1)), [], len(self.down_blocks)
        for j, blocks in enumerate(self.down_blocks):
            if j > 0:
                h = self.downs[j - 1](h)
            if str(j) in self.proj:
                f = self.proj[str(j)](maps[levels - 1 - j].to(z.dtype))
                h = torch.cat([h, f if keep is None else f * keep], dim=1)
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
        skips.pop()
        for j in reversed(range(levels - 1)):
            h = self.ups[j](h) + skips.pop()
            for block in self.up_blocks[j]:
                h = block(h, emb)
        return self.head(h)


class DualRateNet(DiffusionNet):
    """The heavy encoder and the light denoiser as one net (module docstring)."""

    arch = "dual_rate"
    config_class = DualRateConfig

    def __init__(self, config: DualRateConfig):
        super().__init__(config)
        del self.cond  # each part has its own conditioning
        self.encoder = UViTEncoder(config.encoder_config())
        self.light = LightDenoiser(config, self.encoder.feature_shapes())

    @classmethod
    def flops_example_config(cls) -> dict:
        return dict(channels=(8,), transformer_width=16, transformer_depth=1, heads=2,
                    emb_dim=16, light_channels=(8, 8), light_emb_dim=16)  # fmt: skip

    def _encode(self, z_tau: Tensor, logsnr_tau: Tensor, labels: Tensor | None) -> EncoderFeatures:
        maps = self.encoder.features(z_tau, logsnr_tau, labels)
        if logsnr_tau.ndim == 0:
            logsnr_tau = logsnr_tau.expand(z_tau.shape[0])
        level = broadcast_logsnr(logsnr_tau, z_tau)
        u_tau = normalise_logsnr(level).expand(z_tau.shape[0], -1, -1, -1).mean(dim=(1, 2, 3))
        return EncoderFeatures(tuple(maps), u_tau)

    def _light(
        self, z: Tensor, logsnr: Tensor, features: EncoderFeatures, labels: Tensor | None
    ) -> Tensor:
        if not isinstance(features, EncoderFeatures):
            raise TypeError(
                f"features must be the EncoderFeatures of encode(), got {type(features).__name__}"
            )
        if features.u_tau.shape != (z.shape[0],):
            raise ValueError(
                f"features are for a batch of {tuple(features.u_tau.shape)}, z has shape "
                f"{tuple(z.shape)}"
            )
        u_map, u_mean = (u.to(z.dtype) for u in check_inputs(z, logsnr, labels, self.config))
        return self.light(z, u_map, u_mean, features, labels)

    def encode(
        self, z_tau: Tensor, logsnr_tau: Tensor, labels: Tensor | None = None
    ) -> EncoderFeatures:
        """The heavy call: features of `z_tau` at level `logsnr_tau` for `denoise_light`."""
        return self._encode(
            z_tau, logsnr_tau, self.class_labels(labels, z_tau.shape[0], z_tau.device)
        )

    def denoise_light(
        self,
        z_t: Tensor,
        logsnr_t: Tensor,
        features: EncoderFeatures,
        labels: Tensor | None = None,
    ) -> Tensor:
        """The light call: the prediction at `(z_t, logsnr_t)` from the (possibly stale)
        `features` of an earlier `encode` at `tau >= t`."""
        return self._light(
            z_t, logsnr_t, features, self.class_labels(labels, z_t.shape[0], z_t.device)
        )

    def forward(
        self,
        z: Tensor,
        logsnr: Tensor,
        labels: Tensor | None = None,
        *,
        z_tau: Tensor | None = None,
        logsnr_tau: Tensor | None = None,
        detach_features: bool = False,
    ) -> Tensor:
        """`denoise_light(z, logsnr, encode(z_tau, logsnr_tau))`; `tau = t` when not given
        (label dropout drawn once for both parts). `detach_features`: the encoder runs without
        gradient (a frozen encoder, e.g. early in distillation)."""
        if (z_tau is None) != (logsnr_tau is None):
            raise ValueError("give both z_tau and logsnr_tau, or neither (tau = t)")
        if z_tau is None:
            z_tau, logsnr_tau = z, logsnr
        labels = self.class_labels(labels, z.shape[0], z.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_features):
            features = self._encode(z_tau, logsnr_tau, labels)
        return self._light(z, logsnr, features, labels)

    def forward_costs(self, batch: int = 1) -> dict[str, int]:
        """FLOPs per call of `encode`, `denoise_light` and the composed `forward`, counted from
        shapes (`difflab.nets.cost.count_flops`) on a batch of `batch`."""
        from difflab.nets.cost import count_flops, example_inputs

        z, logsnr = example_inputs(self, batch)
        was = self.training
        self.eval()
        try:
            encode = count_flops(self.encode, self, z, logsnr)
            with torch.no_grad():
                feats = self.encode(z, logsnr)
            light = count_flops(self.denoise_light, self, z, logsnr, feats)
        finally:
            self.train(was)
        return {"encode": encode, "denoise_light": light, "forward": encode + light}
