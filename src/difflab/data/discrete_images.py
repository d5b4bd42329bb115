"""Discrete MNIST: digits as images of tokens, binarised or in 16 grey levels.

From the prepared MNIST cache (`difflab data prepare mnist`), each uint8 pixel `p` becomes the
token `floor(p * levels / 256)` in `[0, levels)`: `levels = 2` is binarisation at 128,
`levels = 16` keeps the top four bits. Items are `(LongTensor [1, 28, 28], label)`;
`tokens_to_images` maps tokens back to `[-1, 1]` (`-1 + 2 k / (levels - 1)`) for grids and
feature nets.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .mnist import load_mnist

LEVELS = (2, 16)


def check_levels(levels: int) -> int:
    if levels not in LEVELS:
        raise ValueError(f"levels must be one of {LEVELS}, got {levels!r}")
    return levels


def pixels_to_tokens(pixels: np.ndarray | Tensor, levels: int) -> Tensor:
    """`floor(p * levels / 256)` of uint8 pixels, as int64 tokens."""
    check_levels(levels)
    p = torch.as_tensor(np.asarray(pixels) if not isinstance(pixels, Tensor) else pixels)
    if p.dtype != torch.uint8:
        raise ValueError(f"pixels must be uint8, got {p.dtype}")
    return (p.long() * levels) // 256


def tokens_to_images(tokens: Tensor, levels: int) -> Tensor:
    """Tokens in `[0, levels)` to float32 images in `[-1, 1]`."""
    check_levels(levels)
    if tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tokens must be integer, got {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= levels):
        raise ValueError(f"tokens must be in [0, {levels - 1}]")
    return tokens.float() * (2.0 / (levels - 1)) - 1.0


class DiscreteMnist(Dataset):
    """MNIST as `[1, 28, 28]` token images with `levels` values (module docstring)."""

    num_classes = 10
    image_shape = (1, 28, 28)

    def __init__(
        self,
        split: str = "train",
        *,
        levels: int = 2,
        cache_dir: str | os.PathLike | None = None,
        pixels: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ):
        self.levels = check_levels(levels)
        self.vocab_size = levels
        if pixels is None:
            pixels, labels = load_mnist(split, cache_dir)
        self.tokens = pixels_to_tokens(pixels, levels)[:, None]  # [N, 1, 28, 28]
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if self.tokens.shape[1:] != self.image_shape or len(self.labels) != len(self.tokens):
            raise ValueError(f"pixels must be [N, 28, 28] with N labels, got {list(pixels.shape)}")

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.tokens[index], int(self.labels[index])

    def to_images(self, tokens: Tensor) -> Tensor:
        return tokens_to_images(tokens, self.levels)


def discrete_mnist(
    split: str = "train", *, levels: int = 2, cache_dir: str | os.PathLike | None = None
) -> DiscreteMnist:
    """MNIST 60k/10k as token images with `levels` in (2, 16) values (module docstring)."""
    return DiscreteMnist(split, levels=levels, cache_dir=cache_dir)
