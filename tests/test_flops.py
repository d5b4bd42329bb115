"""The FLOPs counter (`difflab.nets.cost`): counted from shapes by module rules, checked against
`torch.utils.flop_counter.FlopCounterMode` on every net in `NETS` (nets other modules register
too), and priced per sample from a sampler's call counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import jvp

from difflab.nets import (
    FLOP_RULES,
    NETS,
    DualRateNet,
    attention_backend,
    build_net,
    count_flops,
    flops_per_sample,
    forward_costs,
    measured_flops,
    net_flops,
)
from difflab.nets.base import DiffusionNet
from difflab.nets.cost import example_inputs
from difflab.nets.layers import SelfAttention
from difflab.sampling import get_sampler

# small configs of the nets this file knows; others use `flops_example_config()` or defaults
SMALL = {
    "uvit": dict(in_channels=2, resolution=16, channels=(8, 12), num_blocks=1,
                 transformer_width=16, transformer_depth=2, heads=2, emb_dim=16),
    "residual_uvit": dict(in_channels=1, resolution=16, channels=(8,), num_blocks=2,
                          stem="patch", transformer_width=16, heads=4, emb_dim=16),
    "unet": dict(in_channels=1, resolution=8, channels=(8, 16), num_blocks=1, heads=2,
                 emb_dim=16, num_classes=3),
}  # fmt: skip


def small_net(name: str) -> nn.Module:
    cls = NETS[name]
    if getattr(cls, "flops_skip", None):
        pytest.skip(f"net {name!r} cannot be counted: {cls.flops_skip}")
    kwargs = SMALL.get(name)
    if kwargs is None:
        kwargs = cls.flops_example_config() if hasattr(cls, "flops_example_config") else {}
    torch.manual_seed(0)
    net = build_net(name, **kwargs).eval()
    if not isinstance(net, DiffusionNet) and not hasattr(net, "example_inputs"):
        pytest.skip(
            f"net {name!r} ({type(net).__name__}) is not an image denoiser and declares no "
            "example_inputs(batch): nothing to run it on"
        )
    if not hasattr(net, "example_inputs"):
        try:
            with torch.no_grad():
                net(*example_inputs(net, 1))
        except (ValueError, TypeError) as err:
            pytest.skip(
                f"net {name!r} rejects image inputs [B, C, R, R] and declares no "
                f"example_inputs(batch): {err}"
            )
    return net


@pytest.mark.parametrize("name", sorted(NETS))
def test_counted_flops_match_flop_counter_mode_on_every_registered_net(name):
    net = small_net(name)
    inputs = example_inputs(net, 2)
    counted = net_flops(net, 2)
    assert counted > 0
    assert counted == measured_flops(net, *inputs)
    assert counted == 2 * net_flops(net, 1)  # per example: linear in the batch


@pytest.mark.parametrize("name", sorted(NETS))
def test_counted_flops_do_not_depend_on_the_attention_backend(name):
    """FlopCounterMode has no formula for the fused CPU attention kernel (it counts 0); the
    counter counts attention's two matmuls on every backend."""
    net = small_net(name)
    inputs = example_inputs(net, 1)
    with attention_backend("sdpa"):
        fused = count_flops(net, net, *inputs)
    assert fused == net_flops(net, 1)


def test_attention_rule_is_its_two_matmuls():
    batch, tokens, width, heads = 3, 5, 8, 2
    attn = SelfAttention(width, heads)
    x = torch.randn(batch, tokens, width)
    linears = 2 * batch * tokens * width * (3 * width + width)
    assert count_flops(attn, attn, x) == linears + 4 * batch * tokens**2 * width
    assert count_flops(attn, attn, x) == measured_flops(attn, x)


def test_rules_apply_to_subclasses_and_new_rules_are_used():
    class Scaled(nn.Linear):
        pass

    class Gram(nn.Module):
        def forward(self, x):
            return x @ x.transpose(-2, -1)

    m = nn.Sequential(Scaled(4, 6))
    x = torch.randn(2, 4)
    assert count_flops(m, m, x) == 2 * 2 * 4 * 6 == measured_flops(m, x)
    g, y = Gram(), torch.randn(3, 5, 7)
    assert count_flops(g, g, y) == 0  # no rule yet: not counted
    FLOP_RULES[Gram] = lambda mod, args, out: 2 * out.numel() * args[0].shape[-1]
    try:
        assert count_flops(g, g, y) == measured_flops(g, y) == 2 * 3 * 5 * 5 * 7
    finally:
        del FLOP_RULES[Gram]


def test_a_jvp_costs_about_three_forwards_in_pytorch():
    """The default `jvp_cost = 3`: PyTorch's forward-mode formula of a linear layer runs two more
    products of its size (FlopCounterMode on `torch.func.jvp`); a whole net slightly less (the
    Haar transforms' constant matrices carry no tangent)."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))
    x = torch.randn(4, 6)
    assert measured_flops(lambda: jvp(mlp, (x,), (torch.ones_like(x),))) == 3 * measured_flops(
        mlp, x
    )
    net = small_net("uvit")
    z, logsnr = example_inputs(net, 1)
    tangent = measured_flops(lambda: jvp(lambda v: net(v, logsnr), (z,), (torch.ones_like(z),)))
    assert 2.9 * net_flops(net) < tangent <= 3 * net_flops(net)


def test_dual_rate_parts_are_priced_apart_and_match_flop_counter_mode():
    net = small_net("dual_rate")
    assert isinstance(net, DualRateNet)
    z, logsnr = example_inputs(net, 2)
    costs = forward_costs(net, 2)
    features = net.encode(z, logsnr)
    assert costs["encode"] == measured_flops(net.encode, z, logsnr)
    assert costs["denoise_light"] == measured_flops(net.denoise_light, z, logsnr, features)
    assert costs["forward"] == costs["encode"] + costs["denoise_light"] == net_flops(net, 2)


def test_flops_per_sample_from_the_sampler_counts():
    net = small_net("uvit")
    one = net_flops(net)
    ddim = get_sampler("ddim")
    assert flops_per_sample(net, ddim.part_calls(8)) == 8 * one == flops_per_sample(net, 8)
    assert flops_per_sample(net, 8, guidance=True) == 16 * one
    assert flops_per_sample(net, 8, jvps=8) == 24 * one
    assert flops_per_sample(net, 8, jvps=8, jvp_cost=2.0) == 16 * one
    dual = small_net("dual_rate")
    c = forward_costs(dual)
    spec = get_sampler("dual_rate_ddpm")
    calls = spec.part_calls(10, refresh_every=4)
    assert calls == {"encode": 3, "denoise_light": 10}
    assert flops_per_sample(dual, calls) == 3 * c["encode"] + 10 * c["denoise_light"]
    assert flops_per_sample(dual, ddim.part_calls(10)) == 10 * c["forward"]  # composed net
    assert flops_per_sample(dual, spec, 10, options={"refresh_every": 4}) == flops_per_sample(
        dual, calls
    )
    cov = get_sampler("cov_ddim")  # forward + JVP per step, charged 3 forwards each
    assert flops_per_sample(net, cov, 4) == (cov.nfe(4) + 2 * cov.jvps(4)) * one
    with pytest.raises(ValueError, match="needs steps"):
        flops_per_sample(net, cov)
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['denoise_light', 'encode'\]"):
        flops_per_sample(net, calls)


def test_example_inputs_of_a_plain_module_is_a_named_error():
    with pytest.raises(TypeError, match="Linear is not a DiffusionNet"):
        net_flops(nn.Linear(2, 2))
