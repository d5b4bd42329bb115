"""The Gaussian transition kernels (`difflab.diffusion.transitions`) against independent
computations: the DDIM step and its inverse, the posterior `q(z_s | z_t, x)` from conditioning
the joint Gaussian of `(z_s, z_t)`, and the marginal that posterior draws must reproduce."""

import math

import pytest
import torch

from difflab.diffusion.parameterization import alpha_sigma, level_for
from difflab.diffusion.transitions import (
    ddim_slope,
    ddim_step,
    inv_ddim,
    posterior,
    posterior_sample,
)

F64 = torch.float64


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _scalar_alpha_sigma(level: float) -> tuple[float, float]:
    return math.sqrt(1 / (1 + math.exp(-level))), math.sqrt(1 / (1 + math.exp(level)))


def test_ddim_step_then_its_inverse_is_the_identity():
    """`inv_ddim(DDIM(x, z_t), z_t) = x` and `DDIM(inv_ddim(z_s, z_t), z_t) = z_s`, from nearly
    equal levels (where the slope is tiny) to a step onto clean data."""
    x, z_t = _randn(2, 64, 1, 4, 4, seed=0)
    l_t = torch.linspace(-10, 8, 64, dtype=F64)
    for gap in (1e-4, 0.01, 1.0, 6.0, math.inf):
        l_s = l_t + gap
        z_s = ddim_step(z_t, x, l_t, l_s)
        torch.testing.assert_close(inv_ddim(z_s, z_t, l_t, l_s), x, rtol=1e-7, atol=1e-7)
    z_s = _randn(64, 1, 4, 4, seed=1)
    x_back = inv_ddim(z_s, z_t, l_t, l_t + 0.5)
    torch.testing.assert_close(ddim_step(z_t, x_back, l_t, l_t + 0.5), z_s)


def test_ddim_slope_is_the_step_derivative_in_x():
    """`kappa = alpha_s - alpha_t sigma_s / sigma_t`: the DDIM step's change per unit of `x`."""
    l_t = torch.tensor([-8.0, -1.0, 0.5, 3.0], dtype=F64)
    l_s = l_t + torch.tensor([1e-3, 0.7, 2.0, math.inf], dtype=F64)
    (a_t, s_t), (a_s, s_s) = alpha_sigma(l_t), alpha_sigma(l_s)
    torch.testing.assert_close(ddim_slope(l_t, l_s), a_s - a_t * s_s / s_t, rtol=1e-12, atol=0)
    z, x = _randn(4, 3, seed=2), _randn(4, 3, seed=3)
    moved = ddim_step(z, x + 1.0, l_t, l_s) - ddim_step(z, x, l_t, l_s)
    torch.testing.assert_close(moved, ddim_slope(l_t, l_s)[:, None].expand(4, 3))


def test_deterministic_ddim_with_the_true_x_keeps_the_noise():
    """With the true `x`, `z_t = alpha_t x + sigma_t eps` steps to `alpha_s x + sigma_s eps`:
    the eta = 0 path stays on `q(z_s | x)` with the same `eps`."""
    x, eps = _randn(2, 5, 1, 3, 3, seed=4)
    l_t = torch.tensor([-6.0, -2.0, 0.0, 1.0, 4.0], dtype=F64)
    l_s = l_t + torch.tensor([0.1, 3.0, 1.0, 8.0, math.inf], dtype=F64)
    (a_t, s_t), (a_s, s_s) = ((v.view(-1, 1, 1, 1) for v in alpha_sigma(lv)) for lv in (l_t, l_s))
    out = ddim_step(a_t * x + s_t * eps, x, l_t, l_s)
    torch.testing.assert_close(out, a_s * x + s_s * eps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("l_t, l_s", [(-5.0, -4.0), (-1.0, 2.0), (0.5, 0.5001), (2.0, 9.0)])
def test_posterior_is_the_conditioned_joint_gaussian(l_t, l_s):
    """`(z_s, z_t) | x` is jointly Gaussian: `z_s = alpha_s x + sigma_s e`, and the forward
    chain gives `z_t = (alpha_t / alpha_s) z_s + sigma_{t|s} e'` with
    `sigma_{t|s}^2 = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2`. Conditioning the explicit
    2x2 covariance on `z_t` gives the posterior mean and variance."""
    a_t, s_t = _scalar_alpha_sigma(l_t)
    a_s, s_s = _scalar_alpha_sigma(l_s)
    g = a_t / a_s
    cov = torch.tensor([[s_s**2, g * s_s**2], [g * s_s**2, s_t**2]], dtype=F64)
    assert torch.linalg.eigvalsh(cov).min() > 0  # a valid joint (sigma_{t|s}^2 > 0)
    x, z_t = _randn(2, 6, 2, 2, seed=5)
    want_mean = a_s * x + cov[0, 1] / cov[1, 1] * (z_t - a_t * x)
    want_var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    mean, var = posterior(z_t, x, torch.tensor(l_t, dtype=F64), torch.tensor(l_s, dtype=F64))
    torch.testing.assert_close(mean, want_mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(var, want_var, rtol=1e-9, atol=1e-15)


def test_posterior_at_clean_data_is_x_and_ddim_eta_one_is_a_posterior_draw():
    """At `l_s = +inf` the posterior is the point `x`. DDIM(eta = 1), written with `eps_hat`,
    is the posterior draw for the same noise (a different formula; equal to round-off)."""
    x, z_t, noise = _randn(3, 4, 1, 2, 2, seed=6)
    l_t = torch.tensor([-7.0, -1.0, 2.0, 5.0], dtype=F64)
    mean, var = posterior(z_t, x, l_t, torch.full_like(l_t, math.inf))
    assert torch.equal(mean, x) and torch.equal(var, torch.zeros_like(var))
    l_s = l_t + torch.tensor([0.3, 2.0, 0.01, 6.0], dtype=F64)
    ddim = ddim_step(z_t, x, l_t, l_s, eta=1.0, noise=noise)
    torch.testing.assert_close(
        ddim, posterior_sample(z_t, x, l_t, l_s, noise), rtol=1e-10, atol=1e-12
    )
    no_noise = ddim_step(z_t, x, l_t, l_s, eta=1.0, noise=torch.zeros_like(noise))
    torch.testing.assert_close(no_noise, posterior(z_t, x, l_t, l_s)[0], rtol=1e-10, atol=1e-12)


def test_posterior_draws_from_the_forward_marginal_have_the_marginal_at_s():
    """For a fixed `x`, `z_t ~ q(z_t | x)` then `z_s ~ q(z_s | z_t, x)` is `z_s ~ q(z_s | x) =
    N(alpha_s x, sigma_s^2)`: exact mean and variance within 5 standard errors of 200k draws."""
    n = 200_000
    x = torch.tensor([[-1.5, 0.0, 0.7, 2.0]], dtype=F64)
    l_t, l_s = torch.tensor(-1.0, dtype=F64), torch.tensor(1.5, dtype=F64)
    (a_t, s_t), (a_s, s_s) = alpha_sigma(l_t), alpha_sigma(l_s)
    z_t = a_t * x + s_t * _randn(n, 4, seed=7)
    z_s = posterior_sample(z_t, x.expand(n, 4), l_t, l_s, _randn(n, 4, seed=8))
    se_mean, se_var = s_s / math.sqrt(n), s_s**2 * math.sqrt(2 / (n - 1))
    assert ((z_s.mean(0) - a_s * x[0]).abs() < 5 * se_mean).all(), (z_s.mean(0), a_s * x)
    assert ((z_s.var(0) - s_s**2).abs() < 5 * se_var).all(), (z_s.var(0), s_s**2)


def test_level_for_gives_one_level_per_example():
    z = torch.zeros(3, 1, 2, 2)
    assert level_for(torch.tensor(0.5), z).shape == (3,)
    per_example = torch.tensor([0.1, 0.2, 0.3])
    assert level_for(per_example, z) is per_example
