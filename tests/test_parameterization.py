import pytest
import torch

from difflab.diffusion.parameterization import (
    as_denoiser,
    broadcast_logsnr,
    diffuse,
    eps_from_v,
    eps_from_x,
    prediction_from_x,
    v_from_eps,
    v_from_x,
    x_from_eps,
    x_from_prediction,
    x_from_v,
)


def _levels(n, dtype):
    gen = torch.Generator().manual_seed(1)
    l = torch.empty(n, dtype=dtype).uniform_(-15, 15, generator=gen)
    l[:4] = torch.tensor([-15.0, 15.0, -14.9, 14.9], dtype=dtype)
    return l


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_round_trips_at_extreme_levels(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    l = _levels(64, dtype)
    x = torch.randn(64, 3, 4, 4, generator=gen, dtype=dtype)
    eps = torch.randn(x.shape, generator=gen, dtype=dtype)
    z = diffuse(x, eps, l)
    v = v_from_x(z, x, l)
    for got, want in [
        (x_from_v(z, v, l), x),
        (eps_from_v(z, v, l), eps),
        (v_from_eps(z, eps, l), v),
        (x_from_eps(z, eps_from_x(z, x, l), l), x),
        (x_from_v(z, v_from_eps(z, eps_from_x(z, x, l), l), l), x),
    ]:
        assert torch.isfinite(got).all()
        # the error of a conversion that divides by alpha or sigma grows like 1/min(alpha,sigma)
        torch.testing.assert_close(got, want, atol=tol * (1 + want.abs().max()), rtol=tol)
    # v is alpha eps - sigma x by definition
    from difflab.diffusion.parameterization import alpha_sigma

    a, s = alpha_sigma(l.view(-1, 1, 1, 1))
    torch.testing.assert_close(v, a * eps - s * x, atol=tol * 10, rtol=tol)


@pytest.mark.parametrize("kind", ["x", "eps", "v"])
def test_prediction_adapter_inverts(kind):
    gen = torch.Generator().manual_seed(0)
    l = _levels(16, torch.float64)
    x = torch.randn(16, 2, 3, 3, generator=gen, dtype=torch.float64)
    z = diffuse(x, torch.randn(x.shape, generator=gen, dtype=torch.float64), l)
    pred = prediction_from_x(z, x, l, kind)
    torch.testing.assert_close(x_from_prediction(z, pred, l, kind), x)


def test_per_element_logsnr_broadcasts():
    z = torch.randn(2, 5, 1, 4, 4)
    per_frame = torch.linspace(-5, 5, 10).view(2, 5, 1, 1, 1)
    assert broadcast_logsnr(per_frame, z).shape == (2, 5, 1, 1, 1)
    assert broadcast_logsnr(torch.zeros(2), z).shape == (2, 1, 1, 1, 1)
    x = torch.randn_like(z)
    eps = torch.randn_like(z)
    zt = diffuse(x, eps, per_frame)
    # frame k of example b used its own level
    a, s = torch.sigmoid(per_frame[1, 3]).sqrt(), torch.sigmoid(-per_frame[1, 3]).sqrt()
    torch.testing.assert_close(zt[1, 3], a * x[1, 3] + s * eps[1, 3])
    with pytest.raises(ValueError, match=r"logsnr of shape \(3,\) does not broadcast"):
        broadcast_logsnr(torch.zeros(3), z)
    with pytest.raises(ValueError, match="does not broadcast"):
        broadcast_logsnr(torch.zeros(2, 4, 1, 1, 1), z)


def test_as_denoiser_and_bad_prediction():
    def net(z, logsnr, labels=None):
        return torch.zeros_like(z) + (0 if labels is None else labels.view(-1, 1, 1, 1))

    z = torch.randn(3, 1, 2, 2)
    l = torch.zeros(3)
    torch.testing.assert_close(as_denoiser(net, "x")(z, l), torch.zeros_like(z))
    # v = 0 => x_hat = alpha z
    torch.testing.assert_close(as_denoiser(net, "v")(z, l), torch.sigmoid(l[0]).sqrt() * z)
    y = torch.tensor([1.0, 2.0, 3.0])
    out = as_denoiser(net, "x", labels=y)(z, torch.tensor(0.0))
    torch.testing.assert_close(out[:, 0, 0, 0], y)
    with pytest.raises(ValueError, match="prediction must be one of"):
        as_denoiser(net, "score")
