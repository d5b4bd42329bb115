"""Moving digits: two MNIST digits bouncing in a square canvas, deterministic given a seed.

Sequence `i` of a split is drawn from `numpy.random.default_rng((seed, split, i))`: two digits
of the MNIST split (scaled to `digit_size` by area averaging), start positions uniform in the
canvas, velocities of speed `speed` pixels per frame in uniform directions; a digit that would
leave the canvas is reflected at the wall. Frames are the pixelwise maximum of the two digits,
in `[-1, 1]` (`[T, 1, canvas, canvas]`). `trajectory(i)` returns the positions and digit
labels, which the evaluation uses for identity and position errors.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .mnist import load_mnist

SPLIT_IDS = {"train": 0, "test": 1}


def bounce(start: np.ndarray, velocity: np.ndarray, frames: int, limit: float) -> np.ndarray:
    """Positions `[frames, 2]` of a point moving at `velocity` in `[0, limit]^2`, reflected at the
    walls (the unfolded straight line folded back into the box, so it is exact)."""
    t = np.arange(frames)[:, None]
    p = start[None] + velocity[None] * t
    period = 2 * limit
    p = np.mod(p, period)
    return np.where(p > limit, period - p, p)


class MovingDigits(Dataset):
    """`num_sequences` clips of `frames` frames (module docstring); items `(clip, -1)`."""

    def __init__(
        self,
        split: str = "train",
        *,
        frames: int = 10,
        canvas: int = 32,
        digit_size: int = 14,
        speed: float = 1.5,
        num_sequences: int = 20_000,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
    ):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {tuple(SPLIT_IDS)}, got {split!r}")
        if digit_size not in (7, 14, 28):
            raise ValueError(f"digit_size must be 7, 14 or 28, got {digit_size}")
        if canvas < digit_size:
            raise ValueError(f"canvas={canvas} is smaller than digit_size={digit_size}")
        if frames < 1 or num_sequences < 1:
            raise ValueError("frames and num_sequences must be >= 1")
        images, labels = load_mnist(split, cache_dir)
        self.images, self.labels = images, labels.astype(np.int64)
        self.split, self.frames, self.canvas, self.digit_size = split, frames, canvas, digit_size
        self.speed, self.num_sequences, self.seed = speed, num_sequences, seed
        self.image_shape = (1, canvas, canvas)
        self.num_classes = 0

    def __len__(self) -> int:
        return self.num_sequences

    def trajectory(self, index: int) -> dict[str, np.ndarray]:
        """`positions` `[2 digits, T, 2]` (top-left corner, row and column), `digits` (indices
        into the split) and `labels` of sequence `index`."""
        rng = np.random.default_rng((self.seed, SPLIT_IDS[self.split], int(index)))
        which = rng.integers(0, len(self.images), size=2)
        limit = self.canvas - self.digit_size
        start = rng.uniform(0, limit, size=(2, 2))
        angle = rng.uniform(0, 2 * np.pi, size=2)
        velocity = self.speed * np.stack([np.sin(angle), np.cos(angle)], axis=-1)
        positions = np.stack([bounce(start[d], velocity[d], self.frames, limit) for d in (0, 1)])
        return {"positions": positions, "digits": which, "labels": self.labels[which]}

    def digit(self, index: int) -> np.ndarray:
        """MNIST image `index` scaled to `digit_size` by area averaging, in [0, 1]."""
        s, f = self.digit_size, 28 // self.digit_size
        return self.images[index].reshape(s, f, s, f).mean((1, 3)) / 255.0

    def render(self, positions: np.ndarray, digits: np.ndarray) -> np.ndarray:
        """Frames `[T, canvas, canvas]` in [0, 1] of the digits at the (rounded) positions."""
        t = positions.shape[1]
        out = np.zeros((t, self.canvas, self.canvas), dtype=np.float32)
        s = self.digit_size
        for d, which in enumerate(digits):
            for i, (r, c) in enumerate(np.rint(positions[d]).astype(int)):
                patch = out[i, r : r + s, c : c + s]
                np.maximum(patch, self.digit(which), out=patch)
        return out

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= int(index) < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} sequences")
        traj = self.trajectory(index)
        clip = self.render(traj["positions"], traj["digits"]) * 2.0 - 1.0
        return torch.from_numpy(clip)[:, None], torch.tensor(-1, dtype=torch.int64)
