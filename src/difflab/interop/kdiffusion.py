"""The k-diffusion / EDM convention `D(x, sigma)` and difflab's `Denoise`, both ways.

k-diffusion (Karras et al., "Elucidating the Design Space", 2022) writes the noisy sample in the
variance-exploding form `x = data + sigma n` and a denoiser `D(x, sigma) -> E[data | x]`. The
variance-preserving `z = alpha data + sigma_vp eps` of difflab is the same random variable scaled:

    x = z / alpha,    sigma = sigma_vp / alpha = exp(-logsnr / 2),    alpha = 1 / sqrt(1 + sigma^2),

and both denoisers return the posterior mean of the data, so

    from_k_diffusion(D)(z, logsnr) = D(z / alpha, exp(-logsnr / 2)),
    to_k_diffusion(denoise)(x, sigma) = denoise(x / sqrt(1 + sigma^2), -2 log sigma).

With these, k-diffusion's samplers (`sample_euler`, `sample_dpmpp_2m`, ...) run on any difflab
model, and difflab's samplers on k-diffusion and EDM models; a difflab grid `l_0 < ... < l_n =
+inf` is k-diffusion's `sigmas = exp(-l / 2)` (decreasing, ending at 0), and an initial difflab
`z` at `l_0` is k-diffusion's `x = z / alpha_0` (`sigmas_of_grid`, `ve_of_vp`).

`k_diffusion_sampling()` imports k-diffusion's sampler module on use. The `k-diffusion` package's
`__init__` imports its whole training stack (CLIP, clean-fid, kornia, scikit-image, wandb,
torchvision); the samplers need only `k_diffusion/sampling.py` (scipy, torchdiffeq, torchsde,
tqdm) and one helper of `utils.py` (`append_dims`). When the full package does not import,
`sampling.py` is loaded on its own from the installed package, under a private module name, with
that helper supplied here; the sampler code that runs is k-diffusion's, unchanged. Install:
`pip install --no-deps k-diffusion==0.1.1.post1 torchsde torchdiffeq trampoline` (the Makefile's
`setup` does; its declared dependencies would replace the torch build).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..diffusion.parameterization import Denoise, alpha_sigma, level_for

KDenoiser = Callable[..., Tensor]
"""`D(x, sigma, **extra_args) -> E[data | x]`, `x = data + sigma n`, `sigma` of shape `[B]`."""

_PRIVATE_PACKAGE = "_difflab_k_diffusion"


def _per_example(logsnr: Tensor, z: Tensor) -> Tensor:
    level = level_for(logsnr, z)
    if level.ndim > 1:
        flat = level.reshape(level.shape[0], -1)
        if flat.shape[1] != 1:
            raise ValueError(
                f"a k-diffusion denoiser takes one sigma per example: logsnr of shape "
                f"{tuple(logsnr.shape)} varies within an example"
            )
        level = flat[:, 0]
    return level


def from_k_diffusion(model: KDenoiser, **extra_args: Any) -> Denoise:
    """A k-diffusion / EDM denoiser `model(x, sigma, **extra_args)` as a difflab `Denoise`:
    `denoise(z, logsnr) = model(z / alpha, exp(-logsnr / 2), **extra_args)` (module docstring).
    Levels are one per example (`[B]` or a scalar)."""
    if not callable(model):
        raise ValueError(f"model must be callable as model(x, sigma), got {type(model).__name__}")

    def denoise(z: Tensor, logsnr: Tensor) -> Tensor:
        level = _per_example(logsnr, z)
        alpha, _ = alpha_sigma(level)
        sigma = torch.exp(-0.5 * level).to(z.dtype)
        shape = (-1,) + (1,) * (z.ndim - 1)
        return model(z / alpha.reshape(shape).to(z.dtype), sigma, **extra_args)

    return denoise


class KDiffusionDenoiser:
    """A difflab `Denoise` in k-diffusion's convention: `D(x, sigma) = denoise(x alpha, -2 log
    sigma)` with `alpha = 1 / sqrt(1 + sigma^2)`; `sigma` a scalar or `[B]`. k-diffusion's
    samplers call it as `D(x, sigma * s_in, **extra_args)`; `extra_args` must be empty (bind
    conditioning into the `Denoise`)."""

    def __init__(self, denoise: Denoise):
        if not callable(denoise):
            raise ValueError(f"denoise must be a difflab Denoise, got {type(denoise).__name__}")
        self.denoise = denoise

    def __call__(self, x: Tensor, sigma: Tensor | float, **extra_args: Any) -> Tensor:
        if extra_args:
            raise ValueError(
                f"extra_args {sorted(extra_args)} given; bind conditioning into the Denoise"
            )
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        if sigma.ndim != 1 or sigma.shape[0] != x.shape[0]:
            raise ValueError(
                f"sigma of shape {tuple(sigma.shape)} for x of shape {tuple(x.shape)}: "
                "need a scalar or one sigma per example"
            )
        level = -2.0 * torch.log(sigma.to(torch.float64))
        alpha, _ = alpha_sigma(level)
        shape = (-1,) + (1,) * (x.ndim - 1)
        z = x * alpha.reshape(shape).to(x.dtype)
        return self.denoise(z, level.to(x.dtype))


def to_k_diffusion(denoise: Denoise) -> KDiffusionDenoiser:
    """A difflab `Denoise` as a k-diffusion denoiser `D(x, sigma)` (module docstring)."""
    return KDiffusionDenoiser(denoise)


def sigmas_of_grid(logsnrs: Tensor) -> Tensor:
    """k-diffusion's decreasing `sigmas` (ending at 0 for a grid ending at +inf) of a difflab
    logsnr grid (float64)."""
    return torch.exp(-0.5 * torch.as_tensor(logsnrs, dtype=torch.float64))


def grid_of_sigmas(sigmas: Tensor) -> Tensor:
    """The difflab logsnr grid (increasing; `sigma = 0` -> +inf) of k-diffusion `sigmas`."""
    return -2.0 * torch.log(torch.as_tensor(sigmas, dtype=torch.float64))


def ve_of_vp(z: Tensor, logsnr: Tensor | float) -> Tensor:
    """k-diffusion's `x = z / alpha` of a difflab sample `z` at the scalar level `logsnr`."""
    alpha, _ = alpha_sigma(torch.as_tensor(logsnr, dtype=torch.float64))
    return z / alpha.to(z.dtype)


def _append_dims(x: Tensor, target_dims: int) -> Tensor:
    """`x` with singleton dimensions appended up to `target_dims` (k-diffusion's
    `utils.append_dims`, the one helper its samplers use)."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}")
    return x[(...,) + (None,) * missing]


def k_diffusion_sampling() -> types.ModuleType:
    """k-diffusion's `sampling` module (`sample_euler`, `sample_dpmpp_2m`, `get_sigmas_karras`,
    ...), imported on use (module docstring). ImportError with the install line when absent."""
    return k_diffusion_module("sampling")


K_DIFFUSION_MODULES = ("sampling", "external")
"""The k-diffusion modules `k_diffusion_module` loads: they use nothing of `utils` but
`append_dims`."""


def k_diffusion_module(name: str) -> types.ModuleType:
    """k-diffusion's module `name` (`K_DIFFUSION_MODULES`): from the full package when it imports,
    else from its file alone (module docstring)."""
    if name not in K_DIFFUSION_MODULES:
        raise ValueError(f"unknown k-diffusion module {name!r}; known: {K_DIFFUSION_MODULES}")
    try:
        return importlib.import_module(f"k_diffusion.{name}")  # the full package, if it imports
    except ImportError:
        pass
    private = f"{_PRIVATE_PACKAGE}.{name}"
    if private in sys.modules:
        return sys.modules[private]
    hint = (
        "k-diffusion's samplers need `pip install --no-deps k-diffusion==0.1.1.post1 torchsde "
        "torchdiffeq trampoline` (make setup installs them)"
    )
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"k-diffusion is not installed; {hint}")
    if _PRIVATE_PACKAGE not in sys.modules:
        package = types.ModuleType(_PRIVATE_PACKAGE)
        package.__path__ = list(spec.submodule_search_locations)
        utils = types.ModuleType(f"{_PRIVATE_PACKAGE}.utils")
        utils.append_dims = _append_dims
        package.utils = utils
        sys.modules[_PRIVATE_PACKAGE] = package
        sys.modules[utils.__name__] = utils
    try:
        return importlib.import_module(private)
    except ImportError as err:
        sys.modules.pop(private, None)
        raise ImportError(f"k-diffusion's {name} module does not import ({err}); {hint}") from err
