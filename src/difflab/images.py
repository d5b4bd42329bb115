"""Images as files (layer 0): `[N, C, H, W]` tensors in the data range [-1, 1] -> uint8 grids
and PNGs. Used by the training monitor, the evaluation plots and `difflab sample`/`demo`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_uint8_pixels(images: Tensor) -> Tensor:
    """`[N, C, H, W]` floats in [-1, 1] -> uint8 `[N, C, H, W]`, `round((clip(x) + 1) * 127.5)`
    (how a sample is saved as PNG)."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """`[N, C, H, W]` images in [-1, 1] -> one `uint8` `[rows*(H+pad)+pad, ..., C]` array."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [N, 1 or 3, H, W], got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    pixels = to_uint8_pixels(images)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def save_image_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int = 1):
    """Write `image_grid(images)` as a PNG, upscaled by `scale` (nearest) for small images."""
    grid = image_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_images(images: Tensor, folder: str | Path, pattern: str = "{:05d}.png") -> list[Path]:
    """Write each image of `[N, C, H, W]` (in [-1, 1]) as its own PNG `folder/pattern.format(i)`."""
    folder = Path(folder)
    paths = []
    for i, img in enumerate(to_uint8_pixels(images)):
        path = folder / pattern.format(i)
        Image.fromarray(img.permute(1, 2, 0).squeeze(-1).numpy()).save(path)
        paths.append(path)
    return paths
