"""What a net costs: parameters, FLOPs per forward pass and per sample, training throughput.

Two FLOP counts that must agree (tests/test_flops.py checks every net in `NETS`):

- `flops_per_forward`: measured by `torch.utils.flop_counter.FlopCounterMode` on one forward;
- `count_flops` / `net_flops`: counted from the shapes alone, by forward hooks on the modules
  that do matrix products (`FLOP_RULES`): `Linear`, `Conv2d`, the two matmuls of attention, and
  the Haar transforms of the pixel stem and head.

Convention (FlopCounterMode's): a multiply-add is 2 FLOPs; only matmuls and convolutions count
(biases, normalisations, activations, softmax and elementwise ops do not). With `FLOP_RULES` a
new net built from new matrix-product modules adds one rule per module type; the test then
checks the rule.

A net takes part in the check through optional class attributes:

- `example_inputs(self, batch) -> tuple`: the positional inputs of one forward (default for a
  `DiffusionNet`: `z = zeros[B, C, R, R]`, `logsnr = zeros[B]`);
- `flops_example_config() -> dict` (classmethod): small config fields for the test (default:
  the config class's defaults);
- `flops_skip: str`: why the net cannot be counted (the test skips it, printing the reason).

`flops_per_sample` turns a net and a sampler's call counts into FLOPs per generated sample; a
net with separately priced parts (the dual-rate net's encoder and light denoiser) declares them
with `forward_costs(self, batch) -> dict[str, int]`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from difflab.nets.base import DiffusionNet
from difflab.nets.layers import PixelHead, PixelStem, SelfAttention, math_attention


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def example_inputs(net: nn.Module, batch: int = 1) -> tuple:
    """The positional inputs of one forward of `net` on a batch of `batch` (zeros, `logsnr = 0`):
    `net.example_inputs(batch)` if the net declares it, else `(z, logsnr)` for a
    `DiffusionNet`. Other modules are a `TypeError` naming the class."""
    if hasattr(net, "example_inputs"):
        return tuple(net.example_inputs(batch))
    if not isinstance(net, DiffusionNet):
        raise TypeError(
            f"{type(net).__name__} is not a DiffusionNet and declares no example_inputs(batch)"
        )
    c = net.config
    param = next(net.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else None
    z = torch.zeros(batch, c.in_channels, c.resolution, c.resolution, dtype=dtype, device=device)
    return (z, torch.zeros(batch, dtype=dtype, device=device))


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
    return measured_flops(net, *inputs, **kwargs)


def measured_flops(fn: Callable[..., Any], *inputs, **kwargs) -> int:
    """FLOPs of `fn(*inputs, **kwargs)` by `FlopCounterMode` (no grad, math attention)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), math_attention(), counter:
        fn(*inputs, **kwargs)
    return int(counter.get_total_flops())


# --- FLOPs from shapes ------------------------------------------------------------------------

FlopRule = Callable[[nn.Module, tuple, Any], int]
"""`rule(module, inputs, output) -> FLOPs` of the matrix products the module does itself (its
submodules are counted by their own rules)."""


def _linear(m: nn.Linear, inputs: tuple, out: Tensor) -> int:
    return 2 * out.numel() * m.in_features


def _conv2d(m: nn.Conv2d, inputs: tuple, out: Tensor) -> int:
    kh, kw = m.kernel_size
    return 2 * out.numel() * (m.in_channels // m.groups) * kh * kw


def _attention(m: SelfAttention, inputs: tuple, out: Tensor) -> int:
    # q k^T and weights v, each [B, h, N, d] x [B, h, d or N, N or d]: 2 * 2 * B * N^2 * width
    batch, tokens, width = inputs[0].shape
    return 4 * batch * tokens * tokens * width


def _haar_stem(m: PixelStem, inputs: tuple, out: Tensor) -> int:
    # each level multiplies every 2x2 block (4 values) by a 4x4 matrix: 8 FLOPs per value
    return 8 * inputs[0].numel() * m.levels


def _haar_head(m: PixelHead, inputs: tuple, out: Tensor) -> int:
    levels = int(math.log2(m.patch_size)) if m.kind == "haar" else 0
    return 8 * out.numel() * levels


FLOP_RULES: dict[type[nn.Module], FlopRule] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv2d,
    SelfAttention: _attention,
    PixelStem: _haar_stem,
    PixelHead: _haar_head,
}
"""Matrix-product modules and their FLOPs; the most specific registered class of a module wins."""


def _rule_for(module: nn.Module) -> FlopRule | None:
    for cls in type(module).__mro__:
        if cls in FLOP_RULES:
            return FLOP_RULES[cls]
    return None


def count_flops(fn: Callable[..., Any], module: nn.Module, *inputs, **kwargs) -> int:
    """FLOPs of `fn(*inputs, **kwargs)` counted from shapes by `FLOP_RULES` on the submodules of
    `module` that run (a module called twice counts twice). `fn` is usually `module` itself or
    one of its methods (`net.encode`)."""
    total = [0]

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        total[0] += _rule_for(mod)(mod, args, out)

    handles = [m.register_forward_hook(hook) for m in module.modules() if _rule_for(m)]
    try:
        with torch.no_grad():
            fn(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def net_flops(net: nn.Module, batch: int = 1) -> int:
    """FLOPs of one forward of `net` on its `example_inputs(net, batch)`, counted from shapes."""
    return count_flops(net, net, *example_inputs(net, batch))


def forward_costs(net: nn.Module, batch: int = 1) -> dict[str, int]:
    """FLOPs per call of each separately priced part of `net` on a batch of `batch`:
    `net.forward_costs(batch)` if declared, else `{"forward": net_flops(net, batch)}`."""
    if hasattr(net, "forward_costs"):
        return dict(net.forward_costs(batch))
    return {"forward": net_flops(net, batch)}


def flops_per_sample(
    net: nn.Module,
    calls: Mapping[str, float] | int | Any,
    steps: int | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    jvps: int | None = None,
    jvp_cost: float = 3.0,
    guidance: bool = False,
) -> int:
    """FLOPs to draw one sample: `sum_k calls[k] * forward_costs(net)[k]`.

    `calls` is how often each part runs per sample (`{"forward": nfe}` or simply the integer
    NFE; a dual-rate net: `{"encode": n_E, "denoise_light": n_g}`), or a sampler spec
    (`difflab.sampling.get_sampler(name)`) with `steps` and its `options`, whose
    `part_calls(steps, **options)` and `jvps(steps, **options)` are used. `jvps` of the
    forwards carry a JVP, each charged `jvp_cost` forwards: 3 by default, what PyTorch's
    forward-mode AD executes (FlopCounterMode on `torch.func.jvp`: exactly 3 for `Linear`, whose
    tangent formula runs two more products, 2.98-2.99 for the U-ViT and U-Net; the arithmetic
    minimum would be 2). `guidance=True` doubles everything (classifier-free guidance runs two
    nets).
    Unknown part names are a `ValueError` naming them."""
    if hasattr(calls, "part_calls"):  # a SamplerSpec (duck-typed: nets do not import sampling)
        if steps is None:
            raise ValueError("flops_per_sample with a sampler spec needs steps")
        spec, options = calls, dict(options or {})
        calls = spec.part_calls(steps, **options)
        jvps = spec.jvps(steps, **options) if jvps is None else jvps
    jvps = jvps or 0
    costs = forward_costs(net)
    calls = {"forward": calls} if isinstance(calls, int) else dict(calls)
    unknown = sorted(set(calls) - set(costs))
    if unknown:
        raise ValueError(f"calls name unknown part(s) {unknown} of {type(net).__name__}; "
                         f"its parts: {sorted(costs)}")  # fmt: skip
    total = sum(n * costs[k] for k, n in calls.items())
    if jvps:
        total += (jvp_cost - 1.0) * jvps * costs.get("forward", 0)
    return int(round(total * (2 if guidance else 1)))


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
