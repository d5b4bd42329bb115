"""Nets by name: `build_net("uvit", **config_kwargs)`; checkpoints store `net.spec()`."""

from __future__ import annotations

from difflab.nets.base import DiffusionNet, build_from_registry
from difflab.nets.dual_rate import DualRateNet
from difflab.nets.latent import LatentBaseNet, UnifiedLatentsNet
from difflab.nets.spacetime import SpaceTimeNet
from difflab.nets.token_transformer import CausalTransformer, TokenTransformer
from difflab.nets.unet import UNet
from difflab.nets.uvit import ResidualUViT, UViT

NETS: dict[str, type[DiffusionNet]] = {
    "uvit": UViT,
    "residual_uvit": ResidualUViT,
    "unet": UNet,
    "spacetime": SpaceTimeNet,
}
# Unified Latents: the encoder + prior + decoder module and its stage-2 base model (composites)
NETS.update({"unified_latents": UnifiedLatentsNet, "ul_base": LatentBaseNet})  # type: ignore
NETS["dual_rate"] = DualRateNet
# discrete diffusion: token denoiser and the autoregressive baseline
NETS["token_transformer"] = TokenTransformer  # type: ignore
NETS["causal_transformer"] = CausalTransformer  # type: ignore


def build_net(name: str, **config_kwargs) -> DiffusionNet:
    """Build the net registered as `name` from its config fields (e.g. `net.spec()["config"]`).

    Unknown names and unknown config keys are a `ValueError` that lists the known ones.
    """
    return build_from_registry(NETS, name, config_kwargs)
