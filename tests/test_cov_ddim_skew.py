"""cov_ddim's skewed draw (`skew=True`, docs/methods/cov_ddim.md, "A skewed draw"): second-order
Tweedie gives the posterior's third cumulant along the draw, and a two-point factor with that
skewness makes the draw exact where the posterior is two atoms."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.diffusion.parameterization import alpha_sigma
from difflab.diffusion.schedules import CosineSchedule
from difflab.sampling import default_grid, get_sampler, sample_cov_ddim
from difflab.sampling.cov_ddim import skew_signs

ATOMS = torch.tensor([-1.0, 1.0], dtype=torch.float64)


def two_atom_denoiser(weight_up: float):
    """`E[x | z]` for `x` in {-1, +1} (one pixel) with `P(+1) = weight_up`, in closed form."""
    log_w = torch.log(torch.tensor([1 - weight_up, weight_up], dtype=torch.float64))

    def denoise(z, logsnr):
        alpha, sigma = alpha_sigma(logsnr.reshape(-1, 1))
        flat = z.reshape(-1, 1)
        resp = torch.softmax(log_w - (flat - alpha * ATOMS) ** 2 / (2 * sigma**2), dim=1)
        return (resp @ ATOMS).reshape(z.shape)

    return denoise


def responsibility_up(z, logsnr, weight_up):
    alpha, sigma = alpha_sigma(torch.tensor(logsnr, dtype=torch.float64))
    log_odds = math.log(weight_up / (1 - weight_up)) + 2 * alpha * z / sigma**2
    return torch.sigmoid(log_odds)


@pytest.mark.parametrize("weight_up, logsnr", [(0.2, -1.0), (0.7, 0.5), (0.5, -3.0)])
def test_skewed_draw_lands_on_the_atoms_with_their_posterior_weights(weight_up, logsnr):
    """Two atoms: the posterior along the draw is two-point with weights `r, 1 - r`; the
    skewness `(1 - 2r)/sqrt(r (1 - r))` gives `p = r`, and `x_hat + s delta` is an atom, +1 with
    probability `r`: an exact posterior draw (the symmetric draw puts half on each side)."""
    denoise = two_atom_denoiser(weight_up)
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    alpha, sigma = alpha_sigma(torch.tensor(logsnr, dtype=torch.float64))
    x = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < weight_up, 1.0, -1.0)
    z = (alpha * x + sigma * torch.randn(n, generator=gen, dtype=torch.float64)).view(n, 1, 1, 1)
    level = torch.full((n,), logsnr, dtype=torch.float64)
    r = responsibility_up(z, logsnr, weight_up)
    x_hat = denoise(z, level)
    torch.testing.assert_close(x_hat, 2 * r - 1)
    signs = torch.where(torch.rand(z.shape, generator=gen, dtype=z.dtype) < 0.5, 1.0, -1.0)
    delta = signs * (4 * r * (1 - r)).sqrt()  # the posterior's standard deviation, either sign
    draw = x_hat + skew_signs(denoise, z, level, delta, gen) * delta
    torch.testing.assert_close(draw.abs(), torch.ones_like(draw), rtol=0, atol=1e-6)
    up = (draw > 0).double()
    se = float((r * (1 - r)).mean().sqrt()) / math.sqrt(n)
    assert abs(float(up.mean() - r.mean())) < 4 * se
    # per example, not only on average: the atom's frequency follows r across the batch
    order = r.flatten().argsort()
    for part in order.chunk(4):
        share, want = float(up.flatten()[part].mean()), float(r.flatten()[part].mean())
        assert abs(share - want) < 4 * math.sqrt(want * (1 - want) / len(part)) + 1e-3


def test_a_symmetric_posterior_keeps_random_signs():
    """At `z = 0` with equal weights the skewness is 0: `s = +-1`, each half the time."""
    denoise = two_atom_denoiser(0.5)
    n = 20_000
    z = torch.zeros(n, 1, 1, 1, dtype=torch.float64)
    delta = torch.ones_like(z)
    s = skew_signs(denoise, z, torch.zeros(n, dtype=torch.float64), delta, None)
    torch.testing.assert_close(s.abs(), torch.ones_like(s), rtol=0, atol=1e-9)
    assert abs(float(s.mean())) < 4 / math.sqrt(n)


def test_skew_needs_the_jvp_draw_and_is_charged_two_more_jvps_per_step():
    z = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    grid = default_grid("cov_ddim", CosineSchedule(), 4)
    with pytest.raises(ValueError, match="skew=True needs draw='jvp'"):
        sample_cov_ddim(lambda z, l: z, z, grid, draw="diagonal", skew=True)
    spec = get_sampler("cov_ddim")
    assert spec.jvps(8) == 8 and spec.jvps(8, skew=True) == 24
    assert spec.jvps(8, final="mean", skew=True) == 21
