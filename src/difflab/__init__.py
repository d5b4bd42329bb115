"""difflab: pixel-space diffusion research in one notation (logSNR) and one contract (`Denoise`).

The public core is re-exported here; subpackages (`difflab.nets`, `difflab.train`,
`difflab.eval`, `difflab.methods`, ...) are imported on demand. `difflab.api` loads a trained
model (checkpoint, run directory, exported file or distilled student), samples and evaluates it;
the `difflab` command (`difflab.cli`) is a thin parser over it.
"""

from .diffusion import *  # noqa: F403
from .diffusion import __all__ as _diffusion_all
from .interop import from_diffusers, from_k_diffusion, to_k_diffusion
from .sampling import *  # noqa: F403
from .sampling import __all__ as _sampling_all

__version__ = "0.1.0"
__all__ = [
    "__version__",
    *_diffusion_all,
    *_sampling_all,
    "from_diffusers",
    "from_k_diffusion",
    "to_k_diffusion",
]
