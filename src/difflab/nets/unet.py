"""A plain U-Net baseline (DDPM, Ho et al. 2020, appendix B; ADM, Dhariwal & Nichol 2021).

Convolutional residual blocks at every resolution, self-attention at the lowest one, a
ResBlock-attention-ResBlock middle, a concatenated skip per block (DDPM style) and dropout
everywhere. Same input contract, conditioning and initialisation as the U-ViTs
(`difflab.nets.base`), so the two can be compared at similar size.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from difflab.nets.base import DiffusionNet, NetConfig, UNetBody
from difflab.nets.layers import PixelHead, PixelStem, ResBlock


@dataclass(frozen=True)
class UNetConfig(NetConfig):
    """U-Net hyperparameters: level `i` at `resolution / 2**i` with width `channels[i]`;
    attention (`heads` heads) at the last level and in the middle."""

    channels: tuple[int, ...] = (32, 64, 128)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_divisible(2 ** (len(self.channels) - 1), "2**(len(channels) - 1)")
        if self.channels[-1] % self.heads:
            raise ValueError(
                f"config field channels[-1]={self.channels[-1]} must be divisible by "
                f"heads={self.heads}"
            )


class ResAttnMiddle(nn.Module):
    """The U-Net middle at the lowest resolution: ResBlock + attention, then a ResBlock."""

    def __init__(self, ch: int, config: UNetConfig):
        super().__init__()
        self.first = ResBlock(ch, ch, config.emb_dim, config.dropout, config.heads)
        self.second = ResBlock(ch, ch, config.emb_dim, config.dropout)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return self.second(self.first(h, emb), emb)


class UNet(DiffusionNet):
    """DDPM-style U-Net: `forward(z, logsnr, labels=None)` as in `difflab.nets.base`."""

    arch = "unet"
    config_class = UNetConfig

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        c, levels = config, len(config.channels)
        self.stem = PixelStem("conv", 1, 2 * c.in_channels, c.channels[0])
        self.body = UNetBody(
            c.channels,
            c.num_blocks,
            c.emb_dim,
            ResAttnMiddle(c.channels[-1], c),
            dense_skips=True,
            dropouts=(c.dropout,) * levels,
            heads=(0,) * (levels - 1) + (c.heads,),
        )
        self.head = PixelHead("conv", 1, c.channels[0], c.in_channels)


def mnist_unet_config(**overrides) -> UNetConfig:
    """A 2.8M-parameter U-Net for 28x28x1, about the size of `mnist_uvit_config()` (2.4M):
    levels at 28, 14, 7 (attention at 7x7); 0.63 GFLOP per image forward (the U-ViT: 0.24)."""
    base = dict(in_channels=1, resolution=28, channels=(32, 64, 96), num_blocks=2, emb_dim=128)
    return UNetConfig(**{**base, **overrides})
