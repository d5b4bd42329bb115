"""The empirical-data denoiser: exact E[x | z] when the data are a finite set of images."""

import math

import pytest
import torch

from difflab.diffusion.oracle import EmpiricalDenoiser, GaussianMixtureOracle
from difflab.diffusion.parameterization import diffuse
from difflab.sampling import sample_ddim, uniform_logsnr_grid


def _images(n=7, shape=(1, 4, 4), seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("logsnr", [-6.0, -1.0, 0.5, 3.0, 8.0])
def test_matches_a_mixture_of_near_point_masses(logsnr):
    """Another code path: the Gaussian-mixture oracle with tiny equal variances and equal
    weights is the empirical distribution up to O(variance)."""
    x = _images()
    mixture = GaussianMixtureOracle(x, torch.full_like(x, 1e-15), torch.ones(len(x)))
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(5, *x.shape[1:], generator=gen, dtype=torch.float64)
    level = torch.full((5,), logsnr, dtype=torch.float64)
    expected = mixture(z, level)
    got = EmpiricalDenoiser(x)(z, level)
    torch.testing.assert_close(got, expected, atol=1e-8, rtol=0)


def test_limits_are_the_nearest_image_and_the_mean():
    x = _images()
    denoise = EmpiricalDenoiser(x)
    # z near image 3 at a clean level: the posterior mean is that image exactly
    z = x[3:4] + 0.01 * torch.randn(1, *x.shape[1:], generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(denoise(z, torch.tensor(math.inf)), x[3:4])
    torch.testing.assert_close(denoise(z, torch.tensor(40.0)), x[3:4])
    torch.testing.assert_close(denoise(z, torch.tensor(-math.inf)), x.mean(0, keepdim=True))


def test_chunking_and_per_element_levels_do_not_change_the_answer():
    x = _images(n=50)
    z = torch.randn(4, *x.shape[1:], generator=torch.Generator().manual_seed(3))
    level = torch.tensor([-2.0, 0.0, 2.0, 4.0])
    whole = EmpiricalDenoiser(x)(z, level)
    torch.testing.assert_close(EmpiricalDenoiser(x, chunk=3)(z, level), whole)
    per_element = level[:, None, None, None].expand(z.shape).contiguous()
    torch.testing.assert_close(EmpiricalDenoiser(x)(z, per_element), whole)


def test_per_element_levels_are_the_product_of_per_pixel_likelihoods():
    """Two pixels at different levels: the weights are prod_j N(z_j; alpha_j x_ij, sigma_j^2)."""
    x = _images(n=5, shape=(2,))
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    level = torch.tensor([[1.0, 3.0]], dtype=torch.float64).expand(3, 2)
    alpha, sigma = torch.sigmoid(level).sqrt(), torch.sigmoid(-level).sqrt()
    log_w = -0.5 * ((z[:, None] - alpha[:, None] * x.double()[None]) ** 2 / sigma[:, None] ** 2)
    expected = torch.softmax(log_w.sum(-1), dim=1) @ x.double()
    torch.testing.assert_close(EmpiricalDenoiser(x)(z, level), expected)


def test_a_sampler_run_on_it_ends_on_one_of_the_images():
    """Memorisation, the point of the oracle: 64-step DDIM from pure noise lands on the set."""
    x = _images(n=20)
    grid = uniform_logsnr_grid(-10.0, 12.0, 64)
    out = sample_ddim(EmpiricalDenoiser(x), torch.randn(16, *x.shape[1:]), grid)
    nearest = torch.cdist(out.flatten(1), x.flatten(1)).amin(1)
    assert nearest.max() < 1e-4


def test_denoising_loss_is_lower_than_any_other_estimator_on_its_own_set():
    """It minimises E||x_hat(z) - x||^2 over x drawn from the set: a perturbed copy does worse."""
    x = _images(n=30)
    gen = torch.Generator().manual_seed(5)
    idx = torch.randint(0, 30, (4000,), generator=gen)
    level = torch.full((4000,), 0.5)
    z = diffuse(x[idx], torch.randn(4000, *x.shape[1:], generator=gen), level)
    denoise = EmpiricalDenoiser(x)
    best = (denoise(z, level) - x[idx]).square().mean()
    for shrink in (0.9, 1.1):
        assert (shrink * denoise(z, level) - x[idx]).square().mean() > best


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="images must be"):
        EmpiricalDenoiser(torch.zeros(0, 1, 4, 4))
    with pytest.raises(ValueError, match="chunk"):
        EmpiricalDenoiser(_images(), chunk=0)
    with pytest.raises(ValueError, match="z must have shape"):
        EmpiricalDenoiser(_images())(torch.zeros(2, 1, 5, 5), torch.tensor(0.0))
