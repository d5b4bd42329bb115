"""A small space-time transformer for sequences of frames, with one noise level per frame.

Contract: `net(z, logsnr, labels=None) -> prediction` with `z: [B, T, C, H, W]` (`T = frames`)
and `logsnr` one level per frame: `[B, T]`, `[B, T, 1, 1, 1]`, `[B]` or a scalar (`+inf` is a
clean frame). Each frame is cut into `patch_size x patch_size` patches (with the map
`u = tanh(logsnr / 10)` as an extra input channel, as every difflab net gets it); each block runs
attention over the patches of a frame (space), then over the frames at each patch position
(time, all frames see each other), then an MLP, and all three are FiLM-modulated by the
embedding of their own frame's level (adaLN per frame, as DiT does per image). Factorising the
attention keeps the cost at `T N^2 + N T^2` per layer instead of `(T N)^2`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from difflab.nets.base import DiffusionNet, NetConfig
from difflab.nets.layers import SelfAttention, modulate, normalise_logsnr, zero_init


@dataclass(frozen=True)
class SpaceTimeConfig(NetConfig):
    """`frames` per sequence (context plus window), `patch_size` (divides `resolution`),
    `width` of the tokens, `depth` blocks, `mlp_ratio`; `channels`/`num_blocks` are unused."""

    resolution: int = 32
    frames: int = 10
    patch_size: int = 4
    width: int = 64
    depth: int = 3
    mlp_ratio: float = 2.0
    emb_dim: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("frames", "patch_size", "width", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name} must be >= 1, got {getattr(self, name)}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"config field mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.width % self.heads:
            raise ValueError(
                f"config field width={self.width} must be divisible by heads={self.heads}"
            )
        self.check_divisible(self.patch_size, "patch_size")
        if self.num_classes:
            raise ValueError("config field num_classes must be 0 for the spacetime net")


class SpaceTimeBlock(nn.Module):
    """Space attention, time attention and MLP on tokens `[B, T, N, D]`, each pre-normed and
    FiLM-modulated per frame from `emb` `[B, T, E]`; every branch ends zero-initialised."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, emb_dim: int, dropout: float):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width, elementwise_affine=False) for _ in "stm")
        self.space = SelfAttention(width, heads)
        self.time = SelfAttention(width, heads)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
            zero_init(nn.Linear(hidden, width)),
        )  # fmt: skip
        self.film = nn.Linear(emb_dim, 6 * width)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        b, t, n, _ = x.shape
        mods = self.film(emb)[:, :, None].chunk(6, dim=-1)  # each [B, T, 1, D]
        h = modulate(self.norms[0](x), mods[0], mods[1])
        x = x + self.space(h.reshape(b * t, n, -1)).reshape(x.shape)
        h = modulate(self.norms[1](x), mods[2], mods[3])
        h = rearrange(h, "b t n d -> (b n) t d")
        x = x + rearrange(self.time(h), "(b n) t d -> b t n d", b=b)
        return x + self.mlp(modulate(self.norms[2](x), mods[4], mods[5]))


class SpaceTimeNet(DiffusionNet):
    """Factorised space-time transformer (module docstring), registered as `"spacetime"`."""

    arch = "spacetime"
    config_class = SpaceTimeConfig

    def __init__(self, config: SpaceTimeConfig):
        super().__init__(config)
        c, p, d = config.in_channels, config.patch_size, config.width
        tokens = (config.resolution // p) ** 2
        self.embed = nn.Conv2d(2 * c, d, p, stride=p)
        self.pos_space = nn.Parameter(torch.randn(tokens, d) * 0.02)
        self.pos_time = nn.Parameter(torch.randn(config.frames, 1, d) * 0.02)
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(d, config.heads, config.mlp_ratio, config.emb_dim, config.dropout)
            for _ in range(config.depth)
        )
        self.out_norm = nn.LayerNorm(d, elementwise_affine=False)
        self.out_film = nn.Linear(config.emb_dim, 2 * d)
        self.out = zero_init(nn.Linear(d, p * p * c))

    def frame_levels(self, z: Tensor, logsnr: Tensor) -> Tensor:
        """Check `z` and return the per-frame levels `[B, T]` (module docstring)."""
        cfg = self.config
        want = (cfg.frames, cfg.in_channels, cfg.resolution, cfg.resolution)
        if not isinstance(z, Tensor) or z.ndim != 5 or tuple(z.shape[1:]) != want:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must have shape [B, {', '.join(map(str, want))}], got {shape}")
        if not isinstance(logsnr, Tensor) or not logsnr.is_floating_point():
            raise TypeError("logsnr must be a floating-point tensor")
        b, t = z.shape[:2]
        level = logsnr
        if level.ndim == 5 and all(s == 1 for s in level.shape[2:]):
            level = level.reshape(level.shape[:2])
        if level.ndim == 0:
            level = level.expand(b)
        if level.ndim == 1 and level.shape[0] == b:
            level = level[:, None]
        if level.ndim != 2 or level.shape[0] not in (1, b) or level.shape[1] not in (1, t):
            raise ValueError(
                f"logsnr must be one level per frame, [B, T]=[{b}, {t}] (or [B], a scalar, "
                f"[B, T, 1, 1, 1]), got {tuple(logsnr.shape)}"
            )
        return level.expand(b, t)

    def example_inputs(self, batch: int = 1) -> tuple[Tensor, Tensor]:
        """Zeros `z [B, T, C, R, R]` and per-frame levels `[B, T]` (FLOP counting)."""
        c, param = self.config, next(self.parameters())
        z = param.new_zeros(batch, c.frames, c.in_channels, c.resolution, c.resolution)
        return z, param.new_zeros(batch, c.frames)

    def forward(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is not None:
            raise ValueError("labels given to the spacetime net (it is unconditional)")
        b, t, c, h, w = z.shape if isinstance(z, Tensor) and z.ndim == 5 else (0,) * 5
        u = normalise_logsnr(self.frame_levels(z, logsnr)).to(z.dtype)  # [B, T]
        emb = self.cond(u.reshape(-1)).reshape(b, t, -1)
        frames = torch.cat([z, u[:, :, None, None, None].expand_as(z)], dim=2)
        x = self.embed(frames.reshape(b * t, 2 * c, h, w))  # [(B T), D, h/p, w/p]
        x = rearrange(x, "(b t) d i j -> b t (i j) d", b=b) + self.pos_space + self.pos_time
        for block in self.blocks:
            x = block(x, emb)
        scale, shift = self.out_film(emb)[:, :, None].chunk(2, dim=-1)
        x = self.out(modulate(self.out_norm(x), scale, shift))
        p = self.config.patch_size
        return rearrange(x, "b t (i j) (p q c) -> b t c (i p) (j q)", i=h // p, p=p, q=p, c=c)
