"""Exponential moving averages of a network's weights, one copy per decay."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class EMA(nn.Module):
    """Averaged copies `ema_d <- d * ema_d + (1 - d) * theta` of `net`, one per decay `d`.

    The copies are full modules (`self.average(d)`), kept in eval mode without gradients, so
    they can be sampled from and saved like the network itself. Buffers (e.g. norm statistics)
    are copied, not averaged. The half-life of decay `d` is `log(0.5) / log(d)` updates.

    With `warmup`, update `n` (0-based) uses `min(d, (1 + n) / (10 + n))` (the warm-up of
    TensorFlow's ExponentialMovingAverage `num_updates`): early averages forget the
    initial weights quickly, which matters for short runs started from a pretrained net
    (distillation students) where a plain 0.999 average would still hold 55% of the initial
    weights after 600 updates.
    """

    def __init__(
        self, net: nn.Module, decays: list[float] | tuple[float, ...], warmup: bool = False
    ) -> None:
        super().__init__()
        for d in decays:
            if not 0.0 < d < 1.0:
                raise ValueError(f"EMA decays must lie in (0, 1), got {d}")
        self.warmup = warmup
        self.decays = tuple(float(d) for d in decays)
        self.averages = nn.ModuleList(copy.deepcopy(net) for _ in self.decays)
        for avg in self.averages:
            avg.eval().requires_grad_(False)

    @staticmethod
    def key(decay: float) -> str:
        """The name of the copy with `decay` in checkpoints (`ema_0.999`)."""
        return f"ema_{decay:g}"

    def average(self, decay: float | None = None) -> nn.Module:
        """The copy for `decay` (the first one if None)."""
        if decay is None:
            return self.averages[0]
        for d, avg in zip(self.decays, self.averages):
            if math.isclose(d, decay, rel_tol=0, abs_tol=1e-12):
                return avg
        raise ValueError(f"no EMA with decay {decay}; stored decays: {list(self.decays)}")

    @staticmethod
    def warmup_length(decay: float) -> int:
        """The number of updates before `decay` itself is used under the warm-up: the first `n`
        with `(1 + n) / (10 + n) >= decay`, i.e. `ceil((10 d - 1) / (1 - d))` (890 for 0.99,
        8990 for 0.999). A run shorter than that averages every decay at or above it alike:
        its copies are the same weights (docs/methods/recipe.md, "EMA warm-up")."""
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decays must lie in (0, 1), got {decay}")
        n = max(0, math.ceil((10.0 * decay - 1.0) / (1.0 - decay)))
        while n > 0 and n / (9.0 + n) >= decay:  # update n - 1 already uses it (rounding)
            n -= 1
        while (1.0 + n) / (10.0 + n) < decay:
            n += 1
        return n

    def decay_at(self, decay: float, step: int | None) -> float:
        """The decay used by update number `step` (0-based; `None`: no warm-up)."""
        if not self.warmup or step is None:
            return decay
        return min(decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, net: nn.Module, step: int | None = None) -> None:
        """One averaging step towards `net`'s weights; `step` (the optimizer step, 0-based)
        drives the warm-up and is required when it is on."""
        if self.warmup and step is None:
            raise ValueError("EMA with warmup needs the update's step")
        params = [p.detach() for p in net.parameters()]
        buffers = list(net.buffers())
        for d, avg in zip((self.decay_at(d, step) for d in self.decays), self.averages):
            # lerp_(p, 1 - d) = ema + (1 - d)(p - ema) = d * ema + (1 - d) * p
            torch._foreach_lerp_(list(avg.parameters()), params, 1.0 - d)
            for b_avg, b in zip(avg.buffers(), buffers):
                b_avg.copy_(b)

    def train(self, mode: bool = True) -> EMA:
        return self  # the averages stay in eval mode
