"""The data-range cap of the covariance-aware samplers (`data_bound`, `bounded_trace`): the
exact posterior of bounded data always satisfies it (Bhatia-Davis), it leaves such covariances
alone, and it removes the failure a trained net's Jacobian error at high noise causes
(docs/methods/cov_ddim.md, "Trained nets: the Jacobian at high noise")."""

import pytest
import torch

from difflab.diffusion.parameterization import alpha_sigma, broadcast_logsnr, level_for
from difflab.diffusion.schedules import CosineSchedule
from difflab.sampling import default_grid, generate, get_sampler, sample_cov_ddim
from difflab.sampling.cov_ddim import bounded_trace, calibrate_posterior_spectrum

SHAPE = (1, 4, 4)


def _atoms(k: int = 5, seed: int = 0) -> torch.Tensor:
    """`k` point masses in `[-1, 1]^d`, some pixels at the bounds (a 'background')."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(k, *SHAPE, generator=gen, dtype=torch.float64) * 2 - 1
    x[:, :, :2, :] = -1.0
    return x


def _posterior(atoms: torch.Tensor, z: torch.Tensor, logsnr: torch.Tensor):
    """Exact posterior weights over the atoms and its mean, for `z = alpha x + sigma eps`."""
    alpha, sigma = alpha_sigma(broadcast_logsnr(logsnr, z))
    diff = z[:, None] - alpha[:, None] * atoms[None]
    logits = -(diff**2).flatten(2).sum(2) / (2 * sigma.flatten(1) ** 2)
    w = torch.softmax(logits, dim=1)
    return w, torch.einsum("bk,k...->b...", w, atoms)


def _denoiser(atoms: torch.Tensor, jacobian_error: float = 0.0):
    """The exact posterior mean, plus `jacobian_error * z` below logsnr -5 (a Jacobian off by a
    multiple of I at high noise only, which Tweedie's `sigma^2 / alpha` amplifies: e^7.5 ~ 1800
    at logsnr -15; the mean itself stays nearly exact there)."""

    def denoise(z, logsnr):
        level = level_for(logsnr, z)
        noisy = (broadcast_logsnr(level, z) < -5).to(z.dtype)
        return _posterior(atoms, z, level)[1] + jacobian_error * noisy * z

    return denoise


@pytest.mark.parametrize("level", [-15.0, -4.0, 0.0, 3.0, 8.0])
def test_exact_posterior_of_bounded_data_obeys_the_bound(level):
    atoms = _atoms()
    gen = torch.Generator().manual_seed(1)
    x = atoms[torch.randint(0, len(atoms), (256,), generator=gen)]
    lvl = torch.full((256,), level, dtype=torch.float64)
    alpha, sigma = alpha_sigma(broadcast_logsnr(lvl, x))
    z = alpha * x + sigma * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    w, mean = _posterior(atoms, z, lvl)
    var = torch.einsum("bk,k...->b...", w, atoms**2) - mean**2  # per-pixel posterior variance
    assert bool((var <= 1 - mean**2 + 1e-12).all())  # Bhatia-Davis, pixel by pixel
    # the cap leaves the exact diagonal alone, whatever basis the trace is taken in
    assert torch.equal(bounded_trace(var, mean, 1.0), var)


def test_bounded_trace_scales_to_the_budget_only_when_over_it():
    x_hat = torch.tensor([[[[0.0, 0.5], [-1.0, 1.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    budget = torch.tensor([1.0 + 0.75, 4.0])  # sum of 1 - x_hat^2 per example
    c = torch.full((1, 1, 2, 2), 2.0)  # batch-pooled: trace 8, over both budgets
    capped = bounded_trace(c, x_hat, 1.0)
    assert capped.shape == (2, 1, 2, 2)
    torch.testing.assert_close(capped.flatten(1).sum(1), budget)
    small = torch.full((2, 1, 2, 2), 0.1)
    assert torch.equal(bounded_trace(small, x_hat, 1.0), small)
    torch.testing.assert_close(bounded_trace(c, x_hat, 2.0).flatten(1).sum(1),
                               torch.tensor([8.0, 8.0]))  # fmt: skip  # budget 16 - |x|^2 > 8


def _run(denoise, data_bound):
    """cov_ddim at 8 steps of its default grid: the per-dimension variance of the state after the
    first step (from logsnr -15), and the samples."""
    grid = default_grid("cov_ddim", CosineSchedule(), 8)
    z = torch.randn(2000, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    states = []
    gen = torch.Generator().manual_seed(1)
    x = sample_cov_ddim(denoise, z, grid, data_bound=data_bound, generator=gen,
                        callback=lambda s: states.append(s["z"]))  # fmt: skip
    return float(states[0].var()), x


def _atom_weight_tv(x, atoms):
    """Total variation between the share of samples nearest each atom and the uniform weights."""
    nearest = (x[:, None] - atoms[None]).flatten(2).norm(dim=2).argmin(1)
    share = torch.bincount(nearest, minlength=len(atoms)).double() / len(x)
    return float((share - 1 / len(atoms)).abs().sum() / 2)


def test_data_bound_removes_the_high_noise_jacobian_failure():
    atoms = _atoms()
    exact_var, exact = _run(_denoiser(atoms), None)
    assert 0.8 < exact_var < 1.2  # the marginal at the second level has unit-order variance
    broken_var, broken = _run(_denoiser(atoms, 0.05), None)
    capped_var, capped = _run(_denoiser(atoms, 0.05), 1.0)
    assert broken_var > 3 * exact_var  # the first draw over-disperses the state...
    assert capped_var < 1.1 * exact_var
    exact_tv = _atom_weight_tv(exact, atoms)  # sampling error of 2000 draws, ~0.01-0.02
    assert _atom_weight_tv(broken, atoms) > 3 * exact_tv  # ...and skews the atoms' weights
    assert _atom_weight_tv(capped, atoms) < exact_tv + 0.02


def test_data_bound_none_or_loose_is_the_uncapped_sampler():
    atoms = _atoms()
    grid = default_grid("cov_ddim", CosineSchedule(), 6)
    z = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def run(**kw):
        return sample_cov_ddim(
            _denoiser(atoms), z, grid, generator=torch.Generator().manual_seed(3), **kw
        )

    assert torch.equal(run(), run(data_bound=None))
    torch.testing.assert_close(run(), run(data_bound=1e6), rtol=0, atol=0)
    with pytest.raises(ValueError, match="data_bound must be positive"):
        run(data_bound=0.0)


def test_generate_passes_the_data_range_to_samplers_that_take_it():
    atoms = _atoms().float()

    def make(labels=None):
        return _denoiser(atoms)

    common = {"num": 4, "steps": 3, "progress": False, "data_bound": 1.0}
    cov = generate(make, SHAPE, CosineSchedule(), sampler="cov_ddim", **common)
    assert cov.options == {"data_bound": 1.0}
    own = generate(
        make, SHAPE, CosineSchedule(), sampler="cov_ddim", options={"data_bound": 2.0}, **common
    )
    assert own.options == {"data_bound": 2.0}  # the caller's choice wins
    assert generate(make, SHAPE, CosineSchedule(), sampler="ddim", **common).options == {}
    assert "data_bound" in get_sampler("cov_dpmpp_2m").options


def test_calibrated_table_is_capped_like_the_sampler():
    atoms, levels = _atoms(), torch.tensor([-15.0, -3.0, 3.0], dtype=torch.float64)

    def table(data_bound, error=0.05):
        gen = torch.Generator().manual_seed(4)
        return calibrate_posterior_spectrum(_denoiser(atoms, error), SHAPE, levels, num=256,
                                            data_bound=data_bound, generator=gen,
                                            dtype=torch.float64).values  # fmt: skip

    d = atoms[0].numel()
    assert float(table(None)[0].sum()) > 10 * d  # ~1800 x 0.05 per dimension
    capped, exact = table(1.0), table(None, error=0.0)
    assert float(capped[0].sum()) <= d  # sum_i (1 - x_hat_i^2) <= d
    # below logsnr -5 the test denoiser is exact: the capped table's later levels are the exact
    # denoiser's (up to the Hutchinson noise of 256 probes)
    torch.testing.assert_close(
        capped[1:].flatten(1).sum(1), exact[1:].flatten(1).sum(1), rtol=0.2, atol=0
    )


def test_generate_clips_the_last_draw_to_the_data_range():
    atoms = _atoms().float()  # a third of the pixels at -1: a last draw around them leaves [-1, 1]
    common = {"num": 64, "steps": 4, "sampler": "addim", "progress": False}
    free = generate(lambda labels=None: _denoiser(atoms), SHAPE, CosineSchedule(), **common)
    assert float(free.samples.abs().max()) > 1.0
    held = generate(lambda labels=None: _denoiser(atoms), SHAPE, CosineSchedule(), data_bound=1.0,
                    **common)  # fmt: skip
    torch.testing.assert_close(held.samples, free.samples.clamp(-1, 1))


def test_api_sample_caps_cov_ddim_with_the_model_range():
    from difflab import api

    model = api.load(api.shipped_model_path())
    gen = api.sample(model, num=2, sampler="cov_ddim", steps=2, progress=False)
    assert gen.options == {"data_bound": model.clip_x} and model.clip_x == 1.0
    assert float(gen.samples.abs().max()) <= 1.0
    off = api.sample(model, num=2, sampler="cov_ddim", steps=2, options={"data_bound": None},
                     progress=False)  # fmt: skip
    assert off.options == {"data_bound": None}
