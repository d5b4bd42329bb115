import math

import numpy as np
import pytest
import torch

from difflab.diffusion.oracle import GaussianMixtureOracle
from difflab.eval.likelihood import discretized_log_likelihood, elbo
from difflab.eval.oracle_metrics import (
    ExactReference,
    band_variance_ratios,
    cross_entropy_gap,
    exact_frechet,
    mmd,
    mode_weight_tv,
    oracle_report,
)


def _gaussian():
    gen = torch.Generator().manual_seed(0)
    var = torch.rand(1, 4, 4, generator=gen, dtype=torch.float64) * 1.5 + 0.05
    mean = 0.2 * torch.randn(1, 4, 4, generator=gen, dtype=torch.float64)
    return GaussianMixtureOracle.gaussian(mean, var, basis="dct")


@pytest.mark.parametrize(
    "oracle",
    [_gaussian(), GaussianMixtureOracle.image_like((1, 4, 4), num_components=3, seed=1)],
    ids=["gaussian", "mixture"],
)
def test_elbo_of_exact_denoiser_matches_exact_nll(oracle):
    """With the exact E[x|z] the continuous-time ELBO is tight: it must equal -log p(x) within
    Monte-Carlo error."""
    gen = torch.Generator().manual_seed(1)
    x, _ = oracle.sample(1000, gen)
    bound = elbo(oracle.denoise, x, num_t=8, bins=None, generator=gen)
    gap = bound.total - (-oracle.log_prob(x))
    stderr = float(gap.std()) / math.sqrt(len(gap))
    assert abs(float(gap.mean())) < 4 * stderr + 0.02, (float(gap.mean()), stderr)
    # the test can fail: a slightly wrong denoiser gives a measurably worse bound
    worse = elbo(lambda z, l: 0.9 * oracle.denoise(z, l), x, num_t=8, bins=None, generator=gen)
    assert float((worse.total - bound.total).mean()) > 10 * stderr


def test_discretized_decoder():
    gen = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (4, 1, 3, 3), generator=gen)
    x = 2 * k.double() / 255 - 1
    z0 = torch.sigmoid(torch.tensor(15.0)).sqrt() * x  # noiseless z_0 at logsnr 15
    assert discretized_log_likelihood(x, z0, 15.0).abs().max() < 1e-6
    # at low SNR the decoder is uncertain but still a normalised categorical over the 256 values
    values = (2 * torch.arange(256).double() / 255 - 1).view(256, 1, 1, 1)
    z = torch.full((256, 1, 1, 1), 0.3, dtype=torch.float64)
    probs = discretized_log_likelihood(values, z, 0.0).exp()
    assert abs(float(probs.sum()) - 1) < 1e-9 and float(probs.max()) < 0.01
    # the categorical written out with numpy: at logsnr 0, alpha = sigma, so the logits are
    # -(z sqrt(2) - x_k)^2 / 2 (scale sigma / alpha = 1)
    x_k = 2 * np.arange(256) / 255 - 1
    logits = -0.5 * (0.3 * np.sqrt(2) - x_k) ** 2
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(probs.numpy(), want, rtol=1e-10, atol=0)
    # a whole image is the product over its pixels (log-probabilities add)
    image = values[[0, 100, 255]].reshape(1, 1, 1, 3)
    total = discretized_log_likelihood(image, torch.full_like(image, 0.3), 0.0)
    assert float(total) == pytest.approx(float(np.log(want[[0, 100, 255]]).sum()), rel=1e-10)


def test_elbo_bad_arguments():
    oracle = _gaussian()
    x, _ = oracle.sample(4)
    with pytest.raises(ValueError, match="num_t"):
        elbo(oracle.denoise, x, num_t=0)
    with pytest.raises(ValueError, match="logsnr_min < logsnr_max"):
        elbo(oracle.denoise, x, logsnr_min=3.0, logsnr_max=1.0)


def test_oracle_metrics_on_exact_and_corrupted_samples():
    oracle = GaussianMixtureOracle.image_like((1, 8, 8), num_components=4, seed=2)
    gen = torch.Generator().manual_seed(3)
    x, _ = oracle.sample(4000, gen)
    report = oracle_report(x, oracle)
    assert report["frechet_exact"] < 0.05 * float(oracle.covariance.trace())
    assert all(abs(r - 1) < 0.1 for r in report["band_variance_ratio"])
    assert report["mode_weight_tv"] < 0.03
    # blur removes high-frequency variance
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    ratios = band_variance_ratios(blurred, oracle)
    assert ratios[-1] < 0.5 * ratios[0]
    assert exact_frechet(blurred, oracle) > 5 * report["frechet_exact"]
    # samples from a single component: TV = 1 - its weight
    only0 = oracle.means[:1].expand(500, *oracle.shape)
    only0 = only0 + oracle.from_basis(
        oracle.variances[:1].sqrt()
        * torch.randn(500, *oracle.shape, generator=gen, dtype=torch.float64)
    )
    assert abs(mode_weight_tv(only0, oracle) - (1 - float(oracle.weights[0]))) < 1e-9
    with pytest.raises(ValueError, match="samples must have shape"):
        exact_frechet(x[:, :, :4], oracle)


def _separated_oracle():
    """Three far-apart components (mean distance >> component spread): `log p(x) = log w_k +
    log N_k(x)` on component k's samples to round-off, so wrong weights have a closed form."""
    return GaussianMixtureOracle.image_like(
        (1, 4, 4), num_components=3, mean_scale=3.0, variance_scale=0.01, seed=0
    )


def _sample_with_weights(oracle, weights, n, gen):
    k = torch.multinomial(weights, n, replacement=True, generator=gen)
    noise = torch.randn(n, *oracle.shape, generator=gen, dtype=torch.float64)
    c = oracle.to_basis(oracle.means)[k] + oracle.variances[k].sqrt() * noise
    return oracle.from_basis(c)


def test_cross_entropy_gap_is_zero_on_exact_samples_and_closed_form_on_wrong_weights():
    oracle = _separated_oracle()
    ref = ExactReference.of(oracle, n=500, seed=1, n_log_prob=40_000)
    gen = torch.Generator().manual_seed(2)
    gap, se = cross_entropy_gap(oracle.sample(20_000, gen)[0], oracle, ref)
    assert abs(gap) < 4 * se and se < 0.1
    # all the mass moved to the broadest component: E_q log p - E_p log p =
    # sum_k (w'_k - w_k)(log w_k - H_k), H_k = 1/2 sum_i log(2 pi e lam_ki)
    entropy = 0.5 * torch.log(2 * math.pi * math.e * oracle.variances.flatten(1)).sum(1)
    wrong = torch.zeros(3, dtype=torch.float64)
    wrong[int(entropy.argmax())] = 1.0
    want = float(((wrong - oracle.weights) * (torch.log(oracle.weights) - entropy)).sum())
    assert abs(want) > 1.0  # the entropies differ by nats: wrong weights are visible
    gap, se = cross_entropy_gap(_sample_with_weights(oracle, wrong, 20_000, gen), oracle, ref)
    assert gap == pytest.approx(want, abs=4 * se)
    assert gap < -1.0  # the broad component has the lowest density: negative gap


def test_mmd_is_at_its_floor_for_exact_samples_and_above_it_for_a_shift():
    oracle = GaussianMixtureOracle.image_like((1, 4, 4), num_components=3, seed=1)
    ref = ExactReference.of(oracle, n=1000, seed=1)
    gen = torch.Generator().manual_seed(4)
    floors = [mmd(oracle.sample(1000, gen)[0], oracle, ref) for _ in range(4)]
    spread = max(abs(f) for f in floors)
    assert spread < 2e-3  # unbiased: exact samples scatter around 0
    x, _ = oracle.sample(1000, gen)
    shifted = x + 0.5 * float(oracle.covariance.diagonal().sqrt().mean())
    assert mmd(shifted, oracle, ref) > 8 * spread
    report = oracle_report(x, oracle, reference=ref)
    assert {"cross_entropy_gap", "cross_entropy_gap_se", "mmd"} <= set(report)
    assert abs(report["mmd"]) < 2 * spread + 1e-4
