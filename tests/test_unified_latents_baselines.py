"""Unified Latents baselines of the same module: a plain Gaussian prior (closed-form rate at UL's
fixed latent noise) and the KL-autoencoder (learned encoder variance, KL to N(0, I), MSE
decoder), each against a hand-computed KL; the learned-variance rate under a diffusion prior
against the exact rate of a Gaussian latent; option errors that name their key; and stage 1 ->
stage 2 -> samples -> eval on both baselines through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from difflab.cli import main
from difflab.config import load_config
from difflab.diffusion.losses import make_weighting
from difflab.diffusion.oracle import GaussianMixtureOracle
from difflab.diffusion.schedules import make_schedule
from difflab.methods.unified_latents import (
    gaussian_rate,
    latent_bits,
    learned_variance_correction,
    mse_decode,
    stage1_metrics,
    ul_loss,
)
from difflab.nets import build_net
from difflab.train import newest_valid_checkpoint
from difflab.train.methods import method_options, run_training

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "ul_tiny.yaml"
BASE = ROOT / "configs" / "ul_mnist_base.yaml"
L0, LMIN = 5.0, -15.0
KLAE = [
    "model.kwargs.encoder_variance=learned",
    "method.kwargs.decoder=mse",
    "method.kwargs.loss_factor=2.0",
    "method.kwargs.rate_weight=0.5",
]
TINY_BASE_NET = "model.kwargs.net={arch: unet, channels: [8], num_blocks: 1, emb_dim: 16, heads: 2}"


class FixedEncoder(nn.Module):
    """Stands in for the encoder: returns a given output for every batch."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out.expand(x.shape[0], *self.out.shape[1:])


def tiny_config(kind: str, *overrides: str):
    """configs/ul_tiny.yaml with a Gaussian prior (`gaussian`) or as a KL-autoencoder (`klae`);
    a dotted override merges into the recipe's prior dict, so the prior is replaced here (the
    shipped configs/ul_mnist_gaussian_prior.yaml and configs/ul_mnist_klae.yaml state theirs)."""
    cfg = load_config(TINY, [*(KLAE if kind == "klae" else []), *overrides])
    prior = "standard_normal" if kind == "klae" else "gaussian"
    cfg.model.kwargs["prior"] = {"arch": prior}
    return cfg


def tiny(kind: str):
    cfg = tiny_config(kind)
    torch.manual_seed(0)
    return build_net(cfg.model.name, **cfg.model.kwargs), method_options(cfg)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def step(net, x, options, seed=0):
    return ul_loss(
        net, x, options, image_schedule=make_schedule("cosine"),
        weighting=make_weighting("sigmoid", bias=0.0), prediction="v",
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


def test_gaussian_kl_on_a_hand_computed_case():
    """Two dimensions: N(1, 0.25) against N(0, 1), N(0, 1) against N(0, 4)."""
    mean = torch.tensor([[1.0, 0.0]])
    logvar = torch.log(torch.tensor([[0.25, 1.0]]))
    prior_logvar = torch.log(torch.tensor([1.0, 4.0]))
    by_hand = 0.5 * (0.25 + 1 - 1 - math.log(0.25)) + 0.5 * (1 / 4 - 1 + math.log(4))
    assert by_hand == pytest.approx(1.1362944, abs=1e-6)
    assert float(gaussian_rate(mean, logvar, prior_logvar)) == pytest.approx(by_hand, rel=1e-6)
    # and against torch.distributions on random shapes
    gen = torch.Generator().manual_seed(0)
    m, lv = torch.randn(3, 2, 4, generator=gen), torch.randn(3, 2, 4, generator=gen)
    plv = torch.randn(2, 4, generator=gen)
    q = torch.distributions.Normal(m, (0.5 * lv).exp())
    p = torch.distributions.Normal(torch.zeros(2, 4), (0.5 * plv).exp())
    ref = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_rate(m, lv, plv), ref)


def test_gaussian_prior_rate_is_the_closed_form_kl_at_the_fixed_noise():
    """UL's channel `N(alpha_0 y, sigma_0^2)` against the fitted `N(0, s^2)`: the training
    rate and the evaluated bits are the KL computed by hand, with no Monte-Carlo draw; a training
    step first moves `s^2` a tenth of the way to the batch's `E_q[z_0^2]`."""
    net, options = tiny("gaussian")
    assert net.config.prior_kind == "gaussian" and options.loss_factor == 1.5
    assert not list(net.prior.parameters())  # fitted, not learned by the optimizer
    y, s2 = 0.3, 0.5
    net.encoder = FixedEncoder(torch.full((1, *net.config.latent_shape), y))
    net.prior.second_moment.fill_(s2)
    a2, sig2 = 1 / (1 + math.exp(-L0)), 1 / (1 + math.exp(L0))

    def kl(s2: float) -> float:  # one latent dimension, by hand
        return 0.5 * ((sig2 + a2 * y * y) / s2 - 1 - math.log(sig2 / s2))

    d = math.prod(net.config.latent_shape)  # 2 x 7 x 7
    net.eval()
    terms = step(net, images(3), options)
    torch.testing.assert_close(terms.prior, torch.full((3,), d * kl(s2)), rtol=1e-5, atol=0)
    torch.testing.assert_close(step(net, images(3), options, seed=7).prior, terms.prior)
    torch.testing.assert_close(terms.loss, (terms.prior + terms.decoder) / 784)
    with torch.no_grad():
        m = stage1_metrics(net, options, images(4), image_schedule=make_schedule("cosine"),
                           prediction="v", steps=1)  # fmt: skip
    assert m["bits_per_pixel"] == pytest.approx(d * kl(s2) / (math.log(2) * 784), rel=1e-5)
    assert m["bits_per_pixel_sem"] == pytest.approx(0.0, abs=1e-9)
    assert float(net.prior.second_moment.mean()) == s2  # evaluation leaves the prior alone
    net.train()
    moved = 0.9 * s2 + 0.1 * (sig2 + a2 * y * y)
    terms = step(net, images(3), options)
    torch.testing.assert_close(net.prior.second_moment, torch.full_like(net.prior.second_moment,
                                                                        moved))  # fmt: skip
    torch.testing.assert_close(terms.prior, torch.full((3,), d * kl(moved)), rtol=1e-5, atol=0)
    # at the fitted optimum s^2 = E_q[z_0^2] the rate is the Gaussian channel's capacity
    best = sig2 + a2 * y * y
    assert kl(best) == pytest.approx(0.5 * math.log(1 + math.exp(L0) * y * y), rel=1e-9)
    assert kl(best) < min(kl(s2), kl(moved))


def test_kl_autoencoder_kl_term_and_channel():
    """Encoder mean 0.5 and log-variance log 2 everywhere: the KL to N(0, I) is
    `1/2 (0.25 + 2 - 1 - log 2)` per latent dimension; `z_0 = mean + sqrt(2) eps`; the loss is
    `(beta KL + c/2 ||x - x_hat(z_0)||^2) / D`."""
    net, options = tiny("klae")
    assert net.config.prior_kind == "standard_normal"
    assert not list(net.prior.parameters()) and not list(net.prior.buffers())
    cz, h, w = net.config.latent_shape
    out = torch.cat([torch.full((1, cz, h, w), 0.5), torch.full((1, cz, h, w), math.log(2))], 1)
    net.encoder = FixedEncoder(out)
    x = images(3)
    terms = step(net, x, options, seed=4)
    per_dim = 0.5 * (0.25 + 2 - 1 - math.log(2))
    torch.testing.assert_close(terms.prior, torch.full((3,), cz * h * w * per_dim))
    eps = torch.randn(3, cz, h, w, generator=torch.Generator().manual_seed(4))
    z0 = 0.5 + math.sqrt(2) * eps
    err = (x - mse_decode(net, z0)).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(terms.decoder, 2.0 / 2 * err)
    torch.testing.assert_close(terms.loss, (0.5 * terms.prior + terms.decoder) / 784)


def test_learned_variance_rate_under_a_diffusion_prior():
    """`q(z_0 | x) = N(mu, v)` with `mu ~ N(0, lambda)`, so `z_0 ~ N(0, w)`, `w = lambda + v`.
    Under the exact denoiser of `z_0`'s law the prior + diffusion terms on a drawn `z_0` average
    `1/2 log(1 + e^{l_0} w)`; with `learned_variance_correction` (`-1/2 (l_0 + log v)`) the rate
    is `1/2 log((w + e^{-l_0}) / v)` per dimension (the derivation in the docs), which lies above
    the true KL to the prior's density `N(0, w + 2 e^{-l_0})` (the sampled top level divided by
    `alpha_0`, plus the reconstruction noise): a bound, not an equality."""
    gen = torch.Generator().manual_seed(0)
    lam = torch.tensor([0.5, 1.0, 2.0, 0.05], dtype=torch.float64)
    v = torch.tensor([0.1, 0.01, 0.3, 0.02], dtype=torch.float64)
    mu = torch.randn(6000, 4, generator=gen, dtype=torch.float64) * lam.sqrt()
    z0 = mu + v.sqrt() * torch.randn(mu.shape, generator=gen, dtype=torch.float64)
    law = GaussianMixtureOracle.gaussian(torch.zeros(4, dtype=torch.float64), lam + v)
    bits = latent_bits(law.denoise, z0, latent_logsnr=L0, logsnr_min=LMIN, pixels=1, num_t=4,
                       generator=gen)  # fmt: skip
    logvar = v.log().expand_as(mu)
    rate = bits.rate + learned_variance_correction(logvar, L0)
    w, e = lam + v, math.exp(-L0)
    expected = float(0.5 * torch.log((w + e) / v).sum())
    se = float(rate.std()) / math.sqrt(len(rate))
    assert abs(float(rate.mean()) - expected) < 4 * se, (float(rate.mean()), expected, se)
    true_kl = 0.5 * ((v + lam) / (w + 2 * e) - 1 + torch.log((w + 2 * e) / v)).sum()
    assert 0 < expected - float(true_kl) < 0.01 * expected


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"encoder_variance": "random"}, r"encoder_variance must be 'fixed' or 'learned'"),
        ({"prior": {"arch": "gaussian", "channels": [8]}}, r"prior: the 'gaussian' prior takes"),
        ({"prior": {"arch": "laplace"}}, r"unknown net 'laplace' for a UL part"),
    ],
)
def test_bad_baseline_net_options_name_the_field(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_net("unified_latents", **kwargs)


def test_bad_rate_weight_names_the_key(tmp_path, capsys):
    override = "method.kwargs.rate_weight=0"
    with pytest.raises(ValueError, match=r"method.kwargs.*rate_weight must be > 0, got 0"):
        method_options(load_config(TINY, [override]))
    assert main(["train", str(TINY), override, f"train.out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("difflab train: error:") and "rate_weight" in err
    assert main(["train", str(TINY), "model.kwargs.encoder_variance=noisy",
                 f"train.out_dir={tmp_path / 'run'}"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "encoder_variance" in err


# --------------------------------------------------------------------------- stage 1 -> stage 2


@pytest.fixture(scope="module", params=["gaussian", "klae"])
def stage1(request, tmp_path_factory) -> tuple[str, Path]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ulb") / request.param
    cfg = tiny_config(request.param, f"train.out_dir={out}", "train.steps=2")
    return request.param, run_training(cfg)


def test_stage2_trains_samples_and_evaluates_on_both_baselines(stage1, tmp_path, capsys):
    kind, s1 = stage1
    # the stage-1 model samples from its Gaussian prior (no latent denoiser)
    capsys.readouterr()
    assert main(["eval", str(s1), "--num", "4", "--ref-num", "4", "--steps", "2",
                 "--metric", "elbo", "--out", str(tmp_path / "e1.json")]) == 0  # fmt: skip
    [rec1] = json.loads((tmp_path / "e1.json").read_text())
    assert rec1["stage"] == 1 and rec1["bits_per_pixel"] > 0
    assert (
        main(["sample", str(s1), "--num", "2", "--steps", "2", "--out", str(tmp_path / "p")]) == 0
    )
    assert json.loads((tmp_path / "p" / "samples.json").read_text())["stage"] == 1
    s2 = tmp_path / "s2"
    # a KL-autoencoder's base models the drawn z_0 and may end anywhere; UL's ends at l_0
    top = "15.0" if kind == "klae" else "5.0"
    args = [
        f"train.out_dir={s2}", f"method.kwargs.stage1={s1}", "model.kwargs.latent_channels=2",
        TINY_BASE_NET, "train.steps=2", "train.ckpt_every=2", "data.batch_size=8",
        "train.progress=false", f"diffusion.schedule_kwargs.logsnr_max={top}",
    ]  # fmt: skip
    assert main(["train", str(BASE), *args]) == 0
    assert newest_valid_checkpoint(s2).step == 2
    out = tmp_path / "samples"
    assert main(["sample", str(s2), "--num", "3", "--steps", "2", "--out", str(out)]) == 0
    assert len(list(out.glob("0*.png"))) == 3
    record = json.loads((out / "samples.json").read_text())
    prior = "gaussian" if kind == "gaussian" else "standard_normal"
    assert record["stage"] == 2 and record["prior"] == prior
    assert record["encoder_variance"] == ("learned" if kind == "klae" else "fixed")
    capsys.readouterr()
    assert main(["eval", str(s2), "--num", "4", "--ref-num", "4", "--steps", "2",
                 "--out", str(tmp_path / "e2.json")]) == 0  # fmt: skip
    [rec2] = json.loads((tmp_path / "e2.json").read_text())
    assert rec2["stage"] == 2 and math.isfinite(rec2["fd-lenet"])
    # closed-form rates: the same number from stage 1 and stage 2 (same encoder, no draws)
    assert rec2["bits_per_pixel"] == pytest.approx(rec1["bits_per_pixel"], rel=1e-6)
    if kind == "gaussian":  # UL's base schedule must still end at the latent's level
        bad = [*args[:-1], "diffusion.schedule_kwargs.logsnr_max=6.0"]
        assert main(["train", str(BASE), *bad, f"train.out_dir={tmp_path / 'bad'}"]) == 2
        assert "schedule_kwargs.logsnr_max" in capsys.readouterr().err
