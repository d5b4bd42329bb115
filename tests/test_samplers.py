"""Few-step samplers against exact references: the Gaussian flow map, exact posterior covariances,
polynomial exactness of the multistep weights, honest NFE/JVP counts and clear errors."""

import math

import pytest
import torch
from torch.autograd.forward_ad import unpack_dual

from difflab.diffusion.dct import dct2, idct2, radial_bands
from difflab.diffusion.guidance import guided_denoiser
from difflab.diffusion.oracle import GaussianMixtureOracle
from difflab.diffusion.parameterization import alpha_sigma, as_denoiser
from difflab.diffusion.schedules import CosineSchedule
from difflab.diffusion.transitions import ddim_step
from difflab.sampling import (
    SAMPLERS,
    BandBasis,
    GridChoice,
    VarianceTable,
    default_grid,
    edm_grid,
    generate,
    get_sampler,
    measure_posterior_spectrum,
    measure_x_var,
    sample_addim,
    sample_cov_ddim,
    sample_cov_ddim_table,
    sample_ddim,
    sample_dpmpp_2m,
    sample_dpmpp_3m,
    sample_euler,
    sample_heun,
    sample_unipc,
    shift_interior,
    tweedie_band_covariance,
    uniform_logsnr_grid,
    uniform_t_grid,
)
from difflab.sampling.cov_ddim import pooled_covariance, tweedie_probe
from difflab.sampling.dpmpp import dpmpp_weights

SCHED = CosineSchedule()
F64 = torch.float64
# torch's first forward-mode AD call loads jvp decompositions through torch.jit.script
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


def _noise(n, shape, seed):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _gaussian(shape=(1, 8, 8), seed=5):
    gen = torch.Generator().manual_seed(seed)
    mean = 0.3 * torch.randn(*shape, generator=gen, dtype=F64)
    var = torch.rand(*shape, generator=gen, dtype=F64) * 2 + 0.05
    return GaussianMixtureOracle.gaussian(mean, var, basis="dct")


class GaussianDenoiser:
    """The exact `E[x | z]` of one DCT-diagonal Gaussian, written out (cheaper than the oracle's
    general mixture path, and checked against it):
    `F^T (m + a lam / (a^2 lam + s^2) (F z - a m))`."""

    def __init__(self, oracle):
        self.m = oracle.to_basis(oracle.means[0])
        self.lam = oracle.variances[0]

    def __call__(self, z, logsnr):
        level = logsnr.reshape(-1, *([1] * (z.ndim - 1))) if logsnr.ndim else logsnr
        a, s = alpha_sigma(level)
        return idct2(self.m + a * self.lam / (a**2 * self.lam + s**2) * (dct2(z) - a * self.m))

    def flow_map(self, z, logsnr):
        """The probability-flow ODE keeps `(c - a m) / sqrt(a^2 lam + s^2)` fixed per coefficient,
        so it maps `z` at `logsnr` to `m + sqrt(lam) (c - a m) / sqrt(a^2 lam + s^2)`."""
        a, s = alpha_sigma(torch.as_tensor(logsnr, dtype=F64))
        c = dct2(z)
        return idct2(self.m + self.lam.sqrt() * (c - a * self.m) / (a**2 * self.lam + s**2).sqrt())


@pytest.fixture(scope="module")
def gauss():
    return _gaussian()


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixtureOracle.image_like((1, 8, 8), num_components=4, seed=3)


def test_gaussian_denoiser_is_the_oracle(gauss):
    z, level = _noise(3, gauss.shape, 0), torch.tensor([-2.0, 0.5, 4.0], dtype=F64)
    torch.testing.assert_close(GaussianDenoiser(gauss)(z, level), gauss.denoise(z, level))


@pytest.mark.parametrize("grid", ["uniform_t", "edm", "per_element"])
def test_euler_is_ddim(mixture, grid):
    """Euler on EDM's ODE in x = z / alpha, s = exp(-logsnr/2) is DDIM(eta=0) in z."""
    z = _noise(6, mixture.shape, 1)
    if grid == "uniform_t":
        levels = uniform_t_grid(SCHED, 7)
    elif grid == "edm":
        levels = edm_grid(5)
    else:
        cols = [uniform_t_grid(CosineSchedule(-10 - k, 10), 4) for k in range(6)]
        levels = torch.stack(cols, 1)
    torch.testing.assert_close(
        sample_euler(mixture.denoise, z, levels),
        sample_ddim(mixture.denoise, z, levels),
        rtol=1e-9,
        atol=1e-9,
    )


# sampler, options, step counts, accepted range of error ratios per doubling of the steps
ORDERS = [
    (sample_euler, {}, (32, 64, 128), (1.7, 2.3)),
    (sample_ddim, {}, (32, 64, 128), (1.7, 2.3)),
    (sample_addim, {}, (32, 64, 128), (1.7, 2.3)),
    (sample_heun, {}, (16, 32, 64), (3.5, 4.8)),
    (sample_dpmpp_2m, {}, (32, 64, 128), (3.4, 4.6)),
    (sample_unipc, {}, (32, 64, 128), (6.5, 9.5)),  # UniP-2 + UniC: order 3
    (sample_dpmpp_3m, {}, (16, 32, 64), (10.0, 20.0)),  # third order (measured 11.7, 16.2)
]


@pytest.mark.parametrize(
    "fn, options, steps, bounds", ORDERS, ids=lambda v: getattr(v, "__name__", "")
)
def test_converges_to_the_gaussian_flow_map_at_its_order(gauss, fn, options, steps, bounds):
    den = GaussianDenoiser(gauss)
    z = _noise(8, gauss.shape, 1)
    exact = den.flow_map(z, -15.0)
    errors = []
    for n in steps:
        grid = uniform_logsnr_grid(-15.0, 15.0, n + 1)[:-1]
        grid[-1] = math.inf  # n steps from logsnr -15 exactly to the data
        errors.append((fn(den, z, grid, **options) - exact).abs().max().item())
    ratios = [errors[i] / errors[i + 1] for i in range(len(errors) - 1)]
    assert all(bounds[0] < r < bounds[1] for r in ratios), (errors, ratios)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpmpp_weights_integrate_polynomials(order):
    """The exact step is `a z + alpha_s int e^{-(lambda_s - l)} x_hat(l) dl`: with `x_hat` a
    polynomial in lambda, the 3M weights are exact up to degree 2 (third order; the reference
    implementation's D2 weight is half of this and fails at degree 2), 1M (DDIM) and 2M (its
    midpoint rule, by design) for constants."""
    levels = [torch.tensor(v, dtype=F64) for v in (0.4, -0.5, -1.3)]
    l_s = torch.tensor(1.5, dtype=F64)
    _, weights = dpmpp_weights(levels[:order], l_s, order)
    lam_t, lam_s = 0.2, 0.75
    alpha_s = alpha_sigma(l_s)[0].item()
    nodes, quad_w = (torch.tensor(v, dtype=F64) for v in _gauss_legendre(12, lam_t, lam_s))
    exact_degrees = {1: 0, 2: 0, 3: 2}[order]
    for degree in range(exact_degrees + 1):
        approx = sum(w.item() * (lv.item() / 2 - 0.1) ** degree for w, lv in zip(weights, levels))
        integrand = torch.exp(-(lam_s - nodes)) * (nodes - 0.1) ** degree
        exact = alpha_s * float((quad_w * integrand).sum())
        assert approx == pytest.approx(exact, rel=1e-10, abs=1e-12), (order, degree)


def _gauss_legendre(n, lo, hi):
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (hi - lo) * x + 0.5 * (hi + lo), 0.5 * (hi - lo) * w


def _counting(denoise):
    calls = {"forward": 0, "jvp": 0}

    def counted(z, logsnr):
        calls["jvp" if unpack_dual(z).tangent is not None else "forward"] += 1
        return denoise(z, logsnr)

    return counted, calls


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_nfe_and_jvps_are_counted_honestly(gauss, name):
    spec = get_sampler(name)
    for steps in (1, 2, 5):
        counted, calls = _counting(GaussianDenoiser(gauss))
        spec.fn(
            counted,
            _noise(2, gauss.shape, 0),
            uniform_t_grid(SCHED, steps),
            generator=torch.Generator().manual_seed(0),
        )
        assert calls["forward"] + calls["jvp"] == spec.nfe(steps), (name, steps, calls)
        assert calls["jvp"] == spec.jvps(steps), (name, steps, calls)


def test_cov_ddim_final_mean_skips_the_last_jvp(gauss):
    counted, calls = _counting(GaussianDenoiser(gauss))
    grid = uniform_t_grid(SCHED, 4)
    sample_cov_ddim(counted, _noise(2, gauss.shape, 0), grid, final="mean")
    assert calls == {"forward": 1, "jvp": 3}
    assert get_sampler("cov_ddim").calls(grid, final="mean") == (4, 3)


def test_heun_costs_two_per_step_on_a_finite_grid(gauss):
    counted, calls = _counting(GaussianDenoiser(gauss))
    grid = uniform_t_grid(SCHED, 3, final=12.0)
    sample_heun(counted, _noise(2, gauss.shape, 0), grid)
    assert calls["forward"] == 6
    assert get_sampler("heun").calls(grid) == (6, 0)
    assert get_sampler("heun").calls(uniform_t_grid(SCHED, 3)) == (5, 0)


def _band_mean(values, num_bands):
    bands = radial_bands(*values.shape[-2:], num_bands).flatten()
    flat = values.flatten(-2).mean(-2)  # pool channels
    return torch.stack([flat[..., bands == b].mean(-1) for b in range(num_bands)], -1)


@pytest.mark.parametrize("logsnr", [-3.0, 0.0, 3.0])
def test_tweedie_band_covariance_matches_the_exact_posterior(mixture, logsnr):
    """One JVP per example estimates the band-averaged DCT diagonal of Cov[x|z]; averaged over
    many Rademacher probes at the same z it must match the oracle's exact posterior covariance
    within the probe noise (the off-diagonal part that Hutchinson's estimator averages out)."""
    reps, num_bands = 400, 4
    z0 = mixture.sample(2, torch.Generator().manual_seed(4))[0]
    a, s = alpha_sigma(torch.tensor(logsnr, dtype=F64))
    z0 = a * z0 + s * _noise(2, mixture.shape, 5)
    z = z0.repeat_interleave(reps, 0)
    level = torch.full((z.shape[0],), logsnr, dtype=F64)
    basis = BandBasis.for_shape(tuple(z.shape), num_bands, dtype=F64)
    u = (2 * torch.randint(0, 2, z.shape, generator=torch.Generator().manual_seed(6)) - 1).double()
    x_hat, c = tweedie_band_covariance(mixture.denoise, z, level, basis, u)
    torch.testing.assert_close(x_hat, mixture.denoise(z, level))
    est = c.view(2, reps, num_bands)
    exact = _band_mean(mixture.posterior_covariance_diag(z0, level[:2]), num_bands)
    stderr = est.std(1) / math.sqrt(reps)
    assert ((est.mean(1) - exact).abs() <= 4 * stderr + 1e-9 * exact).all(), (est.mean(1), exact)
    # with one component (a DCT-diagonal posterior) a single probe is already exact
    g = _gaussian()
    basis1 = BandBasis.for_shape((1, *g.shape), None, dtype=F64)
    zg, lg = _noise(1, g.shape, 7), torch.tensor([logsnr], dtype=F64)
    _, cg = tweedie_band_covariance(g.denoise, zg, lg, basis1, u[:1])
    torch.testing.assert_close(cg, g.posterior_covariance_diag(zg, lg))


def test_tweedie_covariance_goes_through_guidance():
    """For Gaussian (affine) denoisers the guided Jacobian is `(1 + w) J_c - w J_u`: the band
    estimate through `guided_denoiser` is that combination, for the same probe."""
    cond, uncond, w = GaussianDenoiser(_gaussian(seed=1)), GaussianDenoiser(_gaussian(seed=2)), 1.5
    guided = guided_denoiser(cond, uncond, w)
    z, level = _noise(3, (1, 8, 8), 8), torch.full((3,), 0.7, dtype=F64)
    basis = BandBasis.for_shape(tuple(z.shape), 4, dtype=F64)
    u = (2 * torch.randint(0, 2, z.shape, generator=torch.Generator().manual_seed(1)) - 1).double()
    _, c_g = tweedie_band_covariance(guided, z, level, basis, u)
    _, c_c = tweedie_band_covariance(cond, z, level, basis, u)
    _, c_u = tweedie_band_covariance(uncond, z, level, basis, u)
    torch.testing.assert_close(c_g, (1 + w) * c_c - w * c_u)


def test_pooled_covariance_estimators(gauss):
    """On one Gaussian every example has the same DCT-diagonal posterior covariance and a
    Rademacher probe recovers it exactly per coefficient: "profile" pooling (per-example band
    levels times the batch's within-band shape) is then exact, band pooling gives band means."""
    z, level = _noise(5, gauss.shape, 11), torch.full((5,), 0.3, dtype=F64)
    exact = gauss.posterior_covariance_diag(z, level)
    u = (2 * torch.randint(0, 2, z.shape, generator=torch.Generator().manual_seed(2)) - 1).double()
    basis = BandBasis.for_shape(tuple(z.shape), 4, dtype=F64)
    _, products = tweedie_probe(GaussianDenoiser(gauss), z, level, basis, u)
    torch.testing.assert_close(pooled_covariance(products, u, basis, "profile"), exact)
    band_means = basis.expand(basis.pool(exact), exact.shape)
    torch.testing.assert_close(pooled_covariance(products, u, basis, "example"), band_means)
    torch.testing.assert_close(pooled_covariance(products, u, basis, "batch"), band_means[:1])


def _moments_close(samples, oracle, n):
    x = samples.flatten(1)
    ref = oracle.sample(n, torch.Generator().manual_seed(99))[0].flatten(1)
    cov, ref_cov = torch.cov(x.T), torch.cov(ref.T)
    exact = oracle.covariance
    err = torch.linalg.matrix_norm(cov - exact) / torch.linalg.matrix_norm(exact)
    ref_err = torch.linalg.matrix_norm(ref_cov - exact) / torch.linalg.matrix_norm(exact)
    mean_err = (x.mean(0) - oracle.mean).abs().max()
    return err.item(), ref_err.item(), mean_err.item()


def test_cov_ddim_is_exact_on_gaussian_data_in_two_steps(gauss):
    """With a Gaussian posterior that is diagonal in the DCT, `x_hat + kappa * delta` is an exact
    draw of the DDIM transition: two stochastic steps give the data distribution, where two DDIM
    steps are far off."""
    n = 3000
    z = _noise(n, gauss.shape, 2)
    grid = uniform_t_grid(SCHED, 2)
    gen = torch.Generator().manual_seed(3)
    den = GaussianDenoiser(gauss)
    out = sample_cov_ddim(den, z, grid, num_bands=None, generator=gen)
    err, ref_err, mean_err = _moments_close(out, gauss, n)
    assert err < 2 * ref_err and mean_err < 0.1, (err, ref_err, mean_err)
    ddim_err, _, _ = _moments_close(sample_ddim(den, z, grid), gauss, n)
    assert ddim_err > 5 * ref_err


def test_posterior_spectrum_table_is_the_average_posterior_variance(gauss):
    """Law of total variance: mean over data of (F(x - x_hat))_k^2 is the average posterior
    variance per DCT coefficient, lam s^2 / (a^2 lam + s^2) on Gaussian data; sampling with the
    table is then as exact as sampling with the JVP (two steps reproduce the moments)."""
    levels = torch.tensor([-15.0, -3.0, 0.0, 2.0, 15.0], dtype=F64)
    data = gauss.sample(3000, torch.Generator().manual_seed(1))[0]
    den = GaussianDenoiser(gauss)
    table = measure_posterior_spectrum(den, data, levels, generator=torch.Generator())
    a, s = alpha_sigma(levels)
    lam = gauss.variances[0]
    exact = (
        lam * s.view(-1, 1, 1, 1) ** 2 / (a.view(-1, 1, 1, 1) ** 2 * lam + s.view(-1, 1, 1, 1) ** 2)
    )
    assert table.values.shape == (5, 1, 8, 8)
    torch.testing.assert_close(table.values, exact, rtol=0.12, atol=1e-9)
    n, grid = 3000, uniform_t_grid(SCHED, 2)
    z = _noise(n, gauss.shape, 2)
    exact_table = VarianceTable(levels, exact)
    out = sample_cov_ddim_table(den, z, grid, table=exact_table, generator=torch.Generator())
    err, ref_err, mean_err = _moments_close(out, gauss, n)
    assert err < 2 * ref_err and mean_err < 0.1, (err, ref_err, mean_err)


def test_variance_table_interpolates_tensors():
    table = VarianceTable(torch.tensor([0.0, 2.0]), torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    got = table(torch.tensor([[1.0, -5.0], [2.0, 9.0]]))
    want = torch.tensor([[[2.0, 4.0], [1.0, 2.0]], [[3.0, 6.0], [3.0, 6.0]]])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(table(torch.tensor(0.5)), torch.tensor([1.5, 3.0]))
    scalar = VarianceTable(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(scalar(torch.tensor(1.5)), torch.tensor(2.5))


def test_cov_ddim_options_change_the_result_as_predicted(gauss, mixture):
    """Each option of `cov_ddim` does what it says (no option is a no-op):

    - `prior_var=0` clips the covariance to zero: the step is then DDIM's, exactly;
    - `final="mean"` returns the last `x_hat`; deterministic steps draw no noise;
    - on a DCT-diagonal Gaussian a probe recovers the covariance exactly per coefficient, so
      per-example, batch and profile pooling and Gaussian probes all give the same samples
      (a Gaussian probe with deterministic rules: no noise stream to differ), while band
      averaging changes them;
      on the mixture (non-diagonal posterior) a Gaussian probe differs from Rademacher."""
    grid = uniform_t_grid(SCHED, 4)
    z = _noise(6, gauss.shape, 3)
    den = GaussianDenoiser(gauss)

    def run(denoise=den, seed=0, **options):
        return sample_cov_ddim(denoise, z, grid, generator=torch.Generator().manual_seed(seed),
                               **options)  # fmt: skip

    torch.testing.assert_close(run(prior_var=0.0), sample_ddim(den, z, grid), rtol=0, atol=1e-12)
    assert (run() - sample_ddim(den, z, grid)).abs().max() > 1e-2
    seen = []
    out = sample_cov_ddim(den, z, grid, final="mean", callback=seen.append)
    torch.testing.assert_close(out, seen[-1]["x_hat"], rtol=0, atol=0)
    det = {"variant": "deterministic", "final": "deterministic"}
    torch.testing.assert_close(run(seed=1, **det), run(seed=2, **det), rtol=0, atol=1e-12)
    assert (run(seed=1) - run(seed=2)).abs().max() > 1e-2  # stochastic: fresh noise
    ref = run(**det, num_bands=None)  # per coefficient (the default has 8 bands since issue 16)
    for options in ({"pooling": "example"}, {"pooling": "batch"}, {"probe": "gaussian"}):
        torch.testing.assert_close(run(**det, num_bands=None, **options), ref, rtol=1e-9, atol=1e-9)
    # (bands also set the deterministic rescaling's bands, and the JVP-response draw's band
    # gains: compare them on stochastic steps with the diagonal draw)
    ref = run(draw="diagonal")
    torch.testing.assert_close(
        run(pooling="profile", num_bands=4, draw="diagonal"), ref, rtol=1e-9, atol=1e-9
    )
    assert (run(pooling="example", num_bands=4, draw="diagonal") - ref).abs().max() > 1e-3
    zm = _noise(6, mixture.shape, 3)
    rademacher, gaussian = (
        sample_cov_ddim(mixture.denoise, zm, grid, probe=p, generator=torch.Generator(), **det)
        for p in ("rademacher", "gaussian")
    )
    assert (rademacher - gaussian).abs().max() > 1e-3


def test_addim_reduces_to_ddim(mixture):
    z = _noise(8, mixture.shape, 4)
    grid = uniform_t_grid(SCHED, 6)
    ddim = sample_ddim(mixture.denoise, z, grid)
    torch.testing.assert_close(sample_addim(mixture.denoise, z, grid, x_var=0.0), ddim)
    # the last step adds sqrt(x_var d) / ||eps_hat|| * eps_hat: the gap shrinks like sqrt(x_var)
    gap = [
        (sample_addim(mixture.denoise, z, grid, x_var=v) - ddim).abs().max() for v in (1e-4, 1e-8)
    ]
    assert gap[1] < gap[0] / 50 and gap[1] < 1e-3
    assert (sample_addim(mixture.denoise, z, grid) - ddim).abs().max() > 1e-2  # analytic x_var


def test_measured_x_var_is_eta_times_the_posterior_variance(gauss):
    """On Gaussian data E||x - x_hat||^2 / d = mean_k lam_k s^2 / (a^2 lam_k + s^2) exactly."""
    levels = torch.tensor([-4.0, 0.0, 4.0], dtype=F64)
    data = gauss.sample(4000, torch.Generator().manual_seed(0))[0]
    table = measure_x_var(gauss.denoise, data, levels, eta=0.75, generator=torch.Generator())
    a, s = alpha_sigma(levels)
    lam = gauss.variances[0].flatten()
    exact = 0.75 * (lam * s[:, None] ** 2 / (a[:, None] ** 2 * lam + s[:, None] ** 2)).mean(1)
    torch.testing.assert_close(table.values, exact, rtol=0.05, atol=0)
    torch.testing.assert_close(
        table(torch.tensor([-2.0, 9.0])).double(),
        torch.stack([(table.values[0] + table.values[1]) / 2, table.values[2]]),
        rtol=1e-6,
        atol=0,
    )


def test_per_element_grids_match_per_example_runs(mixture):
    """A grid with one column per example equals running each example on its own grid."""
    z = _noise(3, mixture.shape, 9)
    cols = [uniform_t_grid(CosineSchedule(-12 + k, 12 - k), 5) for k in range(3)]
    grid = torch.stack(cols, 1)
    for fn in (sample_ddim, sample_euler, sample_heun, sample_dpmpp_2m, sample_dpmpp_3m,
               sample_unipc, sample_addim):  # fmt: skip
        together = fn(mixture.denoise, z, grid)
        alone = torch.cat([fn(mixture.denoise, z[k : k + 1], cols[k]) for k in range(3)])
        torch.testing.assert_close(together, alone, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_step_loop_has_no_host_sync(name):
    """Tensors on the meta device have no data: any `.item()`, `bool(tensor)`, `nonzero()` or
    data-dependent shape inside the loop raises. Grids are checked on the host before it."""
    z = torch.empty(2, 1, 8, 8, device="meta")
    out = get_sampler(name).fn(lambda z, l: 0.5 * z, z, uniform_t_grid(SCHED, 4))
    assert out.device.type == "meta" and out.shape == z.shape


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m"])
def test_step_loop_compiles_to_one_graph(name):
    """`torch.compile(fullgraph=True)` raises on any graph break (a host sync such as `.item()`
    or data-dependent control flow); the "eager" backend checks the capture without a C++
    toolchain. Both samplers compile whole: the grid's value checks are skipped while tracing
    and DPM-Solver++(2M)'s coefficients are tensor operations (no host read)."""
    grid = uniform_t_grid(SCHED, 4)
    z = _noise(2, (1, 8, 8), 0)

    def denoise(z, logsnr):
        return 0.5 * z + 0.1 * torch.tanh(logsnr).view(-1, 1, 1, 1)

    fn = get_sampler(name).fn
    torch._dynamo.reset()
    compiled = torch.compile(lambda z: fn(denoise, z, grid), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(z), fn(denoise, z, grid))


def test_default_grid_for_every_sampler():
    for name in SAMPLERS:
        grid = default_grid(name, SCHED, 8)
        assert grid.shape == (9,) and math.isinf(grid[-1]) and (grid[1:] > grid[:-1]).all()
    # the three measured families (results/samplers/README.md), written out
    torch.testing.assert_close(default_grid("ddim", SCHED, 8), uniform_t_grid(SCHED, 8))
    lo, hi = -2 * math.log(80.0), -2 * math.log(0.002)
    edm_range = torch.tensor([lo + k * (hi - lo) / 7 for k in range(8)] + [math.inf], dtype=F64)
    torch.testing.assert_close(default_grid("dpmpp_2m", SCHED, 8), edm_range)
    shifted = shift_interior(uniform_t_grid(SCHED, 8), -2.0)
    torch.testing.assert_close(default_grid("addim", SCHED, 8), shifted)
    # cov_ddim: unshifted since issue 16 (mode weights; tests/test_cov_ddim_modes.py)
    torch.testing.assert_close(default_grid("cov_ddim", SCHED, 8), uniform_t_grid(SCHED, 8))
    with pytest.raises(ValueError, match="unknown sampler"):
        default_grid("nope", SCHED, 8)


def test_bad_arguments_raise_clearly(mixture):
    z = _noise(2, mixture.shape, 0)
    grid = uniform_t_grid(SCHED, 3)
    den = mixture.denoise
    cases = [
        (lambda: sample_cov_ddim(den, z, grid, variant="exact"), "variant"),
        (lambda: sample_cov_ddim(den, z, grid, final="median"), "final"),
        (lambda: sample_cov_ddim(den, z, grid, probe="sobol"), "probe"),
        (lambda: sample_cov_ddim(den, z, grid, num_bands=0), "num_bands"),
        (lambda: sample_cov_ddim(den, z, grid, pooling="example", num_bands=1.5), "num_bands"),
        (lambda: sample_cov_ddim(den, z, torch.stack([grid, grid], 1)), "one level for the whole"),
        (lambda: sample_cov_ddim(den, z, grid, pooling="all"), "pooling"),
        (lambda: sample_cov_ddim(den, z[:, 0], grid), "image samples"),
        (
            lambda: sample_cov_ddim(
                den, z, grid[:, None, None, None, None].expand(-1, 2, 1, 8, 1), pooling="example"
            ),
            "one level per image",
        ),
        (lambda: sample_unipc(den, z, grid, order=4), "order"),
        (lambda: sample_heun(den, z, grid, churn=-1.0), "churn"),
        (lambda: sample_addim(den, z, grid, x_var=-0.1), "x_var"),
        (lambda: measure_x_var(den, z, torch.tensor([0.0, 1.0]), eta=0.0), "eta"),
        (lambda: VarianceTable(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])), "increasing"),
        (lambda: VarianceTable(torch.tensor([0.0, 1.0]), torch.tensor([1.0])), "values"),
        (lambda: measure_posterior_spectrum(den, z[:, 0], torch.tensor([0.0])), "image"),
        (lambda: sample_cov_ddim_table(den, z, grid, variant="x"), "variant"),
        (
            lambda: sample_dpmpp_3m(den, z, torch.tensor([[0.0, 1.0], [math.inf, 2.0]])),
            "last level",
        ),
        (lambda: sample_dpmpp_2m(den, z, grid[:-1].flip(0)), "increasing"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.slow
def test_dpmpp_2m_and_unipc_agree_with_diffusers(mixture):
    """Same grid, same denoiser: our 2M / UniPC and diffusers' schedulers agree to float32
    round-off of diffusers' sigmas (the adapter feeds them `x_hat` directly)."""
    pytest.importorskip("diffusers")
    from difflab.sampling.diffusers_adapter import (
        make_scheduler,
        sample_with_scheduler,
        scheduler_grid,
    )

    z = _noise(16, mixture.shape, 10)
    for peer, ours, order in (
        ("diffusers_dpmpp_2m", sample_dpmpp_2m, None),
        ("diffusers_dpmpp_2m_karras", sample_dpmpp_2m, None),
        ("diffusers_unipc", sample_unipc, None),
        ("diffusers_unipc", sample_unipc, 1),
        ("diffusers_unipc", sample_unipc, 3),
    ):
        config, options = ({}, {}) if order is None else ({"solver_order": order}, {"order": order})
        for steps in (4, 10, 20):
            scheduler = make_scheduler(peer, SCHED, **config)
            theirs = sample_with_scheduler(scheduler, mixture.denoise, z, steps)
            grid = scheduler_grid(make_scheduler(peer, SCHED, **config), steps)
            mine = ours(mixture.denoise, z, grid, **options)
            torch.testing.assert_close(mine, theirs, rtol=0, atol=2e-5)


# --- Heun churn, UniPC orders, callbacks, non-finite output --------------------------------------


def _dct_variance_error(samples, oracle):
    """Mean |log| ratio of the sample variance per DCT coefficient to the exact one."""
    var = oracle.to_basis(samples - oracle.mean.view(oracle.shape)).var(0)
    return (var / oracle.variances[0]).log().abs().mean().item()


def test_heun_churn(gauss):
    """`churn = 0` (or churn confined to an interval no level is in) is plain Heun exactly;
    churn > 0 raises the level with fresh noise (different samples for different seeds) and,
    with enough steps, still samples the Gaussian: per-coefficient variances at the floor of
    exact samples of the same size."""
    den = GaussianDenoiser(gauss)
    z, grid = _noise(6, gauss.shape, 12), uniform_t_grid(SCHED, 8)
    plain = sample_heun(den, z, grid)
    gen = torch.Generator().manual_seed(0)
    same = [
        sample_heun(den, z, grid, churn=0.0, noise_scale=0.5, generator=gen),
        sample_heun(den, z, grid, churn=20.0, churn_interval=(20.0, 30.0), generator=gen),
    ]
    for out in same:
        torch.testing.assert_close(out, plain, rtol=0, atol=0)
    churned = [
        sample_heun(den, z, grid, churn=20.0, generator=torch.Generator().manual_seed(k))
        for k in (1, 2)
    ]
    assert (churned[0] - plain).abs().max() > 1e-2
    assert (churned[0] - churned[1]).abs().max() > 1e-2
    n, grid = 3000, uniform_t_grid(SCHED, 64)
    z = _noise(n, gauss.shape, 13)
    out = sample_heun(den, z, grid, churn=20.0, generator=torch.Generator().manual_seed(3))
    floor = _dct_variance_error(gauss.sample(n, torch.Generator().manual_seed(9))[0], gauss)
    assert _dct_variance_error(out, gauss) < 1.5 * floor + 0.01, (
        _dct_variance_error(out, gauss),
        floor,
    )
    assert (out.mean(0) - gauss.mean.view(gauss.shape)).abs().max() < 0.15


def test_unipc_order_1_is_ddim_with_a_trapezoidal_corrector(mixture):
    """UniPC-1 (bh2): the predictor is DDIM; the corrector UniC-1 (`rho = 1/2`, `B(h) = phi_1`)
    redoes the last step as DDIM on `(x_hat_prev + x_hat_new) / 2` once the new evaluation is
    in. Written out here with `ddim_step`; equal to DDIM on 2 steps (nothing left to correct
    that the output uses), different from it on more."""
    z = _noise(5, mixture.shape, 14)
    for steps in (2, 6):
        grid = uniform_t_grid(SCHED, steps)
        state, prev_z, prev_x = z, None, None
        for i in range(steps):
            x_hat = mixture.denoise(state, grid[i].expand(5))
            if i > 0:
                state = ddim_step(prev_z, 0.5 * (prev_x + x_hat), grid[i - 1], grid[i])
            prev_z, prev_x = state, x_hat
            state = ddim_step(state, x_hat, grid[i], grid[i + 1])
        out = sample_unipc(mixture.denoise, z, grid, order=1)
        torch.testing.assert_close(out, state, rtol=1e-10, atol=1e-10)
        gap = (out - sample_ddim(mixture.denoise, z, grid)).abs().max()
        assert gap < 1e-12 if steps == 2 else gap > 1e-2


def test_unipc_order_3_converges_at_a_higher_rate_than_order_1(gauss):
    """Empirical order over 16 -> 128 steps on the Gaussian flow map: UniPC-1 (with its
    corrector) is second order, UniPC-3 close to fourth (errors 0.50 -> 0.0098 and 0.081 ->
    2.4e-5; the per-doubling ratios of order 3 are irregular, as diffusers' are: tested equal)."""
    den = GaussianDenoiser(gauss)
    z = _noise(8, gauss.shape, 1)
    exact = den.flow_map(z, -15.0)

    def rate(order):
        errors = []
        for n in (16, 128):
            grid = uniform_logsnr_grid(-15.0, 15.0, n + 1)[:-1]
            grid[-1] = math.inf
            errors.append((sample_unipc(den, z, grid, order=order) - exact).abs().max().item())
        return math.log2(errors[0] / errors[1]) / 3

    low, high = rate(1), rate(3)
    assert 1.7 < low < 2.3 and high > 3.3, (low, high)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_is_called_once_per_step_with_the_state(gauss, name):
    """Every sampler calls `callback` once per step with the step index, the new state, the
    denoiser output and the level it was evaluated at; the last state is the output."""
    seen = []
    grid = uniform_t_grid(SCHED, 5)
    gen = torch.Generator().manual_seed(0)
    out = get_sampler(name).fn(
        GaussianDenoiser(gauss), _noise(2, gauss.shape, 0), grid, generator=gen,
        callback=seen.append,
    )  # fmt: skip
    assert [c["i"] for c in seen] == list(range(5))
    assert all(set(c) == {"i", "z", "x_hat", "logsnr"} for c in seen)
    torch.testing.assert_close(torch.stack([c["logsnr"] for c in seen]), grid[:-1])
    assert all(c["z"].shape == out.shape == c["x_hat"].shape for c in seen)
    torch.testing.assert_close(seen[-1]["z"], out, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_non_finite_samples_raise_naming_the_sampler(gauss, name):
    """A NaN-returning denoiser makes every sampler raise `FloatingPointError` after its loop
    (one check per call), naming the sampler, instead of returning NaN samples."""

    def nan_denoiser(z, logsnr):
        return z * math.nan

    with pytest.raises(FloatingPointError, match=f"sampler {name!r}"):
        get_sampler(name).fn(
            nan_denoiser, _noise(2, gauss.shape, 0), uniform_t_grid(SCHED, 3),
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip


# --- grids ---------------------------------------------------------------------------------------


def test_edm_range_grids_and_shift_interior_follow_their_formulas():
    """EDM-range grids over the cosine schedule (logsnr [-15, 15]) span EDM's sigma range
    [0.002, 80], clipped to a narrower schedule; `shift_interior` keeps both ends, stays strictly
    increasing, and moves the interior to `l_0 + softplus(l + shift - l_0)` (computed here with
    `math`), which is `l + shift` far above the start."""
    lo, hi = -2 * math.log(80.0), -2 * math.log(0.002)
    edm = GridChoice("edm", edm_range=True).build(SCHED, 6)
    inv = [80 ** (1 / 7) + i / 5 * (0.002 ** (1 / 7) - 80 ** (1 / 7)) for i in range(6)]
    want = torch.tensor([-14 * math.log(v) for v in inv] + [math.inf], dtype=F64)
    torch.testing.assert_close(edm, want, rtol=1e-12, atol=1e-12)
    assert edm[0].item() == pytest.approx(lo) and edm[5].item() == pytest.approx(hi)
    uni = GridChoice("uniform_logsnr", edm_range=True).build(SCHED, 5)
    want = torch.tensor([lo + k * (hi - lo) / 4 for k in range(5)] + [math.inf], dtype=F64)
    torch.testing.assert_close(uni, want, rtol=1e-12, atol=1e-12)
    narrow = GridChoice("uniform_logsnr", edm_range=True).build(CosineSchedule(-5.0, 5.0), 3)
    torch.testing.assert_close(narrow, torch.tensor([-5.0, 0.0, 5.0, math.inf], dtype=F64))

    grid = uniform_t_grid(SCHED, 8)
    for shift in (-2.0, 2.0, -30.0):
        out = shift_interior(grid, shift)
        l0 = grid[0].item()
        interior = [l0 + math.log1p(math.exp(v + shift - l0)) for v in grid[1:-1].tolist()]
        # (torch's softplus is linear above 20: agreement to 1e-9 relative there)
        torch.testing.assert_close(out[1:-1], torch.tensor(interior, dtype=F64), rtol=1e-8, atol=0)
        assert out[0] == grid[0] and math.isinf(out[-1]) and (out[1:] > out[:-1]).all()
    far = grid[1:-1] - grid[0] > 25
    torch.testing.assert_close(shift_interior(grid, -2.0)[1:-1][far], grid[1:-1][far] - 2.0)
    built = GridChoice("uniform_t", shift=-2.0).build(SCHED, 8)
    torch.testing.assert_close(built, shift_interior(grid, -2.0), rtol=0, atol=0)
    for bad, message in (
        (lambda: GridChoice("edm", shift=1.0), "shift"),
        (lambda: GridChoice("uniform_t", edm_range=True), "EDM range"),
        (lambda: GridChoice("sqrt"), "family"),
        (lambda: uniform_t_grid(SCHED, 0), "steps"),
    ):
        with pytest.raises(ValueError, match=message):
            bad()


# --- generate(): guidance, options, counts, errors -----------------------------------------------


class CountingFactory:
    """`make_denoise(labels=None)` over the Gaussian denoiser, with a label-dependent offset for
    the conditional model; counts real calls (forward or forward+JVP) per kind."""

    def __init__(self, gauss):
        self.den = GaussianDenoiser(gauss)
        self.calls = {"cond": 0, "uncond": 0, "jvp": 0}

    def __call__(self, labels=None):
        def denoise(z, logsnr):
            self.calls["uncond" if labels is None else "cond"] += 1
            self.calls["jvp"] += unpack_dual(z).tangent is not None
            x = self.den(z.double(), logsnr.double()).to(z.dtype)
            return x if labels is None else x + 0.1 * labels.view(-1, 1, 1, 1).to(z.dtype)

        return denoise


def test_generate_with_guidance_doubles_the_evaluations_and_guides(gauss):
    """Guidance calls the conditional and the unconditional model at every step: `nfe` doubles
    and equals the real calls per batch; the samples are DDIM on the guided denoiser."""
    labels = torch.tensor([0, 1, 2, 1, 0])
    for guidance, per_batch in ((0.0, 4), (1.5, 8)):
        make = CountingFactory(gauss)
        gen = generate(make, gauss.shape, SCHED, num=5, steps=4, labels=labels,
                       guidance=guidance, batch_size=3, progress=False)  # fmt: skip
        assert gen.nfe == per_batch and gen.jvps == 0
        assert make.calls["cond"] + make.calls["uncond"] == 2 * per_batch  # two batches
        assert make.calls["uncond"] == (per_batch if guidance else 0)
    z = torch.randn(5, *gauss.shape, generator=torch.Generator().manual_seed(0))
    guided = guided_denoiser(make(labels), make(), 1.5)
    want = sample_ddim(guided, z, default_grid("ddim", SCHED, 4))
    torch.testing.assert_close(gen.samples, want, rtol=1e-6, atol=1e-6)


def test_generate_passes_sampler_options_and_counts_jvps(gauss):
    """`options` reach the sampler (DDIM(eta = 1) draws the sampler noise from the same CPU
    generator after the initial noise, reproduced here) and are recorded; a JVP sampler's
    `jvps` per sample is the real count, doubled by guidance; unknown options are named."""
    make = CountingFactory(gauss)
    gen = generate(make, gauss.shape, SCHED, num=4, steps=5, options={"eta": 1.0}, seed=3,
                   progress=False)  # fmt: skip
    rng = torch.Generator().manual_seed(3)
    z = torch.randn(4, *gauss.shape, generator=rng)
    want = sample_ddim(make(), z, default_grid("ddim", SCHED, 5), eta=1.0, generator=rng)
    torch.testing.assert_close(gen.samples, want, rtol=0, atol=0)
    plain = generate(make, gauss.shape, SCHED, num=4, steps=5, seed=3, progress=False)
    assert (plain.samples - gen.samples).abs().max() > 1e-2
    assert gen.options == {"eta": 1.0} and gen.sampler == "ddim" and gen.steps == 5
    labels = torch.tensor([0, 1, 1, 0])
    for guidance in (0.0, 2.0):
        make = CountingFactory(gauss)
        cov = generate(make, gauss.shape, SCHED, num=4, sampler="cov_ddim", steps=3,
                       options={"final": "mean"}, labels=labels, guidance=guidance,
                       progress=False)  # fmt: skip
        passes = 2 if guidance else 1
        assert (cov.nfe, cov.jvps) == (3 * passes, 2 * passes)
        assert make.calls["jvp"] == cov.jvps
    with pytest.raises(ValueError, match="'etta'.*'eta'"):
        generate(make, gauss.shape, SCHED, num=2, options={"etta": 1.0}, progress=False)


def test_generate_rejects_bad_counts_by_name(gauss):
    make = CountingFactory(gauss)
    for kwargs, name in (({"steps": 0}, "steps"), ({"num": -3}, "num"), ({"num": 0}, "num"),
                         ({"batch_size": 0}, "batch_size")):  # fmt: skip
        with pytest.raises(ValueError, match=f"^{name} must be a positive integer"):
            generate(make, gauss.shape, SCHED, **{"num": 2, **kwargs}, progress=False)
    assert sum(make.calls.values()) == 0
    with pytest.raises(ValueError, match="steps"):
        default_grid("ddim", SCHED, 0)


# --- the JVP through a net ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_tweedie_jvp_through_a_uvit_matches_finite_differences():
    """The covariance-aware samplers take their JVP under torch's math attention kernel
    (`sdpa_kernel(SDPBackend.MATH)`; the fused kernel has no forward-mode AD): through a small
    U-ViT (float64) the Hutchinson products equal those from central finite differences."""
    from difflab.nets import build_net

    torch.manual_seed(0)
    net = build_net("uvit", in_channels=1, resolution=8, channels=(8,), num_blocks=1,
                    stem="patch", patch_size=2, transformer_width=16, transformer_depth=1,
                    heads=2, emb_dim=16).double().eval()  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():  # fresh nets output zero (zero-init heads)
            p.add_(torch.randn_like(p), alpha=0.2)
    den = as_denoiser(net, "v")
    z, level = _noise(2, (1, 8, 8), 15), torch.tensor([-1.0, 2.0], dtype=F64)
    basis = BandBasis.for_shape(tuple(z.shape), None, dtype=F64)
    u = (2 * torch.randint(0, 2, z.shape, generator=torch.Generator().manual_seed(1)) - 1).double()
    x_hat, products = tweedie_probe(den, z, level, basis, u)
    v, h = basis.from_freq(u), 1e-6
    with torch.no_grad():
        jv = (den(z + h * v, level) - den(z - h * v, level)) / (2 * h)
    a, s = (t.view(-1, 1, 1, 1) for t in alpha_sigma(level))
    want = u * basis.to_freq(s**2 / a * jv)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(products, want, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(x_hat, den(z, level))
