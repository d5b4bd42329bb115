"""The discrete core: masked and uniform diffusion on tokens, in the logsnr notation.

Tokens are integer tensors with values in `[0, V)` (`[B, L]` text, `[B, C, H, W]` images); masked
diffusion adds the mask id `V`. A level is a `logsnr` with `alpha = sigmoid(logsnr)` the
probability that a token is untouched. A discrete denoiser is `denoise(z, logsnr) -> probs` of
shape `z.shape + (V,)`. Schedules (`schedules`), forward processes and posteriors
(`processes`), continuous-time NELBOs (`nelbo`), ancestral samplers and their registry
(`samplers`) and an exact oracle over short sequences (`oracle`). Derivations:
docs/methods/discrete.md.
"""

from .checks import check_logsnr, check_tokens, keep_prob
from .nelbo import masked_nelbo, nelbo, training_times, uniform_nelbo, uniform_prior_kl
from .oracle import (
    DiscreteOracle,
    all_sequences,
    exact_sampler_distribution,
    kl_divergence,
    sampler_error,
    sequence_index,
)
from .processes import (
    PROCESSES,
    adjust_probs,
    corrupt,
    corrupt_masked,
    corrupt_uniform,
    denoiser_from_logits,
    marginal_masked,
    marginal_uniform,
    posterior,
    posterior_masked,
    posterior_uniform,
    prior_sample,
    sample_categorical,
    sample_posterior,
    step_x_posterior,
)
from .samplers import (
    DISCRETE_SAMPLERS,
    DiscreteSamplerSpec,
    check_discrete_grid,
    discrete_grid,
    get_discrete_sampler,
    register_discrete_sampler,
    sample_masked,
    sample_uniform,
)
from .schedules import LinearMaskingSchedule

__all__ = [
    "DISCRETE_SAMPLERS",
    "PROCESSES",
    "DiscreteOracle",
    "DiscreteSamplerSpec",
    "LinearMaskingSchedule",
    "adjust_probs",
    "all_sequences",
    "check_discrete_grid",
    "check_logsnr",
    "check_tokens",
    "corrupt",
    "corrupt_masked",
    "corrupt_uniform",
    "denoiser_from_logits",
    "discrete_grid",
    "exact_sampler_distribution",
    "get_discrete_sampler",
    "keep_prob",
    "kl_divergence",
    "marginal_masked",
    "marginal_uniform",
    "masked_nelbo",
    "nelbo",
    "posterior",
    "posterior_masked",
    "posterior_uniform",
    "prior_sample",
    "register_discrete_sampler",
    "sample_categorical",
    "sample_masked",
    "sample_posterior",
    "sample_uniform",
    "sampler_error",
    "sequence_index",
    "step_x_posterior",
    "training_times",
    "uniform_nelbo",
    "uniform_prior_kl",
]
