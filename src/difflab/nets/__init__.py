"""Denoising networks: simple diffusion's U-ViT, SiD2's residual U-ViT and a U-Net baseline.

All share one contract, `net(z, logsnr, labels=None) -> prediction` (see `difflab.nets.base`);
what the prediction means (x, eps or v) is chosen by
`difflab.diffusion.parameterization.as_denoiser`.
"""

from difflab.nets.base import DiffusionNet, NetConfig
from difflab.nets.cost import (
    FLOP_RULES,
    count_flops,
    count_parameters,
    flops_per_forward,
    flops_per_sample,
    forward_costs,
    measured_flops,
    net_flops,
    train_throughput,
)
from difflab.nets.dual_rate import DualRateConfig, DualRateNet, EncoderFeatures
from difflab.nets.layers import (
    attention_backend,
    get_attention_backend,
    haar_dwt,
    haar_idwt,
    math_attention,
    set_attention_backend,
)
from difflab.nets.registry import NETS, build_net
from difflab.nets.spacetime import SpaceTimeConfig, SpaceTimeNet
from difflab.nets.unet import UNet, UNetConfig, mnist_unet_config
from difflab.nets.uvit import ResidualUViT, UViT, UViTConfig, cifar_uvit_config, mnist_uvit_config

__all__ = [
    "FLOP_RULES",
    "NETS",
    "DualRateConfig",
    "DualRateNet",
    "EncoderFeatures",
    "count_flops",
    "flops_per_sample",
    "forward_costs",
    "measured_flops",
    "net_flops",
    "DiffusionNet",
    "NetConfig",
    "ResidualUViT",
    "SpaceTimeConfig",
    "SpaceTimeNet",
    "UNet",
    "UNetConfig",
    "UViT",
    "UViTConfig",
    "attention_backend",
    "build_net",
    "cifar_uvit_config",
    "count_parameters",
    "flops_per_forward",
    "get_attention_backend",
    "haar_dwt",
    "haar_idwt",
    "math_attention",
    "mnist_unet_config",
    "mnist_uvit_config",
    "set_attention_backend",
    "train_throughput",
]
