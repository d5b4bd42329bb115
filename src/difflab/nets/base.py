"""What every difflab image net shares: the config fields, the input contract and the U shape.

Contract: `net(z, logsnr, labels=None) -> prediction` with `z: [B, C, H, W]`, the raw network
output of the same shape (x, eps or v: `difflab.diffusion.parameterization.as_denoiser` decides).

`logsnr` is a scalar (expanded to `[B]`), `[B]`, or any per-element shape that broadcasts
against `z` (`[B, 1, H, W]`, `[B, C, H, W]`, `[B, C, 1, 1]`, ...). Every net is fed the map
`u = tanh(logsnr / 10)` broadcast to `z`'s shape as `C` extra input channels, and is FiLM-
conditioned on the per-example mean of `u`. With one level per example the map is constant and
the mean is that level; with per-element levels the map tells the net which pixels are how noisy.

Class labels: with `num_classes > 0`, `labels=None` means the "null" label `num_classes`
(the unconditional prediction of classifier-free guidance). In training mode the net itself
replaces each label by the null label with probability `label_dropout`, so a trainer only has
to pass the labels; in eval mode labels are used as given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from difflab.diffusion.parameterization import broadcast_logsnr
from difflab.nets.layers import Conditioning, Downsample, ResBlock, Upsample, normalise_logsnr


@dataclass(frozen=True)
class NetConfig:
    """Fields every net has. `channels[i]` is the width of conv level `i` (level 0 first, at the
    stem's resolution); `num_blocks` residual blocks per encoder level; `emb_dim` the width of the
    conditioning vector; `heads` attention heads; `num_classes = 0` for an unconditional net."""

    in_channels: int = 1
    resolution: int = 28
    channels: tuple[int, ...] = (64,)
    num_blocks: int = 2
    emb_dim: int = 256
    heads: int = 4
    dropout: float = 0.0
    num_classes: int = 0
    label_dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.channels, int) or not all(isinstance(c, int) for c in self.channels):
            raise ValueError(
                f"config field channels must be a tuple of ints, got {self.channels!r}"
            )
        # JSON/YAML give lists; keep the frozen config hashable and comparable.
        object.__setattr__(self, "channels", tuple(self.channels))
        positive = ("in_channels", "resolution", "num_blocks", "emb_dim", "heads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name} must be >= 1, got {getattr(self, name)}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(
                f"config field channels must be non-empty and positive, got {self.channels}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"config field dropout must be in [0, 1), got {self.dropout}")
        if self.num_classes < 0:
            raise ValueError(f"config field num_classes must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(
                f"config field label_dropout must be in [0, 1], got {self.label_dropout}"
            )
        if self.label_dropout > 0 and self.num_classes == 0:
            raise ValueError("config field label_dropout > 0 needs num_classes > 0")

    def check_divisible(self, factor: int, why: str) -> None:
        if self.resolution % factor:
            raise ValueError(
                f"config field resolution={self.resolution} must be divisible by {factor} ({why})"
            )


def check_inputs(
    z: Tensor, logsnr: Tensor, labels: Tensor | None, config: NetConfig
) -> tuple[Tensor, Tensor]:
    """Validate the contract and return `(u_map [B, C, H, W], u_mean [B])` (module docstring)."""
    c, r = config.in_channels, config.resolution
    if not isinstance(z, Tensor) or z.ndim != 4 or tuple(z.shape[1:]) != (c, r, r):
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"z must have shape [B, {c}, {r}, {r}], got {shape}")
    batch = z.shape[0]
    if not isinstance(logsnr, Tensor) or not logsnr.is_floating_point():
        kind = logsnr.dtype if isinstance(logsnr, Tensor) else type(logsnr).__name__
        raise TypeError(f"logsnr must be a floating-point tensor, got {kind}")
    if logsnr.ndim == 0:
        logsnr = logsnr.expand(batch)
    if logsnr.ndim == 1 and logsnr.shape[0] != batch:
        raise ValueError(
            f"logsnr must have shape [B]=[{batch}] or broadcast against z of shape "
            f"{tuple(z.shape)}, got {tuple(logsnr.shape)}"
        )
    level = broadcast_logsnr(logsnr, z).expand(batch, -1, -1, -1)
    if labels is not None:
        if config.num_classes == 0:
            raise ValueError("labels given to an unconditional net (num_classes=0)")
        if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32):
            kind = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
            raise TypeError(f"labels must be an integer (long) tensor, got {kind}")
        if tuple(labels.shape) != (batch,):
            raise ValueError(f"labels must have shape [B]=[{batch}], got {tuple(labels.shape)}")
    u = normalise_logsnr(level)
    return u.expand_as(z), u.mean(dim=(1, 2, 3))


def build_from_registry(
    registry: Mapping[str, type], name: str, config_kwargs: Mapping[str, Any], what: str = ""
) -> nn.Module:
    """`registry[name]` built from its config dataclass fields; an unknown name or config key is
    a `ValueError` listing the known ones (`what` says which registry, e.g. " for a UL part")."""
    if name not in registry:
        raise ValueError(f"unknown net {name!r}{what}; known nets: {sorted(registry)}")
    cls = registry[name]
    known = [f.name for f in dataclasses.fields(cls.config_class)]
    unknown = sorted(set(config_kwargs) - set(known))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} for net {name!r}; known keys: {known}")
    return cls(cls.config_class(**config_kwargs))


class DiffusionNet(nn.Module):
    """Base of every image net: validates inputs, builds the conditioning, runs
    `head(body(stem([z, u_map]), emb))`. Subclasses set `stem`, `body` and `head`."""

    arch: ClassVar[str]
    config_class: ClassVar[type[NetConfig]]

    def __init__(self, config: NetConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = config
        self.cond = Conditioning(config.emb_dim, config.num_classes)

    def spec(self) -> dict:
        """`{"arch": ..., "config": {...}}`, JSON-serialisable for checkpoints;
        `build_net(spec["arch"], **spec["config"])` rebuilds the net."""
        return {"arch": self.arch, "config": dataclasses.asdict(self.config)}

    def class_labels(
        self, labels: Tensor | None, batch: int, device: torch.device
    ) -> Tensor | None:
        """Fill missing labels with the null label; apply `label_dropout` in training mode."""
        null = self.config.num_classes
        if null == 0:
            return None
        if labels is None:
            return torch.full((batch,), null, dtype=torch.long, device=device)
        if self.training and self.config.label_dropout > 0:
            drop = torch.rand(batch, device=device) < self.config.label_dropout
            labels = torch.where(drop, torch.full_like(labels, null), labels)
        return labels

    def forward(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
        u_map, u_mean = (u.to(z.dtype) for u in check_inputs(z, logsnr, labels, self.config))
        emb = self.cond(u_mean, self.class_labels(labels, z.shape[0], z.device))
        return self.head(self.body(self.stem(torch.cat([z, u_map], dim=1)), emb))


class UNetBody(nn.Module):
    """Conv encoder levels -> `middle` -> conv decoder levels, with one of two skip schemes.

    Level `i` has width `channels[i]` and runs at `1 / 2**i` of the stem's resolution; `middle`
    maps the last level's features to features of the same shape (a transformer stack at half
    that resolution for the U-ViT, ResBlock-attention-ResBlock for the U-Net).

    `dense_skips=True` (DDPM / ADM, simple diffusion's U-ViT): every encoder activation (stem
    output, each block, each downsampling) is concatenated into one of the `num_blocks + 1`
    decoder blocks of its level. `dense_skips=False` (SiD2's "residual U-ViT", Hoogeboom et
    al. 2024): one residual skip per resolution change: each decoder level starts by adding
    its encoder level's output, then runs `num_blocks` blocks.
    """

    def __init__(
        self,
        channels: tuple[int, ...],
        num_blocks: int,
        emb_dim: int,
        middle: nn.Module,
        dense_skips: bool,
        dropouts: tuple[float, ...],
        heads: tuple[int, ...],
    ):
        super().__init__()
        self.dense_skips, levels = dense_skips, len(channels)
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        self.downs = nn.ModuleList(Downsample(a, b) for a, b in zip(channels, channels[1:]))
        self.ups = nn.ModuleList(Upsample(b, a) for a, b in zip(channels, channels[1:]))
        self.middle = middle
        skip_ch, ch = [channels[0]], channels[0]
        for i, out in enumerate(channels):
            blocks = []
            for _ in range(num_blocks):
                blocks.append(ResBlock(ch, out, emb_dim, dropouts[i], heads[i]))
                ch = out
                skip_ch.append(ch)
            self.encoder.append(nn.ModuleList(blocks))
            if i < levels - 1:
                skip_ch.append(channels[i + 1])
                ch = channels[i + 1]
        for i in reversed(range(levels)):
            blocks, out = [], channels[i]
            ch = out  # the middle's output, or the upsampled level below
            for _ in range(num_blocks + 1 if dense_skips else num_blocks):
                in_ch = ch + skip_ch.pop() if dense_skips else ch
                blocks.append(ResBlock(in_ch, out, emb_dim, dropouts[i], heads[i]))
                ch = out
            self.decoder.insert(0, nn.ModuleList(blocks))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        skips = [h] if self.dense_skips else []
        for i, blocks in enumerate(self.encoder):
            for block in blocks:
                h = block(h, emb)
                if self.dense_skips:
                    skips.append(h)
            if not self.dense_skips:
                skips.append(h)
            if i < len(self.downs):
                h = self.downs[i](h)
                if self.dense_skips:
                    skips.append(h)
        h = self.middle(h, emb)
        for i in reversed(range(len(self.decoder))):
            if not self.dense_skips:
                h = h + skips.pop()
            for block in self.decoder[i]:
                h = block(torch.cat([h, skips.pop()], dim=1) if self.dense_skips else h, emb)
            if i > 0:
                h = self.ups[i - 1](h)
        return h
