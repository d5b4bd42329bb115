"""Tests for difflab.nets: the input contract, skips, attention backends under jvp, Haar, costs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn
from torch.func import jvp, vjp

from difflab.diffusion.parameterization import as_denoiser
from difflab.nets import (
    NETS,
    UViT,
    attention_backend,
    build_net,
    count_parameters,
    flops_per_forward,
    get_attention_backend,
    haar_dwt,
    haar_idwt,
    math_attention,
    mnist_unet_config,
    mnist_uvit_config,
    train_throughput,
)
from difflab.nets.layers import SelfAttention

B = 3
TINY = {
    "uvit": dict(
        in_channels=2,
        resolution=8,
        channels=(8,),
        num_blocks=1,
        transformer_width=16,
        transformer_depth=1,
        heads=2,
        emb_dim=16,
    ),
    "uvit_patch_2levels": dict(
        in_channels=2,
        resolution=16,
        channels=(8, 12),
        num_blocks=1,
        stem="patch",
        patch_size=2,
        transformer_width=16,
        transformer_depth=2,
        heads=2,
        emb_dim=16,
    ),
    "residual_uvit": dict(
        in_channels=2,
        resolution=16,
        channels=(8, 12),
        num_blocks=2,
        transformer_width=16,
        transformer_depth=1,
        heads=2,
        emb_dim=16,
    ),
    "unet": dict(in_channels=2, resolution=8, channels=(8, 12), num_blocks=1, heads=2, emb_dim=16),
}
ARCH = {"uvit_patch_2levels": "uvit"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny nets run ~10x faster on one thread than on two busy-waiting OpenMP threads when the
    2 cores are shared with other jobs; restored after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(key: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return build_net(ARCH.get(key, key), **{**TINY[key], **overrides})


def randomize(net: nn.Module) -> nn.Module:
    """Perturb every parameter: fresh nets output exactly zero (zero-init), so derivative and
    agreement tests need non-trivial weights."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p), alpha=0.2)
    return net


def inputs(net: nn.Module, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    c = net.config
    g = torch.Generator().manual_seed(2)
    z = torch.randn(B, c.in_channels, c.resolution, c.resolution, generator=g, dtype=dtype)
    return z, torch.linspace(-8.0, 8.0, B, dtype=dtype)


# --- contract: shapes, gradients, conditioning -------------------------------------------------


@pytest.mark.parametrize("key", list(TINY))
@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("level", ["per_example", "per_element"])
def test_shape_and_every_parameter_gets_a_finite_gradient(key, conditional, level):
    net = randomize(tiny(key, num_classes=5 if conditional else 0))
    z, logsnr = inputs(net)
    if level == "per_element":
        logsnr = torch.randn(B, 1, z.shape[2], z.shape[3]) * 5
    labels = torch.tensor([0, 4, 2]) if conditional else None
    out = net(z, logsnr, labels)
    assert out.shape == z.shape
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert all(p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("key", list(TINY))
def test_fresh_net_outputs_zero(key):
    net = tiny(key)
    z, logsnr = inputs(net)
    assert torch.equal(net(z, logsnr), torch.zeros_like(z))


def test_scalar_per_example_and_constant_map_levels_agree():
    net = randomize(tiny("uvit")).double().eval()
    z, _ = inputs(net, torch.float64)
    logsnr = torch.full((B,), 2.5, dtype=torch.float64)
    out = net(z, logsnr)
    torch.testing.assert_close(net(z, logsnr[:1].squeeze()), out, rtol=0, atol=0)
    as_map = logsnr.view(B, 1, 1, 1).expand(B, z.shape[1], z.shape[2], z.shape[3])
    # equal up to the rounding of the map's mean (amplified by the 1000x Fourier frequency)
    torch.testing.assert_close(net(z, as_map), out, rtol=1e-9, atol=1e-9)


def test_per_element_map_reaches_the_net():
    """Two maps with the same per-example mean (same FiLM input) must give different outputs."""
    net = randomize(tiny("unet")).eval()
    z, _ = inputs(net)
    a = torch.zeros(B, 1, 8, 8)
    b = a.clone()
    b[..., :4, :] = 3.0
    b[..., 4:, :] = -3.0
    assert not torch.allclose(net(z, a), net(z, b), atol=1e-4)


def test_infinite_logsnr_gives_the_limit_of_large_levels():
    """The net sees `tanh(logsnr / 10)`: at +-inf exactly its limit +-1, which float32 reaches
    by +-1000; the levels still matter (+inf, -inf and 0 give different outputs)."""
    net = randomize(tiny("uvit")).eval()
    z, _ = inputs(net)
    out = net(z, torch.tensor([float("inf"), float("-inf"), 0.0]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, net(z, torch.tensor([1e3, -1e3, 0.0])), rtol=0, atol=0)
    same_z = net(z[:1].expand(3, -1, -1, -1), torch.tensor([float("inf"), float("-inf"), 0.0]))
    assert (same_z[0] - same_z[1]).abs().max() > 1e-3 and (same_z[0] - same_z[2]).abs().max() > 1e-3


def test_labels_none_is_the_null_label_and_label_dropout_only_in_training():
    net = randomize(tiny("uvit", num_classes=3, label_dropout=1.0))
    z, logsnr = inputs(net)
    labels = torch.tensor([0, 1, 2])
    null = torch.full((B,), 3)
    net.eval()
    unconditional = net(z, logsnr)
    torch.testing.assert_close(net(z, logsnr, null), unconditional, rtol=0, atol=0)
    assert not torch.allclose(net(z, logsnr, labels), unconditional, atol=1e-4)
    net.train()  # dropout=0, so training mode differs only by label dropout (p = 1 here)
    torch.testing.assert_close(net(z, logsnr, labels), unconditional, rtol=0, atol=0)


def test_as_denoiser_binds_labels():
    net = randomize(tiny("residual_uvit", num_classes=3)).eval()
    z, logsnr = inputs(net)
    labels = torch.tensor([2, 0, 1])
    x_hat = as_denoiser(net, "v", labels=labels)(z, logsnr)
    alpha, sigma = torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()
    expected = alpha.view(B, 1, 1, 1) * z - sigma.view(B, 1, 1, 1) * net(z, logsnr, labels)
    torch.testing.assert_close(x_hat, expected)


def test_residual_uvit_has_one_skip_per_resolution_change():
    dense = tiny("uvit_patch_2levels", stem="haar")
    residual = build_net("residual_uvit", **{**TINY["uvit_patch_2levels"], "stem": "haar"})
    n = TINY["uvit_patch_2levels"]["num_blocks"]
    assert [len(level) for level in dense.body.decoder] == [n + 1, n + 1]
    assert [len(level) for level in residual.body.decoder] == [n, n]
    # residual decoder blocks see no concatenated channels: in = out width
    assert all(
        b.conv1.in_channels == b.conv1.out_channels for lv in residual.body.decoder for b in lv
    )


# --- attention backends and forward-mode AD ----------------------------------------------------


@pytest.mark.parametrize("key", ["uvit_patch_2levels", "unet"])
def test_sdpa_and_math_attention_agree(key):
    net = randomize(tiny(key, num_classes=2)).eval()
    z, logsnr = inputs(net)
    labels = torch.tensor([0, 1, 2])
    fused = net(z, logsnr, labels)
    with math_attention():
        explicit = net(z, logsnr, labels)
    assert fused.abs().max() > 1e-2
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)


def test_attention_backend_context_restores_and_rejects_unknown():
    assert get_attention_backend() == "sdpa"
    with math_attention():
        assert get_attention_backend() == "math"
    assert get_attention_backend() == "sdpa"
    with pytest.raises(ValueError, match="'flash'"):
        with attention_backend("flash"):
            pass
    assert get_attention_backend() == "sdpa"


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("key", ["uvit_patch_2levels", "residual_uvit", "unet"])
def test_jvp_with_math_attention_matches_finite_differences_and_vjp(key):
    """`torch.func.jvp` through the whole net (math attention, float64): the directional
    derivative `J v` equals central finite differences and satisfies `<u, J v> = <J^T u, v>`."""
    net = randomize(tiny(key)).double().eval()
    z, logsnr = inputs(net, torch.float64)
    v, u = torch.randn_like(z), torch.randn_like(z)

    def f(x):
        return net(x, logsnr)

    with math_attention():
        _, jv = jvp(f, (z,), (v,))
        h = 1e-6
        fd = (f(z + h * v) - f(z - h * v)) / (2 * h)
        _, pullback = vjp(f, z)
        (jtu,) = pullback(u)
    assert jv.abs().max() > 1e-3
    torch.testing.assert_close(jv, fd, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close((u * jv).sum(), (jtu * v).sum(), rtol=1e-10, atol=1e-10)


# --- Haar transform ----------------------------------------------------------------------------


def test_haar_coefficients_of_one_block():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # a=1, b=2 / c=3, d=4
    coeffs = haar_dwt(x).flatten().tolist()
    assert coeffs == [5.0, -1.0, -2.0, 0.0]  # (a+b+c+d)/2, (a-b+c-d)/2, (a+b-c-d)/2, (a-b-c+d)/2


@pytest.mark.parametrize("levels", [1, 2])
def test_haar_round_trip_is_exact_and_orthonormal(levels):
    g = torch.Generator().manual_seed(0)
    ints = torch.randint(-50, 50, (2, 3, 8, 12), generator=g).double()
    coeffs = haar_dwt(ints, levels)
    assert coeffs.shape == (2, 3 * 4**levels, 8 // 2**levels, 12 // 2**levels)
    assert torch.equal(haar_idwt(coeffs, levels), ints)  # dyadic arithmetic: bit exact
    x = torch.randn(2, 3, 8, 12, generator=g, dtype=torch.float64)
    torch.testing.assert_close(haar_idwt(haar_dwt(x, levels), levels), x, rtol=0, atol=1e-14)
    torch.testing.assert_close(haar_dwt(x, levels).square().sum(), x.square().sum())


def test_haar_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even height and width"):
        haar_dwt(torch.zeros(1, 1, 5, 4))


# --- bad inputs and configs --------------------------------------------------------------------


def test_bad_inputs_raise_naming_the_argument():
    net = tiny("uvit", num_classes=3)
    z, logsnr = inputs(net)
    with pytest.raises(ValueError, match=r"z must have shape \[B, 2, 8, 8\], got \(3, 1, 8, 8\)"):
        net(z[:, :1], logsnr)
    with pytest.raises(ValueError, match=r"z must have shape \[B, 2, 8, 8\]"):
        net(z[..., :4], logsnr)
    with pytest.raises(ValueError, match=r"logsnr must have shape \[B\]=\[3\].*got \(4,\)"):
        net(z, torch.zeros(4))
    with pytest.raises(ValueError, match="logsnr of shape"):
        net(z, torch.zeros(B, 1, 4, 4))
    with pytest.raises(TypeError, match="logsnr must be a floating-point tensor"):
        net(z, torch.zeros(B, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must have shape \[B\]=\[3\], got \(3, 1\)"):
        net(z, logsnr, torch.zeros(B, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="labels must be an integer"):
        net(z, logsnr, torch.zeros(B))
    with pytest.raises(ValueError, match="labels given to an unconditional net"):
        tiny("unet")(z, logsnr, torch.zeros(B, dtype=torch.long))


def test_build_net_rejects_unknown_names_and_keys():
    with pytest.raises(ValueError, match=r"unknown net 'vit'; known nets: \[.*'residual_uvit'.*"):
        build_net("vit")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['depth'\]"):
        build_net("uvit", depth=3)
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['stem'\] for net 'unet'"):
        build_net("unet", stem="haar")


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("uvit", dict(resolution=28, channels=(8, 8)), "resolution=28 must be divisible by 8"),
        ("uvit", dict(stem="haar", patch_size=3), "patch_size"),
        ("uvit", dict(stem="wavelet"), "stem must be one of"),
        ("uvit", dict(transformer_width=30, heads=4), "transformer_width=30"),
        (
            "unet",
            dict(resolution=28, channels=(8, 8, 8, 8)),
            "resolution=28 must be divisible by 8",
        ),
        ("unet", dict(label_dropout=0.1), "label_dropout > 0 needs num_classes > 0"),
        ("unet", dict(dropout=1.0), "dropout must be in"),
    ],
)
def test_config_validation(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_net(name, **kwargs)


@pytest.mark.parametrize("key", list(TINY))
def test_spec_round_trips_through_json(key):
    net = randomize(tiny(key, num_classes=4)).eval()
    spec = json.loads(json.dumps(net.spec()))
    rebuilt = build_net(spec["arch"], **spec["config"])
    assert type(rebuilt) is type(net) and rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    z, logsnr = inputs(net)
    torch.testing.assert_close(rebuilt.eval()(z, logsnr), net(z, logsnr), rtol=0, atol=0)
    assert spec["config"] == dataclasses.asdict(net.config) | {
        "channels": list(net.config.channels)
    }


def test_registry_and_presets():
    assert {"uvit", "residual_uvit", "unet"} <= set(NETS)
    # the sizes the presets document: a 2.4M U-ViT of 0.24 GFLOP per forward, a 2.8M U-Net
    uvit = UViT(mnist_uvit_config())
    assert count_parameters(uvit) == pytest.approx(2.4e6, rel=0.02)
    assert flops_per_forward(uvit, (1, 1, 28, 28)) == pytest.approx(0.24e9, rel=0.05)
    assert count_parameters(NETS["unet"](mnist_unet_config())) == pytest.approx(2.8e6, rel=0.02)


# --- cost helpers ------------------------------------------------------------------------------


def test_count_parameters_by_hand():
    shared = nn.Linear(3, 4)  # 3*4 + 4 = 16
    module = nn.Sequential(shared, nn.ReLU(), shared, nn.Conv2d(2, 5, 3))  # + 2*5*9 + 5 = 95
    assert count_parameters(module) == 16 + 95
    module[3].weight.requires_grad_(False)
    assert count_parameters(module, trainable_only=True) == 16 + 5


def test_flops_of_linear_and_attention():
    assert flops_per_forward(nn.Linear(7, 5), (3, 7)) == 2 * 7 * 5 * 3
    batch, tokens, width = 2, 9, 8
    linears = 2 * batch * tokens * (width * 3 * width + width * width)
    scores_and_mix = 2 * 2 * batch * tokens * tokens * width  # q k^T and (weights) v
    assert (
        flops_per_forward(SelfAttention(width, 2), (batch, tokens, width))
        == linears + scores_and_mix
    )


def test_net_flops_are_linear_in_batch_and_throughput_restores_the_net():
    net = tiny("uvit").eval()
    shape = (1, 2, 8, 8)
    one = flops_per_forward(net, shape)
    assert one > 0 and flops_per_forward(net, (4, 2, 8, 8)) == 4 * one
    assert flops_per_forward(net, shape, torch.zeros(1)) == one
    assert train_throughput(net, (2, 2, 8, 8), steps=1, warmup=0) > 0
    assert not net.training and all(p.grad is None for p in net.parameters())


def test_float64_logsnr_with_float32_z():
    net = randomize(tiny("unet")).eval()
    z, logsnr = inputs(net)
    torch.testing.assert_close(net(z, logsnr.double()), net(z, logsnr))
