"""Pixel statistics of image sets that need no feature network.

`haze_share(images)`: the share of the pixels in the outer `frame`-pixel border that are not
black once saved as 8-bit. MNIST digits are centred in a 20x20 box of the 28x28 image, so the
border is background; a model whose background is a faint grey (the shipped MNIST model's
"haze", `results/mnist_10k/`) lights it up, while real MNIST-test scores about 0.015 (strokes
that reach the border). Fashion-MNIST objects fill the frame, so there the number is a
statistic to compare with the real split, not a defect by itself.
"""

from __future__ import annotations

import numpy as np
import torch

from difflab.images import to_uint8_pixels

HAZE_FRAME = 4
"""Width in pixels of the border where MNIST digits almost never reach."""


def haze_share(images: torch.Tensor | np.ndarray, frame: int = HAZE_FRAME) -> float:
    """Share of the pixels in the outer `frame`-pixel border of `[N, C, H, W]` (or `[N, H, W]`)
    `images` that are not black (> 0 as uint8). Floats are taken in the data range [-1, 1] and
    quantized like a saved PNG (`images.to_uint8_pixels`), so `x > -1 + 1/255` counts as lit;
    uint8 arrays are used as they are."""
    if not isinstance(frame, int) or frame < 1:
        raise ValueError(f"frame must be a positive int, got {frame!r}")
    pixels = torch.as_tensor(images)
    if pixels.ndim not in (3, 4):
        raise ValueError(f"images must be [N, C, H, W] or [N, H, W], got {tuple(pixels.shape)}")
    height, width = pixels.shape[-2:]
    if 2 * frame >= min(height, width):
        raise ValueError(f"frame {frame} leaves no interior in {height}x{width} images")
    if pixels.is_floating_point():
        pixels = to_uint8_pixels(pixels)
    elif pixels.dtype != torch.uint8:
        raise ValueError(f"images must be float in [-1, 1] or uint8, got {pixels.dtype}")
    border = torch.ones(height, width, dtype=torch.bool)
    border[frame:-frame, frame:-frame] = False
    return float((pixels[..., border] > 0).double().mean())
