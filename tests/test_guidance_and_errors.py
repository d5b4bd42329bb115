import math

import pytest
import torch

from difflab.diffusion.guidance import guided_denoiser
from difflab.diffusion.parameterization import broadcast_logsnr, diffuse
from difflab.diffusion.schedules import CosineSchedule
from difflab.sampling import edm_grid, get_sampler, sample_ddim, uniform_t_grid


def _cond(z, l):
    return z + 1.0


def _uncond(z, l):
    return z - 1.0


def test_guidance_zero_is_conditional_exactly():
    z = torch.randn(4, 1, 3, 3)
    l = torch.linspace(-5, 5, 4)
    torch.testing.assert_close(
        guided_denoiser(_cond, _uncond, 0.0)(z, l), _cond(z, l), rtol=0, atol=0
    )


def test_guidance_interval():
    z = torch.randn(4, 1, 3, 3)
    l = torch.tensor([-6.0, -1.0, 1.0, 6.0])
    w = 2.0
    out = guided_denoiser(_cond, _uncond, w, interval=(-2.0, 2.0))(z, l)
    inside = torch.tensor([False, True, True, False])
    guided = _cond(z, l) + w * (_cond(z, l) - _uncond(z, l))
    torch.testing.assert_close(out[inside], guided[inside])
    torch.testing.assert_close(out[~inside], _cond(z, l)[~inside], rtol=0, atol=0)


def test_guidance_interval_per_element():
    z = torch.zeros(1, 2, 1, 1)
    l = torch.tensor([[-6.0, 0.0]]).view(1, 2, 1, 1)
    out = guided_denoiser(_cond, _uncond, 1.0, interval=(-1.0, 1.0))(z, l)
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 3.0]))


def test_guidance_bad_arguments():
    with pytest.raises(ValueError, match="lo <= hi"):
        guided_denoiser(_cond, _uncond, 1.0, interval=(2.0, -2.0))
    with pytest.raises(ValueError, match="guidance must be finite"):
        guided_denoiser(_cond, _uncond, math.nan)


def test_bad_grids_are_rejected_with_the_argument_name():
    z = torch.randn(2, 1, 2, 2)
    with pytest.raises(ValueError, match="logsnrs must be strictly increasing"):
        sample_ddim(_cond, z, torch.tensor([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="logsnrs contains NaN"):
        sample_ddim(_cond, z, torch.tensor([0.0, math.nan]))
    with pytest.raises(ValueError, match="only the last level may be infinite"):
        sample_ddim(_cond, z, torch.tensor([-math.inf, 0.0]))
    with pytest.raises(ValueError, match="at least 2 levels"):
        sample_ddim(_cond, z, torch.tensor([0.0]))
    with pytest.raises(TypeError, match="logsnrs must be a torch.Tensor"):
        sample_ddim(_cond, z, [0.0, 1.0])
    with pytest.raises(ValueError, match="eta must lie in"):
        sample_ddim(_cond, z, edm_grid(3), eta=2.0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        uniform_t_grid(CosineSchedule(), 0)


def test_unknown_sampler_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown sampler 'ddmi'; known samplers: \[.*'ddim'"):
        get_sampler("ddmi")


def test_nan_and_shape_errors():
    x = torch.randn(2, 1, 2, 2)
    with pytest.raises(ValueError, match="does not broadcast"):
        diffuse(x, torch.randn_like(x), torch.zeros(3))
    from difflab.diffusion.oracle import GaussianMixtureOracle

    oracle = GaussianMixtureOracle.gaussian(torch.zeros(1, 2, 2), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="logsnr contains NaN"):
        oracle.denoise(x, torch.tensor([0.0, math.nan]))
    with pytest.raises(ValueError, match="z must have shape"):
        oracle.denoise(torch.randn(2, 1, 3, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="one logsnr per example"):
        oracle.denoise(x, torch.zeros(2, 1, 2, 2))
    with pytest.raises(TypeError, match="logsnr must be a torch.Tensor"):
        oracle.denoise(x, 0.5)
    assert broadcast_logsnr(torch.tensor(1.0), x).ndim == 0
