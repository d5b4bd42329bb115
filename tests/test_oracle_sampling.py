"""Exact-oracle checks of the samplers: with a closed-form E[x|z], many-step DDIM/DDPM must
reproduce the data moments, and on Gaussian data DDIM must equal its analytic solution."""

import math

import pytest
import torch

from difflab.diffusion.oracle import GaussianMixtureOracle
from difflab.diffusion.parameterization import alpha_sigma
from difflab.diffusion.schedules import CosineSchedule
from difflab.sampling import (
    SAMPLERS,
    edm_grid,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    uniform_logsnr_grid,
    uniform_t_grid,
)

SCHED = CosineSchedule()


def _moment_errors(samples, mean, cov):
    """(relative mean error, relative covariance error) of samples against exact moments."""
    x = samples.flatten(1).double()
    m = x.mean(0)
    c = torch.cov(x.T)
    scale = torch.linalg.matrix_norm(cov).item()
    return (m - mean).norm().item() / math.sqrt(scale), (
        torch.linalg.matrix_norm(c - cov).item() / scale
    )


def _reference_errors(oracle, n, seed):
    x, _ = oracle.sample(n, torch.Generator().manual_seed(seed))
    return _moment_errors(x, oracle.mean, oracle.covariance)


def _initial_noise(n, shape, seed):
    return torch.randn(
        n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixtureOracle.image_like((1, 6, 6), num_components=4, seed=3)


def test_oracle_denoiser_is_posterior_mean(mixture):
    """Monte-Carlo check of E[x | z] on a narrow z-bin is expensive; instead check the
    defining property E[(x - x_hat(z)) g(z)] = 0 for a few test functions g."""
    gen = torch.Generator().manual_seed(0)
    x, _ = mixture.sample(40_000, gen)
    l = torch.full((x.shape[0],), 0.5, dtype=torch.float64)
    a, s = alpha_sigma(l[0])
    z = a * x + s * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    r = (x - mixture.denoise(z, l)).flatten(1)
    for g in (torch.ones_like(z.flatten(1)[:, :1]), z.flatten(1)[:, :3], z.flatten(1)[:, :2] ** 2):
        orth = (r[:, :, None] * g[:, None, :]).mean(0)
        stderr = (r[:, :, None] * g[:, None, :]).std(0) / math.sqrt(len(r))
        assert (orth.abs() < 5 * stderr).all()


def test_oracle_posterior_variance_matches_tweedie(mixture):
    """Tweedie: Cov[x|z] = sigma^2/alpha dx_hat/dz; compare the diagonal (in the basis) via a
    jacobian against the closed-form posterior variance."""
    z = _initial_noise(2, (1, 6, 6), 1)
    l = torch.tensor([1.0, 1.0], dtype=torch.float64)
    a, s = alpha_sigma(l[0])
    jac = torch.autograd.functional.jacobian(lambda v: mixture.denoise(v[None], l[:1])[0], z[0])
    jac = jac.reshape(36, 36)
    eye = torch.eye(36, dtype=torch.float64).view(36, 1, 6, 6)
    basis = mixture.to_basis(eye).reshape(36, 36)
    diag = torch.diagonal(basis.T @ (s**2 / a * jac) @ basis)
    want = mixture.posterior_covariance_diag(z[:1], l[:1]).flatten()
    torch.testing.assert_close(diag, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_many_steps_reproduce_mixture_moments(mixture, sampler):
    n = 2000
    z = _initial_noise(n, mixture.shape, 7)
    grid = uniform_t_grid(SCHED, 512)
    out = (
        get_sampler(sampler).fn(
            mixture.denoise, z, grid, generator=torch.Generator().manual_seed(2)
        )
        if sampler == "ddpm"
        else sample_ddim(mixture.denoise, z, grid)
    )
    mean_err, cov_err = _moment_errors(out, mixture.mean, mixture.covariance)
    ref_mean, ref_cov = _reference_errors(mixture, n, 11)
    # within sampling error: comparable to exact samples of the same size
    assert mean_err < 2.5 * ref_mean + 0.01, (mean_err, ref_mean)
    assert cov_err < 2.5 * ref_cov + 0.01, (cov_err, ref_cov)
    # mode weights: assign each sample to its most likely component
    resp, _, _ = mixture.posterior(out, torch.tensor(30.0, dtype=torch.float64))
    freq = torch.bincount(resp.argmax(1), minlength=4).double() / n
    assert (freq - mixture.weights).abs().sum() / 2 < 0.05


def test_few_step_ddim_is_measurably_wrong(mixture):
    """The moment check above can fail: 2-step DDIM misses the covariance by far more."""
    z = _initial_noise(4000, mixture.shape, 7)
    out = sample_ddim(mixture.denoise, z, uniform_t_grid(SCHED, 2))
    _, cov_err = _moment_errors(out, mixture.mean, mixture.covariance)
    _, ref_cov = _reference_errors(mixture, 4000, 11)
    assert cov_err > 3 * ref_cov


def _gaussian():
    gen = torch.Generator().manual_seed(5)
    mean = 0.3 * torch.randn(1, 4, 4, generator=gen, dtype=torch.float64)
    var = torch.rand(1, 4, 4, generator=gen, dtype=torch.float64) * 2 + 0.05
    return GaussianMixtureOracle.gaussian(mean, var, basis="dct")


def test_ddim_on_gaussian_equals_analytic_recursion():
    """Per DCT coefficient, DDIM on Gaussian data is an affine scalar recursion:
    x_hat = m + a lam / (a^2 lam + s^2) (c - a m); c <- a' x_hat + (s'/s)(c - a x_hat)."""
    g = _gaussian()
    z = _initial_noise(5, g.shape, 0)
    grid = uniform_t_grid(SCHED, 7)
    out = sample_ddim(g.denoise, z, grid)
    c = g.to_basis(z)
    m, lam = g.to_basis(g.means[0]), g.variances[0]
    for i in range(7):
        a_t, s_t = math.sqrt(1 / (1 + math.exp(-grid[i]))), math.sqrt(1 / (1 + math.exp(grid[i])))
        x_hat = m + a_t * lam / (a_t**2 * lam + s_t**2) * (c - a_t * m)
        if i == 6:
            c = x_hat
        else:
            l_s = float(grid[i + 1])
            a_s, s_s = math.sqrt(1 / (1 + math.exp(-l_s))), math.sqrt(1 / (1 + math.exp(l_s)))
            c = a_s * x_hat + s_s / s_t * (c - a_t * x_hat)
    torch.testing.assert_close(out, g.from_basis(c), rtol=1e-10, atol=1e-10)


def test_many_step_ddim_converges_to_the_flow_map_at_first_order():
    """The probability-flow ODE on Gaussian data keeps (c - a m) / sqrt(a^2 lam + s^2) fixed, so
    its solution is c_0 = m + sqrt(lam) (c_T - a_T m) / sqrt(a_T^2 lam + s_T^2). DDIM is a
    first-order solver: its error must shrink about 2x per doubling of the steps."""
    g = _gaussian()
    z = _initial_noise(64, g.shape, 1)
    l_T = torch.tensor(SCHED.logsnr_min, dtype=torch.float64)
    a, s = alpha_sigma(l_T)
    m, lam = g.to_basis(g.means[0]), g.variances[0]
    exact = g.from_basis(m + lam.sqrt() * (g.to_basis(z) - a * m) / (a**2 * lam + s**2).sqrt())
    errors = []
    for steps in (64, 128, 256, 512):
        grid = uniform_logsnr_grid(-15.0, 15.0, steps + 1)[:-1]
        grid[-1] = math.inf  # end exactly at the data
        errors.append((sample_ddim(g.denoise, z, grid) - exact).abs().max().item())
    assert errors[-1] < 5e-2
    ratios = [errors[i] / errors[i + 1] for i in range(3)]
    assert all(1.6 < r < 2.5 for r in ratios), ratios


def test_ddpm_is_the_explicit_ancestral_recursion_and_ddim_eta_one():
    """DDPM against the ancestral step written out here with scalar arithmetic (VDM eq. 33:
    `mu = (alpha_s / alpha_t) r z + alpha_s (1 - r) x_hat`, `var = sigma_s^2 (1 - r)`,
    `r = e^{l_t - l_s}`) on the same noise; DDIM(eta = 1), a different formula (`eps_hat` kept
    with `sigma_s sqrt(r)`, fresh noise `sigma_s sqrt(1 - r)`), agrees to round-off."""
    g = _gaussian()
    z = _initial_noise(8, g.shape, 2)
    grid = edm_grid(10)
    ddpm = sample_ddpm(g.denoise, z, grid, generator=torch.Generator().manual_seed(0))
    gen, state = torch.Generator().manual_seed(0), z.clone()
    for i in range(10):
        l_t, l_s = float(grid[i]), float(grid[i + 1])
        x_hat = g.denoise(state, torch.full((8,), l_t, dtype=torch.float64))
        noise = torch.randn(state.shape, generator=gen, dtype=torch.float64)
        a_t = math.sqrt(1 / (1 + math.exp(-l_t)))
        if math.isinf(l_s):
            state = x_hat
            continue
        a_s, s_s = math.sqrt(1 / (1 + math.exp(-l_s))), math.sqrt(1 / (1 + math.exp(l_s)))
        r = math.exp(l_t - l_s)
        state = a_s / a_t * r * state + a_s * (1 - r) * x_hat + s_s * math.sqrt(1 - r) * noise
    torch.testing.assert_close(ddpm, state, rtol=1e-10, atol=1e-10)
    ddim = sample_ddim(g.denoise, z, grid, eta=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ddim, ddpm, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_nfe_is_counted_honestly(name):
    g = _gaussian()
    calls = []

    def counting(z, l):
        calls.append(1)
        return g.denoise(z, l)

    spec = get_sampler(name)
    for steps in (1, 3, 8):
        calls.clear()
        spec.fn(
            counting,
            _initial_noise(2, g.shape, 0),
            uniform_t_grid(SCHED, steps),
            generator=torch.Generator().manual_seed(0),
        )
        assert len(calls) == spec.nfe(steps), (name, steps)


def test_per_element_grid():
    """A grid with one level per example along dim 1 (shape [steps+1, B]) is honoured."""
    seen = []

    def record(z, l):
        seen.append(l.clone())
        return torch.zeros_like(z)

    z = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    grid = torch.stack([uniform_t_grid(SCHED, 3), uniform_t_grid(CosineSchedule(-5, 5), 3)], 1)
    sample_ddim(record, z, grid)
    torch.testing.assert_close(seen[1], grid[1])
