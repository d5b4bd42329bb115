"""Building blocks of the U-ViT, residual U-ViT and U-Net.

Simple diffusion (Hoogeboom, Heek, Salimans 2023, sec. 3 and Fig. 7) builds its U-ViT from
convolutional residual blocks, transformer blocks, an optional wavelet or patching first
downsampling and a logsnr embedding; these are the pieces, each small and tested on its own.

Attention goes through `torch.nn.functional.scaled_dot_product_attention` (fused kernels). Those
kernels have no forward-mode AD: under `torch.func.jvp` the CPU kernel raises
`NotImplementedError: Trying to use forward AD with _scaled_dot_product_flash_attention_for_cpu`
(torch 2.13; the fused CUDA kernels have no forward-AD formula either, not checked on a GPU
here). Code that needs `jvp` through a net (the covariance-aware samplers, parameter-space moment
matching) runs it under PyTorch's own `torch.nn.attention.sdpa_kernel(SDPBackend.MATH)`, whose
math kernel has forward-mode AD. `math_attention()` (or `attention_backend("math")`) switches
every attention layer of the process to the explicit `softmax(q k^T / sqrt(d)) v` instead (used
where a tool needs plain matrix products, e.g. the FLOP counter in `cost.py`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

ATTENTION_BACKENDS: tuple[str, ...] = ("sdpa", "math")
_attention_backend = "sdpa"


def get_attention_backend() -> str:
    """The attention implementation in use: `"sdpa"` (fused, default) or `"math"` (explicit)."""
    return _attention_backend


def set_attention_backend(name: str) -> None:
    """Switch every attention layer in the process to `name` (one of `ATTENTION_BACKENDS`)."""
    global _attention_backend
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {name!r}")
    _attention_backend = name


@contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Use attention backend `name` inside the `with` block, restoring the previous one after."""
    previous = get_attention_backend()
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def math_attention():
    """`with math_attention(): torch.func.jvp(net, ...)`: the explicit, jvp-friendly path."""
    return attention_backend("math")


def explicit_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """`softmax(q k^T / sqrt(d)) v` written out (Vaswani et al. 2017, eq. 1); `[..., n, d]`."""
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention through the selected backend (see module docstring)."""
    if _attention_backend == "math":
        return explicit_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero the weights (and bias) of `module`: a residual branch ending in it starts as identity,
    a net ending in it starts with output zero (Dhariwal & Nichol 2021; simple diffusion)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (the largest divisor of `channels` among 32, 16, ..., 1)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def modulate(h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """FiLM (Perez et al. 2018) on normalised activations: `h * (1 + scale) + shift`."""
    return h * (1 + scale) + shift


# --- logsnr embedding --------------------------------------------------------------------------

FOURIER_DIM = 128
"""Number of Fourier features (sin and cos pairs) of the normalised logsnr."""
LOGSNR_SCALE = 10.0
"""Nets see `u = tanh(logsnr / LOGSNR_SCALE)`: bounded, smooth, and finite at logsnr = +-inf."""


def normalise_logsnr(logsnr: Tensor) -> Tensor:
    """`u = tanh(logsnr / LOGSNR_SCALE)` in (-1, 1): about linear over the usual range
    [-15, 15] (`u` = +-0.9), and well defined at the endpoints +-inf of a schedule."""
    return torch.tanh(logsnr / LOGSNR_SCALE)


def fourier_features(u: Tensor, dim: int = FOURIER_DIM, max_freq: float = 1000.0) -> Tensor:
    """`[B] -> [B, dim]`: `sin(f_k u), cos(f_k u)` with `f_k` geometric from 1 to `max_freq`
    (the Transformer / DDPM sinusoidal embedding, applied to the normalised logsnr `u`)."""
    freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2, device=u.device))
    angles = u[:, None] * freqs.to(u.dtype)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Conditioning(nn.Module):
    """The conditioning vector `emb = silu(mlp(fourier(u)) + label_embedding(y))` for FiLM.

    `u` is the per-example normalised logsnr (never an integer timestep). With `num_classes > 0`
    the label table has `num_classes + 1` rows: row `num_classes` is the "null" label used for
    unconditional predictions in classifier-free guidance (Ho & Salimans 2022).
    """

    def __init__(self, emb_dim: int, num_classes: int = 0):
        super().__init__()
        self.logsnr_mlp = nn.Sequential(
            nn.Linear(FOURIER_DIM, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label_embedding = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

    def forward(self, u: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.logsnr_mlp(fourier_features(u))
        if self.label_embedding is not None and labels is not None:
            emb = emb + self.label_embedding(labels)
        return F.silu(emb)


# --- attention and transformer blocks ----------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens `[B, N, width]`; output projection zero-initialised."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = zero_init(nn.Linear(width, width))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return self.out(rearrange(attention(q, k, v), "b h n d -> b n (h d)"))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block with adaptive LayerNorm: FiLM of both norms from `emb`
    (the U-ViT middle of simple diffusion, Fig. 7; adaLN as in DiT, Peebles & Xie 2023).
    Both residual branches end in zero-initialised projections, so the block starts as identity.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, emb_dim: int, dropout: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            zero_init(nn.Linear(hidden, width)),
        )
        self.film = nn.Linear(emb_dim, 4 * width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale1, shift1, scale2, shift2 = self.film(emb)[:, None, :].chunk(4, dim=-1)
        x = x + self.dropout(self.attn(modulate(self.norm1(x), scale1, shift1)))
        return x + self.dropout(self.mlp(modulate(self.norm2(x), scale2, shift2)))


class SpatialSelfAttention(nn.Module):
    """Residual self-attention over the pixels of a feature map (the DDPM / ADM U-Net block)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = SelfAttention(channels, heads)

    def forward(self, x: Tensor) -> Tensor:
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")
        out = rearrange(self.attn(tokens), "b (h w) c -> b c h w", h=x.shape[2])
        return x + out.contiguous()  # keep NCHW strides (GroupNorm's jvp cannot view others)


# --- convolutional blocks ----------------------------------------------------------------------


class ResBlock(nn.Module):
    """Convolutional residual block with FiLM conditioning ("scale-shift norm", Dhariwal & Nichol
    2021), optionally followed by spatial self-attention (`heads > 0`, used by the U-Net).

    `h = conv(silu(norm(x)))`, `h = conv(dropout(silu(FiLM(norm(h), emb))))`, `out = skip(x) + h`;
    the second conv is zero-initialised so the block starts as (a projection of) the identity.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, heads: int = 0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = SpatialSelfAttention(out_ch, heads) if heads else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = rearrange(self.film(emb), "b (two c) -> two b c 1 1", two=2)
        h = self.conv2(self.dropout(F.silu(modulate(self.norm2(h), scale, shift))))
        return self.attn(self.skip(x) + h)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution (`in_ch -> out_ch`)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# --- first downsampling: Haar wavelet or patching ----------------------------------------------

# Rows: LL, LH, HL, HH filters on the 2x2 block (a, b; c, d) read row-major. Symmetric and
# orthogonal (H @ H.T = I), so the inverse transform is the same matrix.
_HAAR = 0.5 * torch.tensor(
    [[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]]
)


def haar_dwt(x: Tensor, levels: int = 1) -> Tensor:
    """Orthonormal 2-D Haar transform, `[B, C, H, W] -> [B, C * 4**levels, H / 2**l, W / 2**l]`.

    Each level maps every 2x2 block to its (LL, LH, HL, HH) coefficients; later levels transform
    all channels (a wavelet packet), which keeps the map orthonormal and exactly invertible by
    `haar_idwt`. Simple diffusion (sec. 3) downsamples first with a wavelet (5/3 there, Haar here).
    """
    for _ in range(levels):
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"haar_dwt needs even height and width, got shape {tuple(x.shape)}")
        blocks = rearrange(x, "b c (h p) (w q) -> b c h w (p q)", p=2, q=2)
        coeffs = blocks @ _HAAR.to(x).T
        x = rearrange(coeffs, "b c h w k -> b (c k) h w")
    return x


def haar_idwt(x: Tensor, levels: int = 1) -> Tensor:
    """Inverse of `haar_dwt`: `[B, C * 4**levels, h, w] -> [B, C, h * 2**levels, w * 2**levels]`."""
    for _ in range(levels):
        if x.shape[1] % 4:
            raise ValueError(f"haar_idwt needs channels divisible by 4, got shape {tuple(x.shape)}")
        coeffs = rearrange(x, "b (c k) h w -> b c h w k", k=4)
        blocks = coeffs @ _HAAR.to(x)  # H is orthogonal: inverse = transpose
        x = rearrange(blocks, "b c h w (p q) -> b c (h p) (w q)", p=2, q=2)
    return x


STEMS: tuple[str, ...] = ("conv", "haar", "patch")


class PixelStem(nn.Module):
    """Pixels to features at `1 / patch_size` resolution (simple diffusion, sec. 3: avoid
    high-resolution feature maps by downsampling first).

    `"conv"`: a 3x3 convolution at full resolution (`patch_size = 1`, the U-Net);
    `"haar"`: `log2(patch_size)` Haar levels, then a 3x3 convolution;
    `"patch"`: a `patch_size` x `patch_size` convolution with stride `patch_size`.
    """

    def __init__(self, kind: str, patch_size: int, in_ch: int, out_ch: int):
        super().__init__()
        self.kind, self.levels = kind, int(math.log2(patch_size)) if kind == "haar" else 0
        if kind == "patch":
            self.conv = nn.Conv2d(in_ch, out_ch, patch_size, stride=patch_size)
        else:
            self.conv = nn.Conv2d(in_ch * patch_size**2, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(haar_dwt(x, self.levels) if self.levels else x)


class PixelHead(nn.Module):
    """Features back to pixels, inverting the stem: norm, SiLU, a zero-initialised 3x3 conv to
    `out_ch * patch_size**2` channels, then the inverse Haar transform (`"haar"`) or depth-to-space
    (`"patch"`). The zero init makes a freshly built net output exactly zero."""

    def __init__(self, kind: str, patch_size: int, in_ch: int, out_ch: int):
        super().__init__()
        self.kind, self.patch_size = kind, patch_size
        self.norm = group_norm(in_ch)
        self.conv = zero_init(nn.Conv2d(in_ch, out_ch * patch_size**2, 3, padding=1))

    def forward(self, h: Tensor) -> Tensor:
        out = self.conv(F.silu(self.norm(h)))
        if self.kind == "haar":
            return haar_idwt(out, int(math.log2(self.patch_size)))
        p = self.patch_size
        return rearrange(out, "b (c p q) h w -> b c (h p) (w q)", p=p, q=p) if p > 1 else out
