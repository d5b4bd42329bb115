"""Token transformers: a bidirectional denoiser for discrete diffusion and a same-size causal
(autoregressive) baseline.

`TokenTransformer` (registered as `token_transformer`): `net(z, logsnr, noise=None) -> logits`
of shape `z.shape + (vocab_size,)` for tokens `z` of shape `[B, L]` (text) or `[B, C, H, W]`
(token images, read in raster order as `L = C H W` tokens); positions enter as learned
embeddings and as rotary embeddings of queries and keys. `z` may hold the mask id
`vocab_size` (`mask_token=True`, masked diffusion). `logsnr` is a scalar, `[B]` or per token
(the token shape); the net sees `u = tanh(logsnr / 10)` through an embedding that modulates every
block's LayerNorms (adaLN, per example or per token). With `extra_noise_dim > 0`, `noise`
(`[B, L, extra_noise_dim]`, standard normal; drawn inside when None) is projected and added to the
token embeddings: the extra noise input of masked D-MMD students.

`CausalTransformer` (`causal_transformer`): the same blocks under a causal attention mask, with
a learned start token: `net(x) -> logits` where position `i` predicts `x_i` from `x_{<i}`;
`log_prob(x)` and `sample(n)` follow. Both report `example_inputs(batch)` for the FLOP counter.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.nets.layers import Conditioning, modulate, normalise_logsnr, zero_init


@dataclass(frozen=True)
class TokenNetConfig:
    """`vocab_size` symbols (without the mask), `seq_len` tokens per example (`C H W` for token
    images), `width`/`depth`/`heads` of the transformer, `emb_dim` of the level embedding,
    `mask_token` (an embedding row for the mask id `vocab_size`), `extra_noise_dim` (0: none)."""

    vocab_size: int = 65
    seq_len: int = 128
    width: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    emb_dim: int = 256
    dropout: float = 0.0
    mask_token: bool = True
    extra_noise_dim: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "width", "depth", "heads", "emb_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config field {name} must be an int >= 1, got {value!r}")
        if self.vocab_size < 2:
            raise ValueError(f"config field vocab_size must be >= 2, got {self.vocab_size}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(
                f"config field width={self.width} must be divisible by heads={self.heads} "
                "into an even head size (rotary embedding)"
            )
        if not self.mlp_ratio > 0:
            raise ValueError(f"config field mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"config field dropout must be in [0, 1), got {self.dropout}")
        if self.extra_noise_dim < 0:
            raise ValueError(
                f"config field extra_noise_dim must be >= 0, got {self.extra_noise_dim}"
            )


def rotary(x: Tensor) -> Tensor:
    """Rotary position embedding (Su et al., "RoFormer", 2021) of `[..., n, d]` queries or keys:
    channel pairs `(i, i + d/2)` rotated by `pos * 10000^(-2i/d)`, so attention scores depend on
    relative positions (the MDLM backbone uses it; neighbours are found from the first step)."""
    n, d = x.shape[-2], x.shape[-1]
    half = d // 2
    freqs = 10000.0 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(n, device=x.device, dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block with adaLN: FiLM of both LayerNorms from `emb` (`[B, 1, E]` or
    `[B, L, E]`); both residual branches end in zero-initialised projections."""

    def __init__(self, config: TokenNetConfig, causal: bool):
        super().__init__()
        width, hidden = config.width, int(config.width * config.mlp_ratio)
        self.heads, self.causal, self.p = config.heads, causal, config.dropout
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = zero_init(nn.Linear(width, width))
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), zero_init(nn.Linear(hidden, width))
        )
        self.film = nn.Linear(config.emb_dim, 4 * width)
        self.dropout = nn.Dropout(config.dropout)

    def attention(self, h: Tensor) -> Tensor:
        b, n, w = h.shape
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rotary(q), rotary(k)
        drop = self.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(b, n, w))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale1, shift1, scale2, shift2 = self.film(emb).chunk(4, dim=-1)
        h = h + self.dropout(self.attention(modulate(self.norm1(h), scale1, shift1)))
        return h + self.dropout(self.mlp(modulate(self.norm2(h), scale2, shift2)))


class _TokenNetBase(nn.Module):
    arch: ClassVar[str]
    config_class: ClassVar[type] = TokenNetConfig
    causal: ClassVar[bool]

    def __init__(self, config: TokenNetConfig):
        super().__init__()
        if not isinstance(config, TokenNetConfig):
            raise TypeError(f"{type(self).__name__} needs a TokenNetConfig")
        self.config = config
        rows = config.vocab_size + (1 if config.mask_token else 0)
        self.embed = nn.Embedding(rows, config.width)
        # tokens and positions on the same small scale (GPT-2's 0.02): with the default N(0, 1)
        # token rows the positions are 50x weaker and attention is slow to find neighbours
        nn.init.normal_(self.embed.weight, std=0.02)
        self.position = nn.Parameter(torch.randn(config.seq_len, config.width) * 0.02)
        self.blocks = nn.ModuleList(Block(config, self.causal) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, elementwise_affine=False)
        self.final_film = nn.Linear(config.emb_dim, 2 * config.width)
        self.head = zero_init(nn.Linear(config.width, config.vocab_size))

    def spec(self) -> dict:
        return {"arch": self.arch, "config": dataclasses.asdict(self.config)}

    def _check_tokens(self, z: Tensor, name: str, top: int) -> Tensor:
        c = self.config
        if not isinstance(z, Tensor) or z.dtype not in (torch.int64, torch.int32):
            kind = z.dtype if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"{name} must be an integer tensor of tokens, got {kind}")
        if z.ndim < 2 or math.prod(z.shape[1:]) != c.seq_len:
            raise ValueError(
                f"{name} must have shape [B, {c.seq_len}] or [B, ...] with {c.seq_len} tokens "
                f"per example, got {list(z.shape)}"
            )
        if z.numel() and z.device.type != "meta" and not torch.compiler.is_compiling():
            if int(z.min()) < 0 or int(z.max()) > top:
                raise ValueError(
                    f"{name} has token values in [{int(z.min())}, {int(z.max())}], outside "
                    f"[0, {top}]"
                )
        return z.reshape(z.shape[0], c.seq_len).long()

    def _run(self, h: Tensor, emb: Tensor) -> Tensor:
        for block in self.blocks:
            h = block(h, emb)
        scale, shift = self.final_film(emb).chunk(2, dim=-1)
        return self.head(modulate(self.norm(h), scale, shift))


class TokenTransformer(_TokenNetBase):
    """Bidirectional token denoiser with adaLN on the level (module docstring)."""

    arch = "token_transformer"
    causal = False

    def __init__(self, config: TokenNetConfig):
        super().__init__(config)
        self.cond = Conditioning(config.emb_dim)
        self.noise_proj = (
            zero_init(nn.Linear(config.extra_noise_dim, config.width))
            if config.extra_noise_dim
            else None
        )

    def example_inputs(self, batch: int = 1) -> tuple[Tensor, Tensor]:
        device = self.position.device
        z = torch.zeros(batch, self.config.seq_len, dtype=torch.long, device=device)
        return z, torch.zeros(batch, device=device)

    def level_embedding(self, logsnr: Tensor, shape: torch.Size) -> Tensor:
        """`[B, 1, E]` for one level per example, `[B, L, E]` for per-token levels."""
        batch, length = shape[0], self.config.seq_len
        if not isinstance(logsnr, Tensor) or not logsnr.is_floating_point():
            kind = logsnr.dtype if isinstance(logsnr, Tensor) else type(logsnr).__name__
            raise ValueError(f"logsnr must be a floating-point tensor, got {kind}")
        if logsnr.device.type != "meta" and bool(torch.isnan(logsnr).any()):
            raise ValueError("logsnr contains NaN")
        if logsnr.ndim == 0:
            logsnr = logsnr.expand(batch)
        if logsnr.ndim == 1 and logsnr.shape[0] == batch:
            u = normalise_logsnr(logsnr.float())
            return self.cond(u)[:, None, :]
        if tuple(logsnr.shape) == tuple(shape):
            u = normalise_logsnr(logsnr.float()).reshape(batch * length)
            return self.cond(u).reshape(batch, length, -1)
        raise ValueError(
            f"logsnr must be a scalar, [B]=[{batch}] or the token shape {list(shape)}, "
            f"got {list(logsnr.shape)}"
        )

    def forward(self, z: Tensor, logsnr: Tensor, noise: Tensor | None = None) -> Tensor:
        c = self.config
        top = c.vocab_size if c.mask_token else c.vocab_size - 1
        tokens = self._check_tokens(z, "z", top)
        emb = self.level_embedding(logsnr, z.shape).to(self.position.dtype)
        h = self.embed(tokens) + self.position
        if self.noise_proj is not None:
            want = (z.shape[0], c.seq_len, c.extra_noise_dim)
            if noise is None:
                noise = torch.randn(want, device=h.device, dtype=h.dtype)
            if tuple(noise.shape) != want:
                raise ValueError(f"noise must have shape {list(want)}, got {list(noise.shape)}")
            h = h + self.noise_proj(noise.to(h.dtype))
        elif noise is not None:
            raise ValueError(
                "noise given to a net without an extra noise input (extra_noise_dim=0)"
            )
        logits = self._run(h, emb)
        return logits.reshape(*z.shape, c.vocab_size)


class CausalTransformer(_TokenNetBase):
    """Autoregressive baseline of the same size: causal attention and a learned start token
    (module docstring). Its `seq_len` is the number of predicted tokens."""

    arch = "causal_transformer"
    causal = True

    def __init__(self, config: TokenNetConfig):
        super().__init__(config)
        self.start = nn.Parameter(torch.randn(config.width) * 0.02)
        self.level = nn.Parameter(torch.zeros(config.emb_dim))  # a constant adaLN input

    def example_inputs(self, batch: int = 1) -> tuple[Tensor]:
        return (torch.zeros(batch, self.config.seq_len, dtype=torch.long,
                            device=self.position.device),)  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """Logits `x.shape + (V,)`: position `i` is the distribution of `x_i` given `x_{<i}`."""
        c = self.config
        tokens = self._check_tokens(x, "x", c.vocab_size - 1)
        h = self.embed(tokens[:, :-1])
        start = self.start.expand(len(tokens), 1, c.width)
        h = torch.cat([start, h], dim=1) + self.position
        emb = F.silu(self.level).expand(len(tokens), 1, -1)
        return self._run(h, emb).reshape(*x.shape, c.vocab_size)

    def log_prob(self, x: Tensor) -> Tensor:
        """`log p(x)` per example, `[B]` (nats)."""
        logp = F.log_softmax(self(x).float(), dim=-1)
        return logp.gather(-1, x.long()[..., None]).squeeze(-1).flatten(1).sum(1)

    @torch.no_grad()
    def sample(
        self,
        num: int,
        *,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """`num` sequences `[num, seq_len]` drawn token by token (float64 inverse CDF)."""
        c = self.config
        device = self.position.device
        x = torch.zeros(num, c.seq_len, dtype=torch.long, device=device)
        for i in range(c.seq_len):
            logits = self(x)[:, i].double() / temperature
            cdf = torch.softmax(logits, -1).cumsum(-1)
            u = torch.rand(num, 1, generator=generator, device=device, dtype=torch.float64)
            x[:, i] = (
                torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
                .squeeze(-1)
                .clamp(max=c.vocab_size - 1)
            )
        return x
