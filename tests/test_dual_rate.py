"""Dual-Rate Diffusion: the encoder's exposed features, the composite net, the refresh sampler
(feature reuse counted), the training pair from one trajectory, the CLI path and the MMD student
through the moment-matching code."""

from __future__ import annotations

import argparse
import copy
import math

import pytest
import torch
from tiny_run import TINY, fast_overrides

from difflab import api
from difflab.config import load_config
from difflab.diffusion.parameterization import alpha_sigma, as_denoiser
from difflab.diffusion.schedules import make_schedule
from difflab.methods.distill import Teacher, build_distillation, distill_config
from difflab.methods.dual_rate import (
    DualRateOptions,
    dual_rate_times,
    trajectory_pair,
    translate,
)
from difflab.methods.moment_matching import MMDConfig
from difflab.nets import DualRateConfig, DualRateNet, EncoderFeatures, UViT, build_net
from difflab.nets.cost import forward_costs
from difflab.sampling import (
    DualRateDenoise,
    DualRateFactory,
    generate,
    get_sampler,
    refresh_schedule,
    sample_ddim,
    sample_ddpm,
    sample_dual_rate_ddpm,
    uniform_t_grid,
)
from difflab.train import run_training

SMALL = dict(in_channels=1, resolution=8, channels=(8,), num_blocks=1, transformer_width=16,
             transformer_depth=1, heads=2, emb_dim=16, light_channels=(8, 8), light_emb_dim=16,
             num_classes=3)  # fmt: skip
SCHEDULE = make_schedule("cosine")


def random_net(**overrides) -> DualRateNet:
    """A small dual-rate net with every weight perturbed (zero-initialised heads would make
    every identity below trivially true)."""
    torch.manual_seed(0)
    net = build_net("dual_rate", **{**SMALL, **overrides}).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


class Counting:
    """A `DualRateDenoise` that counts its encoder and light calls."""

    def __init__(self, inner: DualRateDenoise):
        self.inner, self.encodes, self.lights, self.seen = inner, 0, 0, []

    def encode(self, z, logsnr):
        self.encodes += 1
        return self.inner.encode(z, logsnr)

    def denoise_light(self, z, logsnr, features):
        self.lights += 1
        self.seen.append(features)
        return self.inner.denoise_light(z, logsnr, features)


# --- nets ----------------------------------------------------------------------------------------


def test_uvit_features_are_the_trunk_of_forward_and_leave_it_unchanged():
    torch.manual_seed(1)
    net = UViT(DualRateConfig(**SMALL).encoder_config()).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    z, logsnr, labels = torch.randn(2, 1, 8, 8), torch.tensor([-3.0, 2.0]), torch.tensor([0, 2])
    before = net(z, logsnr, labels)
    feats = net.features(z, logsnr, labels)
    assert [(f.shape[1], f.shape[-1]) for f in feats] == net.feature_shapes() == [(16, 2), (8, 4)]
    torch.testing.assert_close(net.head(feats[-1]), before, rtol=0, atol=0)
    torch.testing.assert_close(net(z, logsnr, labels), before, rtol=0, atol=0)  # hooks removed
    assert not any(m._forward_hooks for m in net.modules())


def test_composite_forward_is_encode_then_light_and_tau_matters():
    net = random_net()
    z, logsnr, labels = torch.randn(3, 1, 8, 8), torch.tensor([-4.0, 0.0, 5.0]), torch.arange(3)
    with torch.no_grad():
        feats = net.encode(z, logsnr, labels)
        composed = net(z, logsnr, labels)
        assert isinstance(feats, EncoderFeatures) and len(feats.maps) == 2
        torch.testing.assert_close(net.denoise_light(z, logsnr, feats, labels), composed,
                                   rtol=0, atol=0)  # fmt: skip
        z_tau, l_tau = torch.randn_like(z), logsnr - 2
        stale = net(z, logsnr, labels, z_tau=z_tau, logsnr_tau=l_tau)
        torch.testing.assert_close(
            stale, net.denoise_light(z, logsnr, net.encode(z_tau, l_tau, labels), labels)
        )
        assert not torch.allclose(stale, composed)
    with pytest.raises(ValueError, match="both z_tau and logsnr_tau"):
        net(z, logsnr, z_tau=z)
    with pytest.raises(TypeError, match="EncoderFeatures"):
        net.denoise_light(z, logsnr, feats.maps)
    with pytest.raises(ValueError, match="features are for a batch"):
        net.denoise_light(z[:2], logsnr[:2], feats)


def test_feature_dropout_zeroes_all_features_of_an_example():
    net = random_net(feature_dropout=0.5, num_classes=0)
    z, logsnr = torch.randn(64, 1, 8, 8), torch.zeros(64)
    unfed = copy.deepcopy(net)  # its projections output zero: the light net without features
    for p in unfed.light.proj.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        feats = net.encode(z, logsnr)
        fresh, empty = net.denoise_light(z, logsnr, feats), unfed.denoise_light(z, logsnr, feats)
        net.train()
        torch.manual_seed(3)
        out = net.denoise_light(z, logsnr, feats)
    dropped = (out - empty).flatten(1).abs().amax(1) == 0
    kept = (out - fresh).flatten(1).abs().amax(1) == 0
    assert bool((dropped ^ kept).all())  # each example: all features or none
    assert 16 < int(dropped.sum()) < 48


def test_last_level_features_and_config_errors():
    net = random_net(feature_levels="last")
    assert list(net.light.proj) == ["0"]
    with pytest.raises(ValueError, match="light_channels needs len\\(channels\\) \\+ 1 = 2"):
        DualRateConfig(**{**SMALL, "light_channels": (8,)})
    with pytest.raises(ValueError, match="feature_levels"):
        DualRateConfig(**{**SMALL, "feature_levels": "first"})
    with pytest.raises(ValueError, match="feature_dropout"):
        DualRateConfig(**{**SMALL, "feature_dropout": 1.0})


# --- the sampler ---------------------------------------------------------------------------------


def test_refresh_every_one_is_plain_ancestral_sampling_on_the_composed_net():
    net = random_net()
    labels = torch.tensor([0, 1, 2, 1])
    dual = DualRateDenoise.from_net(net, "v", 1.0, labels=labels)
    plain = as_denoiser(net, "v", 1.0, labels=labels)
    grid = uniform_t_grid(SCHEDULE, 6)
    z = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        ref = sample_ddpm(plain, z, grid, generator=torch.Generator().manual_seed(5))
        got = sample_dual_rate_ddpm(dual, z, grid, refresh_every=1,
                                    generator=torch.Generator().manual_seed(5))  # fmt: skip
        default = sample_dual_rate_ddpm(dual, z, grid, generator=torch.Generator().manual_seed(5))
        stale = sample_dual_rate_ddpm(dual, z, grid, refresh_every=2,
                                      generator=torch.Generator().manual_seed(5))  # fmt: skip
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(default, ref, rtol=0, atol=0)
    assert not torch.allclose(stale, ref)


@pytest.mark.parametrize("steps,k", [(1, 1), (7, 1), (7, 2), (7, 3), (8, 4), (8, 8), (5, 9)])
def test_encoder_runs_ceil_steps_over_k_times_and_features_are_reused(steps, k):
    net = random_net()
    counting = Counting(DualRateDenoise.from_net(net, "v"))
    grid = uniform_t_grid(SCHEDULE, steps)
    with torch.no_grad():
        sample_dual_rate_ddpm(counting, torch.randn(2, 1, 8, 8), grid, refresh_every=k,
                              generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert counting.encodes == math.ceil(steps / k)
    assert counting.lights == steps
    # step i uses the features of step k * (i // k)
    assert all(counting.seen[i] is counting.seen[k * (i // k)] for i in range(steps))
    spec = get_sampler("dual_rate_ddpm")
    assert spec.part_calls(steps, refresh_every=k) == {"encode": counting.encodes,
                                                      "denoise_light": steps}  # fmt: skip
    assert spec.calls(grid, refresh_every=k) == (steps, 0)


def test_an_explicit_refresh_schedule_is_followed():
    counting = Counting(DualRateDenoise.from_net(random_net(), "v"))
    with torch.no_grad():
        z, grid = torch.randn(2, 1, 8, 8), uniform_t_grid(SCHEDULE, 8)
        gen = torch.Generator().manual_seed(0)
        sample_dual_rate_ddpm(counting, z, grid, refresh=[0, 1, 5], generator=gen)
    assert counting.encodes == 3
    owners = [0, 1, 1, 1, 1, 5, 5, 5]
    assert all(counting.seen[i] is counting.seen[j] for i, j in enumerate(owners))
    assert get_sampler("dual_rate_ddpm").part_calls(8, refresh=[0, 1, 5])["encode"] == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(refresh_every=0), "refresh_every must be a positive integer, got 0"),
        (dict(refresh_every=-2), "refresh_every must be a positive integer"),
        (dict(refresh_every=1.5), "refresh_every must be a positive integer, got 1.5"),
        (dict(refresh_every=True), "refresh_every must be a positive integer"),
        (dict(refresh=[1, 3]), "refresh must start at step 0"),
        (dict(refresh=[0, 3, 3]), "refresh must be strictly increasing"),
        (dict(refresh=[0, 8]), "refresh indices must be < steps=8"),
        (dict(refresh=[]), "refresh must be a non-empty sequence of integers"),
        (dict(refresh=[0, 2.0]), "non-empty sequence of integers"),
        (dict(refresh="0,2"), "refresh must be a sequence of step indices"),
        (dict(refresh=[0], refresh_every=2), "give refresh_every or refresh"),
    ],
)
def test_bad_refresh_settings_are_named_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        refresh_schedule(8, **kwargs)
    dual = DualRateDenoise.from_net(random_net(), "v")
    with pytest.raises(ValueError, match=match):
        sample_dual_rate_ddpm(dual, torch.randn(1, 1, 8, 8), uniform_t_grid(SCHEDULE, 8), **kwargs)


def test_ddim_on_the_dual_rate_model_is_the_composed_net_and_cannot_reuse_features():
    """Documented: every sampler but dual_rate_ddpm runs the composed net (refresh every step);
    asking DDIM (or any other sampler) for stale features is refused."""
    net = random_net()
    dual, plain = DualRateDenoise.from_net(net, "v"), as_denoiser(net, "v")
    grid, z = uniform_t_grid(SCHEDULE, 4), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(sample_ddim(dual, z, grid), sample_ddim(plain, z, grid),
                                   rtol=0, atol=0)  # fmt: skip
    make = DualRateFactory(net, "v")
    for sampler in ("ddim", "dpmpp_2m", "ddpm"):
        with pytest.raises(
            ValueError, match=f"unknown option 'refresh_every' for sampler '{sampler}'"
        ):
            generate(make, (1, 8, 8), SCHEDULE, num=2, sampler=sampler, steps=4,
                     options={"refresh_every": 2}, progress=False)  # fmt: skip
    with torch.no_grad():  # a plain Denoise has no features to reuse: `ddpm` for any K
        ddpm = sample_ddpm(plain, z, grid, generator=torch.Generator().manual_seed(2))
        single = sample_dual_rate_ddpm(plain, z, grid, refresh_every=3,
                                       generator=torch.Generator().manual_seed(2))  # fmt: skip
    torch.testing.assert_close(single, ddpm, rtol=0, atol=0)


@pytest.mark.parametrize("flags", [["--refresh-every", "2"], ["--refresh", "0,2"]])
def test_cli_refresh_flags_need_the_dual_rate_sampler(flags):
    from difflab.cli.args import add_sampling_arguments, sampling_kwargs

    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser)
    with pytest.raises(ValueError, match="--refresh.* needs --sampler dual_rate_ddpm"):
        sampling_kwargs(parser.parse_args(["--sampler", "ddim", *flags]))
    ok = sampling_kwargs(parser.parse_args(["--sampler", "dual_rate_ddpm", *flags]))
    assert ok["options"] in ({"refresh_every": 2}, {"refresh": [0, 2]})


# --- training ------------------------------------------------------------------------------------


def test_times_keep_tau_at_or_above_t_with_the_given_share_of_tau_equal_t():
    opts = DualRateOptions(max_gap=0.2, p_same=0.3)
    t, tau = dual_rate_times(20000, opts, generator=torch.Generator().manual_seed(0))
    gap = tau - t
    assert bool((gap >= 0).all()) and bool((tau <= 1).all())
    assert bool((gap <= 0.2 + 1e-12).all())
    same = (gap == 0).double().mean().item()
    assert abs(same - 0.3) < 0.02  # 4.5 standard errors; t + gap > 1 clamps add ~0.003
    t, tau = dual_rate_times(8, DualRateOptions(p_same=1.0), time_sampling="stratified")
    torch.testing.assert_close(tau, t, rtol=0, atol=0)


def test_the_pair_is_one_forward_trajectory():
    """`z_t ~ q(z_t | x)` and `z_tau = (a_tau / a_t) z_t + noise`: the moments of a forward chain
    x -> z_t -> z_tau (closed form), from many draws of one pixel."""
    n = 200_000
    x = torch.full((n, 1), 0.6, dtype=torch.float64)
    l_t, l_tau = torch.tensor(1.0, dtype=torch.float64), torch.tensor(-1.5, dtype=torch.float64)
    z_tau, z_t = trajectory_pair(x, l_tau, l_t, generator=torch.Generator().manual_seed(0))
    a_t, s_t = alpha_sigma(l_t)
    a_tau, s_tau = alpha_sigma(l_tau)
    tol = 5 / math.sqrt(n)
    assert abs(z_t.mean() - a_t * 0.6) < tol and abs(z_tau.mean() - a_tau * 0.6) < tol
    assert abs(z_t.var() - s_t**2) < 2 * tol and abs(z_tau.var() - s_tau**2) < 2 * tol
    cov = ((z_t - z_t.mean()) * (z_tau - z_tau.mean())).mean()
    assert abs(cov - (a_tau / a_t) * s_t**2) < 2 * tol
    same_tau, same_t = trajectory_pair(x[:4], l_t, l_t, generator=torch.Generator())
    torch.testing.assert_close(same_t, same_tau, rtol=0, atol=0)


def test_translation_is_a_shifted_crop_of_the_edge_padded_image():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    assert translate(x, 0) is x
    out = translate(x, 2, generator=torch.Generator().manual_seed(4))
    shift = torch.randint(0, 5, (2, 2), generator=torch.Generator().manual_seed(4))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for b in range(2):
        dy, dx = int(shift[0, b]), int(shift[1, b])
        torch.testing.assert_close(out[b], padded[b, :, dy : dy + 5, dx : dx + 6])


def test_options_errors_name_the_field():
    for kwargs, match in [(dict(max_gap=1.5), "max_gap"), (dict(p_same=-0.1), "p_same"),
                          (dict(translate=-1), "translate")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            DualRateOptions(**kwargs)


DUAL_TINY = [
    "model.name=dual_rate",
    "model.kwargs.light_channels=[8,16]",
    "model.kwargs.light_emb_dim=16",
    "method.name=dual_rate",
    "method.kwargs.translate=1",
]


@pytest.fixture(scope="module")
def tiny_dual_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dual") / "run"
    torch.set_num_threads(1)
    cfg = load_config(TINY, [*fast_overrides(16), *DUAL_TINY, "train.steps=3",
                             f"train.out_dir={out}"])  # fmt: skip
    return run_training(cfg)


def test_tiny_end_to_end_train_then_sample_with_refresh(tiny_dual_run, tmp_path):
    from difflab.cli import main

    model = api.load(tiny_dual_run)
    assert isinstance(model.net, DualRateNet)
    kwargs = dict(sampler="dual_rate_ddpm", steps=6, options={"refresh_every": 4}, progress=False)
    gen, record = api.sample_to_folder(model, tmp_path / "s", num=4, **kwargs)
    assert gen.samples.shape == (4, 1, 8, 8) and torch.isfinite(gen.samples).all()
    costs = forward_costs(model.net)
    assert record["calls"] == {"encode": 2, "denoise_light": 6}
    expected = 2 * costs["encode"] + 6 * costs["denoise_light"]
    assert record["gflops_per_sample"] == round(expected / 1e9, 6)
    ddim = api.sample(model, num=2, sampler="ddim", steps=3, progress=False)
    assert torch.isfinite(ddim.samples).all()
    code = main(["sample", str(tiny_dual_run), "--sampler", "dual_rate_ddpm", "--steps", "4",
                 "--refresh-every", "2", "--num", "2", "--out", str(tmp_path / "cli")])  # fmt: skip
    assert code == 0


def test_mmd_student_of_the_dual_rate_model_keeps_its_encoder_frozen_at_first(
    tiny_dual_run, tmp_path
):
    from difflab.data import make_dataset

    model = api.load(tiny_dual_run)
    d = model.config.diffusion
    teacher = Teacher(model.net, d.prediction, model.schedule, d.build_weighting())
    dataset = make_dataset(model.config.data.name, model.config.data.split)
    frozen_until = 2
    encoder0 = {k: v.clone() for k, v in model.net.encoder.state_dict().items()}
    light0 = {k: v.clone() for k, v in model.net.light.state_dict().items()}
    cfg = distill_config(model.config, tmp_path / "mmd",
                         [*fast_overrides(8), "train.steps=2", "optim.warmup_steps=0",
                          "optim.lr=1e-2"])  # fmt: skip
    method = MMDConfig(2, "alternating", freeze_encoder_steps=frozen_until)
    torch.manual_seed(0)
    trainer = build_distillation(method, teacher, model.net, dataset, cfg)
    trainer.fit()
    # updates alternate auxiliary (step 0), generator (step 1), auxiliary (step 2)...: the
    # generator update at step 1 < 2 leaves the student's encoder as the teacher's
    two = trainer.net
    assert all(torch.equal(v, encoder0[k]) for k, v in two.encoder.state_dict().items())
    assert not all(torch.equal(v, light0[k]) for k, v in two.light.state_dict().items())
    cfg = distill_config(model.config, tmp_path / "mmd_free",
                         [*fast_overrides(8), "train.steps=2", "optim.warmup_steps=0",
                          "optim.lr=1e-2"])  # fmt: skip
    torch.manual_seed(0)
    free = build_distillation(MMDConfig(2, "alternating"), teacher, model.net, dataset, cfg)
    free.fit()
    assert not all(torch.equal(v, encoder0[k]) for k, v in free.net.encoder.state_dict().items())


def test_the_api_refuses_dual_rate_sampling_of_a_single_rate_or_guided_model(tiny_dual_run):
    model = api.load(tiny_dual_run)
    with pytest.raises(ValueError, match="dual_rate_ddpm does not support guidance"):
        api.sample(model, num=2, sampler="dual_rate_ddpm", steps=2, label=1, guidance=1.0)
    single = api.load(api.shipped_model_path())
    with pytest.raises(ValueError, match="dual_rate_ddpm needs a dual-rate model"):
        api.sample(single, num=2, sampler="dual_rate_ddpm", steps=2)
