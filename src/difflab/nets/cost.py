"""What a net costs: parameters, FLOPs per forward pass, training throughput."""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from difflab.nets.base import DiffusionNet
from difflab.nets.layers import math_attention


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _example_inputs(net: nn.Module, input_shape: tuple[int, ...], args: tuple) -> tuple:
    param = next(net.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else None
    x = torch.zeros(input_shape, dtype=dtype, device=device)
    if isinstance(net, DiffusionNet) and not args:
        args = (torch.zeros(input_shape[0], dtype=dtype, device=device),)  # logsnr = 0
    return (x, *args)


def flops_per_forward(net: nn.Module, input_shape: tuple[int, ...], *args, **kwargs) -> int:
    """FLOPs of one `net(x, *args, **kwargs)` with `x = zeros(input_shape)`, counted by
    `torch.utils.flop_counter.FlopCounterMode`.

    Convention of FlopCounterMode: a multiply-add is 2 FLOPs (`Linear(i, o)` on a batch of `B`
    costs `2 * B * i * o`), and only matmuls, convolutions and attention are counted
    (normalisations, activations and elementwise ops are not). For a `DiffusionNet` without
    `args`, `logsnr = 0` of shape `[B]` is passed. The total is for the whole batch.

    Runs under `math_attention()`: FlopCounterMode has no formula for the fused CPU attention
    kernel (it would count attention as 0), while the explicit path is counted as its two matmuls
    (`4 * B * heads * N**2 * head_dim` FLOPs), the cost the fused kernels also pay.
    """
    inputs = _example_inputs(net, input_shape, args)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), math_attention(), counter:
        net(*inputs, **kwargs)
    return int(counter.get_total_flops())


def train_throughput(
    net: nn.Module,
    input_shape: tuple[int, ...],
    steps: int = 5,
    warmup: int = 2,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Images per second of forward + backward in training mode (loss `mean(out**2)`, no
    optimizer step) on random inputs of `input_shape`, optionally under
    `torch.autocast(device, autocast_dtype)`. Leaves the net's mode as it was and its grads None."""
    inputs = _example_inputs(net, input_shape, ())
    inputs = (torch.randn_like(inputs[0]), *inputs[1:])
    device = inputs[0].device.type
    autocast = (
        torch.autocast(device, dtype=autocast_dtype)
        if autocast_dtype is not None
        else nullcontext()
    )
    was_training = net.training
    net.train()
    try:
        for i in range(warmup + steps):
            if i == warmup:
                start = time.perf_counter()
            with autocast:
                loss = net(*inputs).float().square().mean()
            loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return steps * input_shape[0] / (time.perf_counter() - start)
    finally:
        net.train(was_training)
        net.zero_grad(set_to_none=True)
