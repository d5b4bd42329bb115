import math

import pytest
import torch

from difflab.diffusion.losses import (
    diffusion_loss,
    edm_weight,
    elbo_weight,
    make_weighting,
    multiscale_eps_mse,
    sample_t,
    sigmoid_weight,
    v_mse_weight,
    weighted_x_loss,
)
from difflab.diffusion.oracle import GaussianMixtureOracle
from difflab.diffusion.parameterization import diffuse, eps_from_x, v_from_x
from difflab.diffusion.schedules import CosineSchedule


def _batch(seed=0, n=32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=gen, dtype=torch.float64)
    x_hat = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    t = torch.rand(n, generator=gen, dtype=torch.float64)
    return x, x_hat, eps, t


@pytest.mark.parametrize("bias", [-3.0, -1.0, 0.0, 2.0])
def test_sigmoid_weight_eps_form_equals_x_form(bias):
    """SiD2 (docs/design.md, weightings): eps-form `1/2 (-dl/dt) sigmoid(b - l) ||eps - eps_hat||^2`
    equals the x-form `1/2 (-dl/dt) e^l sigmoid(b - l) ||x - x_hat||^2`
    `= 1/2 (-dl/dt) e^b sigmoid(l - b) ||x - x_hat||^2`."""
    x, x_hat, eps, t = _batch()
    sched = CosineSchedule()
    l, neg_dl = sched.logsnr(t), -sched.dlogsnr_dt(t)
    z = diffuse(x, eps, l)
    eps_hat = eps_from_x(z, x_hat, l)
    w = sigmoid_weight(bias)(l, neg_dl)
    eps_form = w * (eps - eps_hat).pow(2).flatten(1).mean(1)
    x_mse = (x - x_hat).pow(2).flatten(1).mean(1)
    x_form_1 = 0.5 * neg_dl * torch.exp(l) * torch.sigmoid(bias - l) * x_mse
    x_form_2 = 0.5 * neg_dl * math.exp(bias) * torch.sigmoid(l - bias) * x_mse
    torch.testing.assert_close(eps_form, x_form_1, rtol=1e-7, atol=0)
    torch.testing.assert_close(eps_form, x_form_2, rtol=1e-7, atol=0)
    torch.testing.assert_close(weighted_x_loss(x, x_hat, l, w), eps_form, rtol=1e-7, atol=0)


def test_v_mse_weight_is_v_loss():
    x, x_hat, eps, t = _batch(1)
    l = CosineSchedule().logsnr(t)
    z = diffuse(x, eps, l)
    v_loss = (v_from_x(z, x, l) - v_from_x(z, x_hat, l)).pow(2).flatten(1).mean(1)
    got = weighted_x_loss(x, x_hat, l, v_mse_weight(l, None))
    torch.testing.assert_close(got, v_loss, rtol=1e-8, atol=0)
    # SNR + 1 in x-space
    x_form = (torch.exp(l) + 1) * (x - x_hat).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(got, x_form, rtol=1e-8, atol=0)


def test_edm_weight_is_lambda_sigma_on_x_mse():
    x, x_hat, _, t = _batch(2)
    l = CosineSchedule().logsnr(t)
    sd = 0.5
    sigma = torch.exp(-0.5 * l)
    lam = (sigma**2 + sd**2) / (sigma * sd) ** 2
    got = weighted_x_loss(x, x_hat, l, edm_weight(sd)(l, None))
    torch.testing.assert_close(got, lam * (x - x_hat).pow(2).flatten(1).mean(1))


def test_elbo_weighting_integrates_to_closed_form_on_gaussian():
    """x ~ N(0, v I) with the exact denoiser: E||x - x_hat||^2 per dim = v / (1 + v e^l), so the
    expected ELBO diffusion loss per dimension is
    int_{lmin}^{lmax} 1/2 e^l v / (1 + v e^l) dl = 1/2 [log(1 + v e^l)]_{lmin}^{lmax}."""
    v = 0.7
    oracle = GaussianMixtureOracle.gaussian(torch.zeros(1, 4, 4), torch.full((1, 4, 4), v))
    sched = CosineSchedule(-10.0, 10.0)
    gen = torch.Generator().manual_seed(0)
    x, _ = oracle.sample(20_000, gen)
    loss = diffusion_loss(
        oracle.denoise, x, sched, elbo_weight, time_sampling="stratified", generator=gen
    )
    closed = 0.5 * (math.log1p(v * math.exp(10.0)) - math.log1p(v * math.exp(-10.0)))
    stderr = float(loss.std()) / math.sqrt(len(loss))
    assert abs(float(loss.mean()) - closed) < 4 * stderr + 1e-3


def test_time_sampling():
    gen = torch.Generator().manual_seed(0)
    anti = sample_t(10, "antithetic", generator=gen)
    torch.testing.assert_close(anti[:5] + anti[5:], torch.ones(5))
    strat = sample_t(8, "stratified", generator=gen)
    assert sorted((strat * 8).floor().long().tolist()) == list(range(8))
    with pytest.raises(ValueError, match="time sampling"):
        sample_t(4, "sobol")


def test_multiscale_loss_single_scale_is_mse_and_pooling_matters():
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(4, 1, 32, 32, generator=gen)
    eps_hat = torch.randn(4, 1, 32, 32, generator=gen)
    plain = (eps - eps_hat).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(multiscale_eps_mse(eps, eps_hat, 32), plain)
    # scales 32, 16, 8 weighted 1/s (normalised), written out with 2x2 block means
    err, terms = eps - eps_hat, []
    for s in (32, 16, 8):
        terms.append(err.pow(2).flatten(1).mean(1) / s)
        err = err.unflatten(-1, (-1, 2)).unflatten(-3, (-1, 2)).mean((-3, -1))
    want = sum(terms) / (1 / 32 + 1 / 16 + 1 / 8)
    torch.testing.assert_close(multiscale_eps_mse(eps, eps_hat, 8), want)
    # white-noise errors average out under pooling (variance / 4 per halving)
    assert (multiscale_eps_mse(eps, eps_hat, 8) < plain).all()
    with pytest.raises(ValueError, match="square"):
        multiscale_eps_mse(eps[..., :16], eps_hat[..., :16], 8)


def test_per_element_logsnr_loss():
    x, x_hat, _, _ = _batch(3, n=2)
    l = torch.linspace(-3, 3, 32, dtype=torch.float64).view(2, 1, 4, 4)
    w = torch.ones_like(l)
    got = weighted_x_loss(x, x_hat, l, w)
    torch.testing.assert_close(got, (torch.exp(l) * (x - x_hat) ** 2).flatten(1).mean(1))


def test_unknown_weighting():
    with pytest.raises(ValueError, match="unknown weighting 'sigmoidal'"):
        make_weighting("sigmoidal")
    assert make_weighting("sigmoid", bias=-1.0)(torch.tensor(-1.0), torch.tensor(2.0)) == 0.5
