"""Bring your own model: diffusers and k-diffusion models as difflab `Denoise`s, and difflab
models in k-diffusion's convention (docs/interop.md).

- `from_diffusers(model, scheduler)`: a diffusers model and its noise scheduler ->
  `DiffusersModel` with `.denoise`, `.schedule` (`AlphasCumprodSchedule`, the scheduler's
  `alphas_cumprod` in continuous time) and `.logsnr_of_timesteps`; `load_diffusers(folder)` reads
  a `save_pretrained` folder with safetensors.
- `from_k_diffusion(D)` / `to_k_diffusion(denoise)`: `D(x, sigma)` with `x = z / alpha`,
  `sigma = exp(-logsnr / 2)`; `k_diffusion_sampling()` imports k-diffusion's samplers on use.

Layer L1: imports `difflab.diffusion` only; diffusers and k-diffusion are imported on use.
"""

from .diffusers_model import (
    AlphasCumprodSchedule,
    DiffusersModel,
    DiffusersNet,
    diffusers_folders,
    from_diffusers,
    load_diffusers,
    prediction_of_scheduler,
)
from .kdiffusion import (
    KDiffusionDenoiser,
    from_k_diffusion,
    grid_of_sigmas,
    k_diffusion_module,
    k_diffusion_sampling,
    sigmas_of_grid,
    to_k_diffusion,
    ve_of_vp,
)

__all__ = [
    "AlphasCumprodSchedule",
    "DiffusersModel",
    "DiffusersNet",
    "KDiffusionDenoiser",
    "diffusers_folders",
    "from_diffusers",
    "from_k_diffusion",
    "grid_of_sigmas",
    "k_diffusion_module",
    "k_diffusion_sampling",
    "load_diffusers",
    "prediction_of_scheduler",
    "sigmas_of_grid",
    "to_k_diffusion",
    "ve_of_vp",
]
