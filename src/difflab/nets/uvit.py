"""The U-ViT of simple diffusion and the residual U-ViT of SiD2.

Simple diffusion (Hoogeboom, Heek, Salimans 2023, sec. 3 and Fig. 7): a first downsampling by
a wavelet transform (Haar here) or a stride-p patching convolution, convolutional residual blocks
at the high resolutions, a stack of transformer blocks at the lowest resolution connected by
residual connections only, U-Net skip connections only around the conv levels, and dropout
only at low resolution (here: the lowest conv level and the transformer). SiD2 (Hoogeboom et
al. 2024, "residual U-ViT") keeps the shape but replaces the per-block skip concatenations by
one residual skip per resolution change (`ResidualUViT`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from difflab.nets.base import DiffusionNet, NetConfig, UNetBody, check_inputs
from difflab.nets.layers import Downsample, PixelHead, PixelStem, TransformerBlock, Upsample

UVIT_STEMS: tuple[str, ...] = ("haar", "patch")


@dataclass(frozen=True)
class UViTConfig(NetConfig):
    """U-ViT hyperparameters. The stem maps `resolution` to `resolution / patch_size`; conv level
    `i` runs at `resolution / (patch_size * 2**i)`; the transformer (`transformer_depth` blocks of
    width `transformer_width`, `heads` heads) at `resolution / (patch_size * 2**len(channels))`."""

    channels: tuple[int, ...] = (64,)
    stem: str = "haar"
    patch_size: int = 2
    transformer_width: int = 256
    transformer_depth: int = 4
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stem not in UVIT_STEMS:
            raise ValueError(f"config field stem must be one of {UVIT_STEMS}, got {self.stem!r}")
        p = self.patch_size
        if p < 1 or (self.stem == "haar" and (p < 2 or p & (p - 1))):
            raise ValueError(
                "config field patch_size must be >= 1 (a power of 2 >= 2 for the Haar stem), "
                f"got {p}"
            )
        if self.transformer_depth < 1 or self.transformer_width < 1 or self.mlp_ratio <= 0:
            raise ValueError(
                "config fields transformer_depth/transformer_width/mlp_ratio must be > 0"
            )
        if self.transformer_width % self.heads:
            raise ValueError(
                f"config field transformer_width={self.transformer_width} must be divisible by "
                f"heads={self.heads}"
            )
        self.check_divisible(p * 2 ** len(self.channels), "patch_size * 2**len(channels)")


class TransformerMiddle(nn.Module):
    """Downsample, a stack of transformer blocks over the `side * side` tokens (learned position
    embedding), final LayerNorm, upsample back: `[B, ch, 2s, 2s] -> [B, ch, 2s, 2s]`."""

    def __init__(self, ch: int, side: int, config: UViTConfig):
        super().__init__()
        width = config.transformer_width
        self.down = Downsample(ch, width)
        self.pos = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, side * side, width), std=0.02))
        self.blocks = nn.ModuleList(
            TransformerBlock(width, config.heads, config.mlp_ratio, config.emb_dim, config.dropout)
            for _ in range(config.transformer_depth)
        )
        self.norm = nn.LayerNorm(width)
        self.up = Upsample(width, ch)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        h = self.down(h)
        side = h.shape[-1]
        x = rearrange(h, "b c h w -> b (h w) c") + self.pos
        for block in self.blocks:
            x = block(x, emb)
        # contiguous: GroupNorm's forward-mode AD formula cannot view a channels-last tangent
        return self.up(rearrange(self.norm(x), "b (h w) c -> b c h w", w=side).contiguous())


class UViT(DiffusionNet):
    """Simple diffusion's U-ViT: `forward(z, logsnr, labels=None)` as in `difflab.nets.base`."""

    arch = "uvit"
    config_class = UViTConfig
    dense_skips = True

    def __init__(self, config: UViTConfig):
        super().__init__(config)
        c, levels = config, len(config.channels)
        side = c.resolution // (c.patch_size * 2**levels)
        dropouts = tuple(c.dropout if i == levels - 1 else 0.0 for i in range(levels))
        self.stem = PixelStem(c.stem, c.patch_size, 2 * c.in_channels, c.channels[0])
        self.body = UNetBody(
            c.channels,
            c.num_blocks,
            c.emb_dim,
            TransformerMiddle(c.channels[-1], side, c),
            self.dense_skips,
            dropouts,
            heads=(0,) * levels,
        )
        self.head = PixelHead(c.stem, c.patch_size, c.channels[0], c.in_channels)

    def feature_shapes(self) -> list[tuple[int, int]]:
        """`(channels, side)` of each map `features` returns, lowest resolution first."""
        c, levels = self.config, len(self.config.channels)
        top = c.resolution // c.patch_size
        shapes = [(c.transformer_width, top // 2**levels)]
        return shapes + [(c.channels[i], top // 2**i) for i in reversed(range(levels))]

    def features(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> list[Tensor]:
        """The last-layer features of every resolution level, lowest resolution first: the
        transformer's normalised tokens as a `[B, width, s, s]` map, then the output of each
        decoder level (before its upsampling), ending with the body's output at the stem's
        resolution (`feature_shapes`). The pixel head is not run. The maps are read by forward
        hooks, so the computation is exactly that of `forward`."""
        u_map, u_mean = (u.to(z.dtype) for u in check_inputs(z, logsnr, labels, self.config))
        emb = self.cond(u_mean, self.class_labels(labels, z.shape[0], z.device))
        taps = [self.body.middle.norm] + [blocks[-1] for blocks in reversed(self.body.decoder)]
        outputs: dict[int, Tensor] = {}
        handles = [
            m.register_forward_hook(lambda mod, args, out, i=i: outputs.__setitem__(i, out))
            for i, m in enumerate(taps)
        ]
        try:
            self.body(self.stem(torch.cat([z, u_map], dim=1)), emb)
        finally:
            for h in handles:
                h.remove()
        side = self.feature_shapes()[0][1]
        tokens = rearrange(outputs[0], "b (h w) c -> b c h w", w=side).contiguous()
        return [tokens] + [outputs[i] for i in range(1, len(taps))]


class ResidualUViT(UViT):
    """SiD2's residual U-ViT: the U-ViT with one residual skip per resolution change instead of
    a concatenated skip per block (less activation memory; Hoogeboom et al. 2024)."""

    arch = "residual_uvit"
    dense_skips = False


def small_uvit_config(
    in_channels: int, resolution: int, conv_channels: int, width: int, **overrides
) -> UViTConfig:
    """The small-image U-ViT family: a Haar stem to half resolution, one conv level of
    `conv_channels`, four transformer blocks of `width` (4 heads) over 2x2 patches."""
    base = dict(
        in_channels=in_channels,
        resolution=resolution,
        channels=(conv_channels,),
        num_blocks=1,
        stem="haar",
        patch_size=2,
        transformer_width=width,
        transformer_depth=4,
        heads=4,
        emb_dim=128,
    )
    return UViTConfig(**{**base, **overrides})


def mnist_uvit_config(**overrides) -> UViTConfig:
    """A 2.4M-parameter U-ViT for 28x28x1 (MNIST): Haar to 14x14, one conv level (32 channels)
    at 14x14, four transformer blocks (width 192) over 7x7 tokens. 0.24 GFLOP per image forward
    (FlopCounterMode), ~0.72 GFLOP per image for training: compute-bound, it trains at about the
    CPU's matmul rate (`train_throughput`, batch 128: 23-26 img/s on one shared AVX2 core whose
    1024^2 matmul ran at 22-37 GFLOP/s)."""
    return small_uvit_config(1, 28, 32, 192, **overrides)


def cifar_uvit_config(**overrides) -> UViTConfig:
    """A 4.4M-parameter U-ViT for 32x32x3 (0.69 GFLOP per image forward): Haar to 16x16, one
    conv level (64 channels) at 16x16, four transformer blocks (width 256) over 8x8 tokens."""
    return small_uvit_config(3, 32, 64, 256, **overrides)
