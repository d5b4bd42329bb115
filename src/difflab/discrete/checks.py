"""Argument checks shared by the discrete core: tokens and noise levels.

Tokens are integer tensors (`int64` or `int32`) with values in `[0, V)`; masked-diffusion states
may also hold the mask id `V`. A level `logsnr` is a float tensor (or number) that is a scalar,
one value per example (`[B]`) or one per token (the token shape); `+inf` is clean data, `-inf`
pure noise, NaN an error. Every error is one line that names the argument.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TOKEN_DTYPES = (torch.int64, torch.int32)


def check_vocab_size(vocab_size: int, name: str = "vocab_size") -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"{name} must be an int >= 2, got {vocab_size!r}")
    return vocab_size


def reads_values(x: Tensor) -> bool:
    """Whether a value check may read `x` on the host (not on the meta device, not while
    compiling)."""
    return x.device.type != "meta" and not torch.compiler.is_compiling()


def check_tokens(
    x: Tensor, vocab_size: int, *, name: str = "x", allow_mask: bool = False, values: bool = True
) -> Tensor:
    """`x` as int64 after checking dtype and range (`[0, V)`, or `[0, V]` with `allow_mask`).
    The range check is one host read; `values=False` skips it (dtype and shape only), for inner
    functions whose caller checked the tokens once."""
    check_vocab_size(vocab_size)
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be an integer tensor of tokens, got {type(x).__name__}")
    if x.dtype not in TOKEN_DTYPES:
        raise ValueError(f"{name} must hold integer tokens (int64 or int32), got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension, got a scalar")
    if values and x.numel() and reads_values(x):
        top = vocab_size if allow_mask else vocab_size - 1
        lo, hi = torch.stack([x.min(), x.max()]).tolist()
        if lo < 0 or hi > top:
            what = f"[0, {vocab_size}] (mask id {vocab_size})" if allow_mask else f"[0, {top}]"
            raise ValueError(f"{name} has token values in [{lo}, {hi}], outside {what}")
    return x.long()


def check_logsnr(
    logsnr: Tensor | float, shape: torch.Size, *, name: str = "logsnr", values: bool = True
) -> Tensor:
    """`logsnr` as a float64 tensor expanded to the token `shape`: a scalar, `[B]` (one level per
    example) or exactly `shape` (one per token). NaN and other shapes are errors naming `name`;
    the NaN check is one host read, skipped with `values=False`."""
    shape = torch.Size(shape)
    if isinstance(logsnr, (int, float)) and not isinstance(logsnr, bool):
        logsnr = torch.tensor(float(logsnr))
    if not isinstance(logsnr, Tensor) or not (logsnr.is_floating_point()):
        kind = logsnr.dtype if isinstance(logsnr, Tensor) else type(logsnr).__name__
        raise ValueError(f"{name} must be a floating-point tensor or a number, got {kind}")
    if values and reads_values(logsnr):
        if bool(torch.isnan(logsnr).any()):
            raise ValueError(f"{name} contains NaN")
    level = logsnr.double()
    if level.ndim == 0:
        return level.expand(shape)
    if level.ndim == 1 and len(shape) >= 1 and level.shape[0] == shape[0]:
        return level.reshape(shape[0], *([1] * (len(shape) - 1))).expand(shape)
    if tuple(level.shape) == tuple(shape):
        return level
    raise ValueError(
        f"{name} must be a scalar, [B]=[{shape[0] if len(shape) else '?'}] or the token shape "
        f"{list(shape)}, got shape {list(level.shape)}"
    )


def check_level_order(logsnr_t: Tensor, logsnr_s: Tensor) -> None:
    """`logsnr_s >= logsnr_t` everywhere (`s` is the cleaner level of a reverse step)."""
    if not reads_values(logsnr_t):
        return
    if bool((logsnr_s < logsnr_t).any()):
        raise ValueError("logsnr_s must be >= logsnr_t (s is the cleaner level of the step)")


def keep_prob(logsnr: Tensor) -> Tensor:
    """`alpha = sigmoid(logsnr)`: the probability that a token is untouched (exact 0 and 1 at
    `-inf` and `+inf`)."""
    return torch.sigmoid(logsnr)


def check_positive(value: float, name: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)
