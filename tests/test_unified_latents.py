"""Unified Latents: the latent's noise level, the prior's loss as VDM's ELBO, the bitrate bound
against exact bits (Gaussian and Gaussian-mixture latents with their exact denoisers), gradients
into the encoder, the two training stages through `difflab train`, resume exactness, sampling and
evaluation from the CLI, and config errors that name their key."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from difflab.cli import main
from difflab.config import load_config
from difflab.diffusion.losses import make_weighting
from difflab.diffusion.oracle import GaussianMixtureOracle
from difflab.diffusion.parameterization import as_denoiser
from difflab.diffusion.schedules import make_schedule
from difflab.eval.likelihood import elbo
from difflab.methods.unified_latents import (
    ULConfig,
    latent_bits,
    latent_entropy,
    noisy_latent,
    prior_loss,
    ul_loss,
)
from difflab.nets import build_net
from difflab.train import newest_valid_checkpoint, read_metrics
from difflab.train.methods import method_options, run_training

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "ul_tiny.yaml"
BASE = ROOT / "configs" / "ul_mnist_base.yaml"
L0, LMIN = 5.0, -15.0
TINY_BASE_NET = "model.kwargs.net={arch: unet, channels: [8], num_blocks: 1, emb_dim: 16, heads: 2}"


def tiny_net(seed: int = 0, *, randomise_zero_init: bool = True):
    cfg = load_config(TINY)
    torch.manual_seed(seed)
    net = build_net(cfg.model.name, **cfg.model.kwargs)
    if randomise_zero_init:  # zero-initialised heads would hide the decoder's dependence on z_0
        with torch.no_grad():
            for p in net.parameters():
                if p.ndim > 1 and not p.any():
                    p.normal_(0.0, 0.05)
    return net, cfg


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------- the latent


def test_latent_shape_noise_level_and_entropy():
    net, _ = tiny_net()
    z = net.encode(images(3))
    assert tuple(z.shape) == (3, *net.config.latent_shape) == (3, 2, 7, 7)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    z0 = noisy_latent(z, L0, eps)
    alpha, sigma = math.sqrt(1 / (1 + math.exp(-L0))), math.sqrt(1 / (1 + math.exp(L0)))
    assert sigma == pytest.approx(0.0818, abs=1e-4)  # logsnr 5: sigma about 0.08
    torch.testing.assert_close(z0, alpha * z + sigma * eps)
    # the noise is the only randomness: a deterministic encoder and a fixed level
    torch.testing.assert_close(net.encode(images(3)), z)
    d = z[0].numel()
    normal = torch.distributions.Normal(torch.zeros(d), torch.full((d,), sigma))
    assert latent_entropy(d, L0) == pytest.approx(float(normal.entropy().sum()), rel=1e-6)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 28, 28\]"):
        net.encode(torch.zeros(2, 1, 8, 8))


def test_prior_loss_is_vdm_elbo_of_the_latents():
    """Weighting 1: the prior's loss is the existing ELBO's prior + diffusion terms (same draws),
    and its mean over draws does not depend on the schedule (cosine vs uniform-in-logsnr)."""
    net, _ = tiny_net()
    z = net.encode(images(6)).detach()
    prior = as_denoiser(net.prior, "v")
    schedule = ULConfig().build_prior_schedule()
    assert (schedule.logsnr_min, schedule.logsnr_max) == (LMIN, L0)
    with torch.no_grad():
        loss = prior_loss(prior, z, schedule, generator=torch.Generator().manual_seed(3))
        ref = elbo(prior, z, logsnr_min=LMIN, logsnr_max=L0, num_t=1, proposal=schedule,
                   bins=None, generator=torch.Generator().manual_seed(3))  # fmt: skip
    torch.testing.assert_close(loss, ref.prior + ref.diffusion, rtol=1e-6, atol=1e-5)

    # schedule independence on an exact Gaussian denoiser (cheap enough for many draws)
    oracle = GaussianMixtureOracle.gaussian(torch.zeros(2, 4, 4), torch.full((2, 4, 4), 0.5))
    y, _ = oracle.sample(4000, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    a = prior_loss(oracle.denoise, y, schedule, generator=gen)
    b = elbo(oracle.denoise, y, logsnr_min=LMIN, logsnr_max=L0, num_t=1, bins=None, generator=gen)
    diff = a - (b.prior + b.diffusion)
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(diff))


def gaussian_true_rate(mean: torch.Tensor, var: torch.Tensor) -> tuple[float, float]:
    """`(I(y; z_0), KL(q(z_1) || N(0, I)))` for `y ~ N(mean, diag(var))`, in nats."""
    info = 0.5 * torch.log1p(math.exp(L0) * var).sum()
    a2 = 1 / (1 + math.exp(-LMIN))
    v1 = a2 * var + (1 - a2)
    kl = 0.5 * (a2 * mean**2 + v1 - torch.log(v1) - 1).sum()
    return float(info), float(kl)


def test_bound_equals_true_bits_for_a_gaussian_latent_with_the_exact_denoiser():
    gen = torch.Generator().manual_seed(0)
    shape = (2, 4, 4)
    var = torch.exp(torch.empty(shape, dtype=torch.float64).uniform_(-5, 1.5, generator=gen))
    mean = 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
    oracle = GaussianMixtureOracle.gaussian(mean, var)
    y, _ = oracle.sample(4000, gen)
    bits = latent_bits(oracle.denoise, y, latent_logsnr=L0, logsnr_min=LMIN, pixels=784,
                       num_t=4, generator=gen)  # fmt: skip
    info, kl = gaussian_true_rate(mean, var)
    se = float(bits.rate.std()) / math.sqrt(len(y))
    assert abs(float(bits.rate.mean()) - (info + kl)) < 4 * se
    assert kl < 1e-3 * info  # at logsnr -15 the prior mismatch is negligible: bound = true bits
    bpp = info / (math.log(2) * 784)
    assert float(bits.bits_per_pixel.mean()) == pytest.approx(bpp, abs=4 * se / math.log(2) / 784)
    torch.testing.assert_close(bits.nelbo - bits.rate, torch.full_like(bits.rate, bits.entropy))
    # a wrong denoiser (the posterior mean of a Gaussian with 4x the variance) lies above
    wrong = GaussianMixtureOracle.gaussian(mean, 4 * var)
    worse = latent_bits(wrong.denoise, y, latent_logsnr=L0, logsnr_min=LMIN, pixels=784,
                        num_t=4, generator=gen)  # fmt: skip
    assert float(worse.rate.mean()) > info + kl + 4 * se


def test_elbo_total_is_nelbo_of_z0_up_to_the_change_of_variables():
    """The existing ELBO's reconstruction term averages to `H(q(z_0|x)) - d log alpha_0`: its
    total plus `d log alpha_0` estimates the NELBO of `z_0` (the constant derived in the docs)."""
    gen = torch.Generator().manual_seed(2)
    oracle = GaussianMixtureOracle.gaussian(torch.zeros(8), torch.full((8,), 0.3))
    y, _ = oracle.sample(6000, gen)
    e = elbo(oracle.denoise, y, logsnr_min=LMIN, logsnr_max=L0, num_t=1, bins=None, generator=gen)
    bits = latent_bits(oracle.denoise, y, latent_logsnr=L0, logsnr_min=LMIN, pixels=1,
                       num_t=1, generator=torch.Generator().manual_seed(2))  # fmt: skip
    log_alpha = 0.5 * math.log(1 / (1 + math.exp(-L0)))
    diff = e.total + 8 * log_alpha - bits.nelbo
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(diff))
    assert float(e.reconstruction.mean()) == pytest.approx(4 * (1 + math.log(2 * math.pi) - L0),
                                                           abs=0.05)  # fmt: skip


def test_bound_equals_true_bits_for_a_mixture_latent_with_the_exact_denoiser():
    """Five close components: the true `KL(q(z_0 | y) || p(z_0))` from the exact marginal of
    `z_0` (the mixture widened by the latent noise), paired with the bound on the same `y`."""
    oracle = GaussianMixtureOracle.named("unseen")
    gen = torch.Generator().manual_seed(4)
    y, _ = oracle.sample(3000, gen)
    a2 = 1 / (1 + math.exp(-L0))
    marginal = GaussianMixtureOracle(
        math.sqrt(a2) * oracle.means, a2 * oracle.variances + (1 - a2), oracle.weights, "dct"
    )
    eps = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    z0 = noisy_latent(y, L0, eps)
    d = y[0].numel()
    log_q = -0.5 * (eps**2).flatten(1).sum(1) - 0.5 * d * math.log(2 * math.pi * (1 - a2))
    true_rate = log_q - marginal.log_prob(z0)
    bits = latent_bits(oracle.denoise, y, latent_logsnr=L0, logsnr_min=LMIN, pixels=64,
                       num_t=4, generator=gen)  # fmt: skip
    diff = bits.rate - true_rate
    se = float(diff.std()) / math.sqrt(len(diff))
    assert abs(float(diff.mean())) < 4 * se, (float(diff.mean()), se)
    assert float(true_rate.mean()) > 20 * se  # the latent carries information


# --------------------------------------------------------------------------- the joint step


@pytest.mark.parametrize("decoder", ["diffusion", "mse"])
def test_gradients_reach_the_encoder_through_both_losses(decoder):
    net, cfg = tiny_net()
    options = ULConfig(decoder=decoder)
    terms = ul_loss(
        net, images(4), options, image_schedule=make_schedule("cosine"),
        weighting=make_weighting("sigmoid", bias=0.0), prediction="v",
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    enc = list(net.encoder.parameters())
    for name, term in (("prior", terms.prior), ("decoder", terms.decoder)):
        grads = torch.autograd.grad(term.sum(), enc, retain_graph=True)
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    # each loss trains its own net only: the prior's ELBO does not reach the decoder, and back
    dec = torch.autograd.grad(terms.prior.sum(), list(net.decoder.parameters()),
                              retain_graph=True, allow_unused=True)  # fmt: skip
    assert all(g is None for g in dec)
    pri = torch.autograd.grad(terms.decoder.sum(), list(net.prior.parameters()),
                              retain_graph=True, allow_unused=True)  # fmt: skip
    assert all(g is None for g in pri)
    d = 28 * 28
    torch.testing.assert_close(terms.loss, (terms.prior + terms.decoder) / d)
    # the loss factor scales the decoder's term and only it
    half = ul_loss(
        net, images(4), ULConfig(decoder=decoder, loss_factor=0.75),
        image_schedule=make_schedule("cosine"), weighting=make_weighting("sigmoid", bias=0.0),
        prediction="v", generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    torch.testing.assert_close(half.decoder, terms.decoder / 2)
    torch.testing.assert_close(half.prior, terms.prior)


def test_prior_and_decoder_draw_separate_noise():
    """The decoder's `(t, eps)` come after the latent noise and the prior's draws from the same
    generator: replaying the draws by hand reproduces both terms exactly."""
    net, _ = tiny_net()
    x = images(4)
    options = ULConfig()
    sched, w = make_schedule("cosine"), make_weighting("sigmoid", bias=0.0)
    terms = ul_loss(net, x, options, image_schedule=sched, weighting=w, prediction="v",
                    generator=torch.Generator().manual_seed(5))  # fmt: skip
    from difflab.diffusion.losses import diffusion_loss
    from difflab.methods.unified_latents import decoder_denoiser

    gen = torch.Generator().manual_seed(5)
    z = net.encode(x)
    z0 = noisy_latent(z, L0, torch.randn(z.shape, generator=gen))
    lz = prior_loss(as_denoiser(net.prior, "v"), z, options.build_prior_schedule(), generator=gen)
    lx = 1.5 * 784 * diffusion_loss(decoder_denoiser(net, z0, "v"), x, sched, w,
                                    time_sampling="stratified", generator=gen)  # fmt: skip
    torch.testing.assert_close(terms.prior, lz)
    torch.testing.assert_close(terms.decoder, lx)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("method.kwargs.latent_logsnr=-20", r"method.kwargs.*latent_logsnr=-20.*prior_logsnr_min"),
        ("method.kwargs.prior_logsnr_min=6", r"latent_logsnr=5.0 .*prior_logsnr_min"),
        ("method.kwargs.loss_factor=0", r"method.kwargs.*loss_factor must be > 0, got 0"),
        ("method.kwargs.decoder=gan", r"method.kwargs.*decoder must be 'diffusion' or 'mse'"),
        ("method.kwargs.prior_schedule=nope", r"unknown schedule 'nope'"),
        ("method.kwargs.latent_lognsr=3", r"method.kwargs.latent_lognsr"),
    ],
)
def test_bad_stage1_configs_name_the_key(override, pattern, tmp_path, capsys):
    cfg = load_config(TINY, [override, f"train.out_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match=pattern):
        method_options(cfg)
    assert main(["train", str(TINY), override, f"train.out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("difflab train: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_ul_net_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"resolution=28 must be divisible by patch_size .* = 16"):
        build_net("unified_latents", patch_size=8)
    with pytest.raises(ValueError, match=r"config field prior must be a mapping with an 'arch'"):
        build_net("unified_latents", prior={"channels": [8]})
    with pytest.raises(ValueError, match=r"decoder.in_channels is set by the unified latents"):
        build_net("unified_latents", decoder={"arch": "uvit", "in_channels": 3})


# --------------------------------------------------------------------------- training runs


def train(out: Path, *overrides: str, config: Path = TINY) -> Path:
    return run_training(load_config(config, [f"train.out_dir={out}", *overrides]))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return train(tmp_path_factory.mktemp("ul") / "s1")


def base_overrides(stage1: Path, out: Path, *more: str) -> list[str]:
    return [
        f"train.out_dir={out}", f"method.kwargs.stage1={stage1}", "model.kwargs.latent_channels=2",
        TINY_BASE_NET, "train.steps=2", "train.ckpt_every=2", "data.batch_size=8",
        "train.progress=false", *more,
    ]  # fmt: skip


def test_resume_of_the_joint_model_is_exact(stage1, tmp_path):
    """4 uninterrupted steps vs 2 steps and a resume: the same losses, net and EMA, bitwise."""
    cut = tmp_path / "cut"
    shutil.copytree(stage1, cut)
    for folder in (cut / "checkpoints").iterdir():
        if folder.name not in ("step_0000002",):
            (shutil.rmtree if folder.is_dir() else Path.unlink)(folder)
    (cut / "checkpoints" / "latest").write_text("step_0000002")
    metrics = cut / "metrics.jsonl"
    metrics.write_text("".join(
        line for line in metrics.read_text().splitlines(keepends=True)
        if json.loads(line).get("step", 0) <= 2 and json.loads(line).get("event") != "end"
    ))  # fmt: skip
    run_training(load_config(TINY, [f"train.out_dir={cut}"]), resume=True)
    a, b = newest_valid_checkpoint(stage1), newest_valid_checkpoint(cut)
    assert a.step == b.step == 4
    for name in ("model", *(n.removesuffix(".safetensors") for n in a.state["manifest"]
                            if n.startswith("ema_"))):  # fmt: skip
        ta, tb = a.tensors(name), b.tensors(name)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name

    def losses(run):
        return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}

    assert losses(stage1) == losses(cut) and len(losses(stage1)) == 4


def test_stage2_trains_samples_and_evaluates_from_the_cli(stage1, tmp_path, capsys):
    s2 = tmp_path / "s2"
    assert main(["train", str(BASE), *base_overrides(stage1, s2)]) == 0
    assert newest_valid_checkpoint(s2).step == 2
    out = tmp_path / "samples"
    assert main(["sample", str(s2), "--num", "5", "--steps", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(5)] + [
        "grid.png"
    ]
    record = json.loads((out / "samples.json").read_text())
    assert record["stage"] == 2 and record["num"] == 5 and record["latent_logsnr"] == L0
    capsys.readouterr()
    assert main(["eval", str(s2), "--num", "6", "--ref-num", "6", "--steps", "2",
                 "--out", str(tmp_path / "eval.json")]) == 0  # fmt: skip
    [rec] = json.loads((tmp_path / "eval.json").read_text())
    assert rec["stage"] == 2 and rec["num_images"] == 6
    assert 0 < rec["psnr"] < 60 and rec["bits_per_pixel"] > 0 and math.isfinite(rec["fd-lenet"])
    printed = capsys.readouterr().out
    assert "psnr" in printed and "bits_per_pixel" in printed


@pytest.mark.parametrize(
    "override, pattern",
    [
        (
            "diffusion.schedule_kwargs.logsnr_max=6.0",
            r"schedule_kwargs.logsnr_max: the base schedule must end at the latent's level 5.0",
        ),
        ("model.kwargs.latent_channels=3", r"model.kwargs: the base net's latent shape \(3, 7"),
    ],
)
def test_bad_stage2_configs_name_the_key(stage1, tmp_path, override, pattern, capsys):
    overrides = [o for o in base_overrides(stage1, tmp_path / "s2") if "latent_channels" not in o
                 or "latent_channels" not in override]  # fmt: skip
    assert main(["train", str(BASE), *overrides, override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("difflab train: error:") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(pattern, err), err


def test_stage2_names_a_missing_stage1(tmp_path, capsys):
    args = base_overrides(tmp_path / "nowhere", tmp_path / "s2")
    assert main(["train", str(BASE), *args]) == 2
    assert "stage-1 checkpoint" in capsys.readouterr().err


def test_latent_sampling_stops_at_the_latent_level():
    """Base -> `z_0`: the latent grid ends at `l_0`, so with an exact denoiser the samples have
    the marginal of `z_0` (variance `alpha_0^2 lambda + sigma_0^2`), not that of `z_clean`."""
    from difflab.methods.unified_latents import latent_grid, sample_latents

    lam = torch.logspace(-2, 0.5, 8, dtype=torch.float64).view(2, 2, 2)
    oracle = GaussianMixtureOracle.gaussian(torch.zeros(2, 2, 2), lam)
    schedule = ULConfig().build_prior_schedule()
    grid = latent_grid(schedule, 128)
    assert float(grid[-1]) == L0 and torch.isfinite(grid).all()
    # 128 DDIM steps: DDIM's own variance deficit (docs: about 16% at 16 steps) is down to ~2%
    z0 = sample_latents(oracle.denoise, (2, 2, 2), schedule, num=8000, steps=128,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    a2 = 1 / (1 + math.exp(-L0))
    expected = a2 * lam + (1 - a2)
    torch.testing.assert_close(z0.double().var(0), expected, rtol=0.07, atol=0.0)
    # the smallest dim (lambda = 0.01) keeps sigma_0^2 = 0.0067 on top: a z_hat would not
    assert float(z0.double().var(0).flatten()[0] / lam.flatten()[0]) > 1.4
