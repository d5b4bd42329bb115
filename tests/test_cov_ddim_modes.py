"""cov_ddim on oracles it was not tuned on: the default posterior draw (the probe's Jacobian
response) keeps DDIM's mode weights where a diagonal Gaussian draw does not (docs/methods/
cov_ddim.md, "The shape of the draw"), the default grid keeps them better than the shifted grid
of the first tuning ("Mode weights"), and the model-only calibrated table stands in for a
measured one."""

import math

import pytest
import torch

from difflab.diffusion.dct import dct_matrix
from difflab.diffusion.oracle import ORACLES, GaussianMixtureOracle
from difflab.diffusion.schedules import CosineSchedule
from difflab.eval.oracle_metrics import (
    ExactReference,
    cross_entropy_gap,
    exact_frechet,
    mode_weight_tv,
    oracle_report,
)
from difflab.sampling import (
    GridChoice,
    default_grid,
    get_sampler,
    measure_posterior_spectrum,
    sample_cov_ddim,
    sample_cov_ddim_table,
    sample_ddim,
)
from difflab.sampling.cov_ddim import BandBasis, calibrate_posterior_spectrum, response_noise

SCHED = CosineSchedule()
N = 1500
DIAGONAL = {"draw": "diagonal"}  # the posterior draw before issue 16's JVP-response draw


def _noise(oracle, seed=0, n=N):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *oracle.shape, generator=gen, dtype=torch.float64)


@pytest.fixture(scope="module", params=["unseen", "colour12"])
def oracle(request):
    return GaussianMixtureOracle.named(request.param)


def test_named_oracles_differ_and_reject_unknown_names():
    shapes = {ORACLES[name][0] for name in ORACLES}
    assert len(shapes) == len(ORACLES)  # each its own shape
    a, b = GaussianMixtureOracle.named("unseen"), GaussianMixtureOracle.named("unseen", seed=3)
    assert a.shape == b.shape and not torch.equal(a.means, b.means)
    with pytest.raises(ValueError, match="unknown oracle 'cifar'"):
        GaussianMixtureOracle.named("cifar")


def _mode_tv_se(x, oracle) -> float:
    """Multinomial standard error of the mode TV, from the samples' component frequencies
    (delta method: the TV's gradient is the sign of each frequency's error)."""
    resp, _, _ = oracle.posterior(x, torch.tensor(40.0, dtype=torch.float64))
    p = torch.bincount(resp.argmax(1), minlength=len(oracle.weights)).double() / x.shape[0]
    g = torch.sign(p - oracle.weights) / 2
    return float((((g * g * p).sum() - (g * p).sum() ** 2) / x.shape[0]).sqrt())


def test_default_grid_keeps_mode_weights_where_the_shifted_grid_did_not(oracle):
    z, grid = _noise(oracle), default_grid("cov_ddim", SCHED, 8)
    shifted = GridChoice("uniform_t", shift=-2.0).build(SCHED, 8)  # the earlier default
    diag, old = (
        sample_cov_ddim(
            oracle.denoise, z, g, generator=torch.Generator().manual_seed(1), **DIAGONAL
        )
        for g in (grid, shifted)
    )
    tv = mode_weight_tv(diag, oracle)
    assert tv < 0.6 * mode_weight_tv(old, oracle)
    # as close to the right weights as the ODE solver on its own default grid (within 2x)
    dpmpp = get_sampler("dpmpp_2m").fn(oracle.denoise, z, default_grid("dpmpp_2m", SCHED, 8))
    assert tv < 2 * mode_weight_tv(dpmpp, oracle)


def test_jvp_draw_keeps_ddim_mode_weights_at_nfe_4(oracle):
    """At 4 steps the last evaluation (logsnr 1.8) is where these oracles' modes are still
    mixed. The default draw (the probe's Jacobian response, rescaled per band) moves along the
    posterior's own directions: its mode TV is DDIM's within sampling error, at a fraction of
    DDIM's Frechet distance."""
    z, grid = _noise(oracle), default_grid("cov_ddim", SCHED, 4)
    out = sample_cov_ddim(oracle.denoise, z, grid, generator=torch.Generator().manual_seed(1))
    ddim = sample_ddim(oracle.denoise, z, default_grid("ddim", SCHED, 4))
    se = math.hypot(_mode_tv_se(out, oracle), _mode_tv_se(ddim, oracle))
    assert mode_weight_tv(out, oracle) < mode_weight_tv(ddim, oracle) + 2.5 * se
    assert exact_frechet(out, oracle) < 0.3 * exact_frechet(ddim, oracle)


def test_diagonal_draw_loses_the_mode_weights_that_the_jvp_draw_keeps():
    """On `unseen` (5 close modes) at 4 steps, independent Gaussian DCT coefficients with the
    right variances spread the between-mode part of the posterior covariance over every
    direction: the samples are over-dispersed within the modes (negative cross-entropy gap)
    and drift into the broader components (mode TV well above DDIM's); the response draw is
    neither."""
    oracle, n = GaussianMixtureOracle.named("unseen"), 3000
    ref = ExactReference.of(oracle, n=n, seed=11)
    z, grid = _noise(oracle, n=n), default_grid("cov_ddim", SCHED, 4)
    ddim = sample_ddim(oracle.denoise, z, default_grid("ddim", SCHED, 4))
    tv_ddim, se_ddim = mode_weight_tv(ddim, oracle), _mode_tv_se(ddim, oracle)
    reports = {}
    for draw in ("jvp", "diagonal"):
        gen = torch.Generator().manual_seed(1)
        x = sample_cov_ddim(oracle.denoise, z, grid, generator=gen, draw=draw)
        gap, gap_se = cross_entropy_gap(x, oracle, ref)
        se = math.hypot(_mode_tv_se(x, oracle), se_ddim)
        reports[draw] = {"tv": mode_weight_tv(x, oracle), "se": se, "gap": gap, "gap_se": gap_se}
    diag, jvp = reports["diagonal"], reports["jvp"]
    assert diag["tv"] > tv_ddim + 2.5 * diag["se"]
    assert jvp["tv"] < tv_ddim + 2 * jvp["se"]
    assert diag["gap"] < -4 * diag["gap_se"]
    assert abs(jvp["gap"]) < 0.3 * abs(diag["gap"])


def test_response_noise_is_the_posterior_draw_where_the_structure_is_exact():
    """`sqrt(c) * response_noise(w, c)` is `g_b w` with `g_b^2 = mean_b(c) / mean_b(w^2)`:
    - a DCT-diagonal covariance, flat in each band: the draw is `sqrt(c) u` (exact);
    - one mode direction `C = a a^T` (DCT coordinates), `c` its band means: the draw is
      `sign(a . u) a`, a two-point draw along the mode difference with covariance `a a^T`;
    - a spatial mask `C = lam P` with one band: no noise outside the mask, variance `lam` in it.
    """
    gen = torch.Generator().manual_seed(0)
    shape = (4000, 1, 8, 8)
    u = 2.0 * torch.randint(0, 2, shape, generator=gen, dtype=torch.float64) - 1
    basis = BandBasis.for_shape(shape, 4, dtype=torch.float64)
    flat = basis.expand(torch.rand(1, 1, basis.bands.shape[1], dtype=torch.float64) + 0.1, shape)
    c = flat.expand(shape)
    torch.testing.assert_close(c.sqrt() * response_noise(c * u, c, basis), c.sqrt() * u)
    a = torch.randn((1, 1, 8, 8), generator=gen, dtype=torch.float64).expand(shape)
    w = a * (a * u).sum((-3, -2, -1), keepdim=True)
    c = basis.expand(basis.pool(a * a), shape)
    sign = torch.sign((a * u).sum((-3, -2, -1), keepdim=True))
    torch.testing.assert_close(c.sqrt() * response_noise(w, c, basis), sign * a)
    one = BandBasis.for_shape(shape, 1, dtype=torch.float64)
    mask = (torch.rand((8, 8), generator=gen) < 0.3).double()
    lam, f = 0.5, mask.mean()
    w = one.to_freq(lam * mask * one.from_freq(u))  # F C F^T u with C = lam diag(mask)
    c = torch.full(shape, float(lam * f), dtype=torch.float64)
    delta = one.from_freq(c.sqrt() * response_noise(w, c, one))
    assert delta[..., mask == 0].abs().max() < 1e-12
    var = delta[..., mask == 1].var(0).mean()
    torch.testing.assert_close(var, torch.tensor(lam, dtype=torch.float64), rtol=0.05, atol=0)
    assert torch.equal(dct_matrix(8, dtype=torch.float64), basis.mh)  # the basis is the DCT


def test_cov_ddim_rejects_an_unknown_draw():
    oracle = GaussianMixtureOracle.named("unseen")
    with pytest.raises(ValueError, match="draw must be one of"):
        sample_cov_ddim(oracle.denoise, _noise(oracle)[:4], default_grid("cov_ddim", SCHED, 2),
                        draw="gaussian")  # fmt: skip


def test_calibrated_table_matches_the_measured_one_and_beats_ddim(oracle):
    levels = torch.linspace(-10, 10, 11, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    cal = calibrate_posterior_spectrum(
        oracle.denoise, oracle.shape, levels, num=256, generator=gen, dtype=torch.float64
    )
    data, _ = oracle.sample(2000, torch.Generator().manual_seed(3))
    meas = measure_posterior_spectrum(oracle.denoise, data, levels, generator=gen)
    total_cal, total_meas = cal.values.flatten(1).sum(1), meas.values.flatten(1).sum(1)
    assert torch.allclose(total_cal, total_meas, rtol=0.2)  # the trace, level by level
    z, grid = _noise(oracle), default_grid("cov_ddim_table", SCHED, 8)
    out = sample_cov_ddim_table(oracle.denoise, z, grid, table=cal, generator=gen)
    ddim = sample_ddim(oracle.denoise, z, grid)
    assert exact_frechet(out, oracle) < 0.3 * exact_frechet(ddim, oracle)


def test_calibration_rejects_bad_arguments(oracle):
    with pytest.raises(ValueError, match="logsnrs"):
        calibrate_posterior_spectrum(oracle.denoise, oracle.shape, torch.tensor([0.0]))
    with pytest.raises(ValueError, match="num"):
        calibrate_posterior_spectrum(oracle.denoise, oracle.shape, torch.tensor([0.0, 1.0]), num=1)


def test_per_example_band_levels_fix_the_shape_that_batch_pooling_gets_wrong():
    """Batch pooling gives every example the batch's average posterior covariance: samples of
    narrow components get too much noise, of broad ones too little, and by Jensen the mean exact
    log-density of the samples drops (a negative cross-entropy gap) while the moments stay right.
    The default per-example band levels (`pooling="profile"`) remove most of it (with the
    diagonal draw; the JVP-response draw's own shape is checked above)."""
    oracle = GaussianMixtureOracle.named("held_out")
    ref = ExactReference.of(oracle, n=N, seed=11)
    z, grid = _noise(oracle), default_grid("cov_ddim", SCHED, 8)

    def report(**options):
        gen = torch.Generator().manual_seed(1)
        return oracle_report(sample_cov_ddim(oracle.denoise, z, grid, generator=gen, **options),
                             oracle, reference=ref)  # fmt: skip

    default, batch = report(**DIAGONAL), report(pooling="batch", num_bands=None, **DIAGONAL)
    assert batch["cross_entropy_gap"] < -4 * batch["cross_entropy_gap_se"]
    assert abs(default["cross_entropy_gap"]) < 0.5 * abs(batch["cross_entropy_gap"])
    assert default["mmd"] < batch["mmd"]
    assert default["frechet_exact"] < 1.3 * batch["frechet_exact"]  # the moments: about as good
