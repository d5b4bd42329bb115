"""Rolling Diffusion (methods/rolling.py, docs/methods/rolling.md): local-time schedules at their
end points, the init sweep ending in the rolling state, the levels each frame passes, per-frame
levels reaching the denoiser and the net, the exact Gaussian check for both samplers, bad
shapes and windows, and `difflab train` / `difflab sample` on a tiny Kolmogorov cache."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from difflab.cli import main as cli_main
from difflab.data.cache import data_dir
from difflab.data.kolmogorov import FlowParams, KolmogorovData, prepare_kolmogorov
from difflab.diffusion.losses import make_weighting
from difflab.diffusion.parameterization import as_denoiser
from difflab.diffusion.schedules import CosineSchedule
from difflab.methods.rolling import (
    GaussianFrames,
    RollingOptions,
    block_levels,
    block_nfe,
    frame_logsnr,
    init_levels,
    init_local_time,
    rolling_levels,
    rolling_local_time,
    rolling_loss,
    rolling_nfe,
    sample_blocks,
    sample_rolling,
    sequence_loss,
    training_local_time,
)
from difflab.nets import build_net

SCHEDULE = CosineSchedule()
SAMPLERS = {"rolling": sample_rolling, "block": sample_blocks}


# ----------------------------------------------------------------------------- local time


@pytest.mark.parametrize("window", [1, 2, 5])
def test_rolling_schedule_end_points_and_shift(window):
    k = torch.arange(window, dtype=torch.float64)
    at0, at1 = rolling_local_time(0.0, window), rolling_local_time(1.0, window)
    assert at0[0] == 0 and at1[-1] == 1  # front frame clean, back frame pure noise
    torch.testing.assert_close(at0, k / window, rtol=0, atol=0)
    torch.testing.assert_close(at1, (k + 1) / window, rtol=0, atol=0)
    # after emitting the front frame, the window at t = 0 is the window at t = 1, shifted by one
    torch.testing.assert_close(at0[1:], at1[:-1], rtol=0, atol=0)
    levels = frame_logsnr(SCHEDULE, at0)
    assert levels[0] == math.inf
    assert math.isclose(frame_logsnr(SCHEDULE, at1)[-1], SCHEDULE.logsnr_min, abs_tol=1e-9)


@pytest.mark.parametrize("window", [1, 3, 4])
def test_init_schedule_starts_as_noise_and_reaches_the_rolling_state(window):
    assert (init_local_time(1.0, window) == 1).all()
    torch.testing.assert_close(init_local_time(0.0, window), rolling_local_time(0.0, window))
    t = torch.linspace(0, 1, 33, dtype=torch.float64)
    assert (init_local_time(t, window).diff(dim=0) >= 0).all()  # every frame moves towards data
    init = init_levels(SCHEDULE, window, 3)
    assert init.shape == (3 * window + 1, window)
    torch.testing.assert_close(init[0], torch.full((window,), SCHEDULE.logsnr_min).double())
    torch.testing.assert_close(init[-1], rolling_levels(SCHEDULE, window, 3)[-1])


@pytest.mark.parametrize("window,n", [(1, 4), (3, 2), (4, 3)])
def test_a_frame_passes_the_same_levels_in_init_rolling_and_block(window, n):
    """A frame joins the window at the back and moves one slot per rolling sweep: its levels over
    W sweeps are the front frame's levels in the init sweep and a block's shared levels."""
    roll = rolling_levels(SCHEDULE, window, n)
    path = [roll[0, window - 1]]
    for k in reversed(range(window)):
        path.extend(roll[1:, k].tolist())
    path = torch.tensor(path, dtype=torch.float64)
    torch.testing.assert_close(path, init_levels(SCHEDULE, window, n)[:, 0])
    torch.testing.assert_close(path, block_levels(SCHEDULE, window, n)[:, window - 1])


def test_training_local_times_mix_the_two_schedules():
    gen = torch.Generator().manual_seed(0)
    w = 4
    k = torch.arange(w) / w
    rolling = training_local_time(256, w, init_prob=0.0, generator=gen)
    t = rolling[:, 0] * w  # t_0 = t / W
    torch.testing.assert_close(rolling, (k + t[:, None] / w).clamp(0, 1))
    init = training_local_time(256, w, init_prob=1.0, generator=gen)
    t = init[:, 0]
    torch.testing.assert_close(init, (k + t[:, None]).clamp(0, 1))
    block = training_local_time(256, w, block=True, generator=gen)
    assert (block == block[:, :1]).all()
    mixed = training_local_time(4000, w, init_prob=0.25, generator=gen)
    # a rolling front frame lies in [0, 1/W]; an init one is uniform on [0, 1]
    share = (mixed[:, 0] > 1 / w).float().mean()
    assert abs(share - 0.25 * (1 - 1 / w)) < 0.03


# ----------------------------------------------------------------------------- levels reach


def recording(calls):
    def denoise(z, logsnr):
        calls.append((z.shape, logsnr.clone()))
        return torch.zeros_like(z)

    return denoise


def test_the_loss_hands_each_frame_its_own_level():
    calls = []
    x = torch.randn(3, 5, 1, 4, 4)
    gen = torch.Generator().manual_seed(1)
    t_local = torch.rand(3, 3, generator=gen)
    loss = sequence_loss(recording(calls), x, t_local, SCHEDULE, make_weighting("eps_mse"))
    ((shape, level),) = calls
    assert shape == x.shape and level.shape == (3, 5)
    assert (level[:, :2] == math.inf).all()  # the context is clean
    torch.testing.assert_close(level[:, 2:], SCHEDULE.logsnr(t_local))
    # with x_hat = 0 and the eps-MSE weighting: the loss is the mean of e^l x^2 over the window
    expected = (torch.exp(level[:, 2:, None, None, None]) * x[:, 2:] ** 2).flatten(1).mean(1)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("name", ["rolling", "block"])
def test_samplers_call_the_denoiser_with_the_scheduled_levels(name):
    calls = []
    window, n, frames = 3, 2, 5
    context = torch.randn(2, 2, 1, 4, 4)
    SAMPLERS[name](recording(calls), context, frames, window=window, steps_per_frame=n,
                   schedule=SCHEDULE)  # fmt: skip
    nfe = (rolling_nfe if name == "rolling" else block_nfe)(frames, window, n)
    assert len(calls) == nfe
    assert all(shape == (2, 5, 1, 4, 4) for shape, _ in calls)
    levels = torch.stack([lv for _, lv in calls]).double()  # [calls, B, T]
    assert (levels[:, :, :2] == math.inf).all()
    if name == "rolling":
        init = init_levels(SCHEDULE, window, n)[:-1]
        roll = rolling_levels(SCHEDULE, window, n)[:-1]
        expected = torch.cat([init, *[roll] * (frames - 1)])
    else:
        block = block_levels(SCHEDULE, window, n)[:-1]
        expected = torch.cat([block] * 2)
    torch.testing.assert_close(levels[:, 0, 2:], expected.float().double())


def test_window_one_rolling_is_block_diffusion():
    g = GaussianFrames((1, 4, 4), rho=0.7)
    context = g.sample(4, 1, torch.Generator().manual_seed(0))
    out = [
        fn(g.denoise, context, 5, window=1, steps_per_frame=3, schedule=SCHEDULE,
           generator=torch.Generator().manual_seed(3))
        for fn in SAMPLERS.values()
    ]  # fmt: skip
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)


def test_per_frame_levels_reach_the_spacetime_net():
    torch.manual_seed(0)
    net = build_net("spacetime", in_channels=1, resolution=8, frames=3, patch_size=4, width=16,
                    depth=1, heads=2, emb_dim=16)  # fmt: skip
    torch.nn.init.normal_(net.out.weight)  # the zero-initialised head would hide everything
    z = torch.randn(2, 3, 1, 8, 8)
    level = torch.tensor([[math.inf, 1.0, -3.0], [math.inf, 2.0, -1.0]])
    base = net(z, level)
    for frame in range(3):
        moved = level.clone()
        moved[:, frame] = 0.5
        assert not torch.allclose(net(z, moved), base)
    # the level of one example does not reach the other, and [B, T, 1, 1, 1] is the same input
    moved = level.clone()
    moved[1, 2] = 5.0
    out = net(z, moved)
    torch.testing.assert_close(out[0], base[0])
    torch.testing.assert_close(net(z, level[:, :, None, None, None]), base)


# ----------------------------------------------------------------------------- exact check


def test_gaussian_oracle_closed_forms():
    g = GaussianFrames((1, 4, 4), rho=0.6, power=1.0)
    z = g.sample(3, 3, torch.Generator().manual_seed(0))
    clean = torch.full((3, 3), math.inf, dtype=torch.float64)
    torch.testing.assert_close(g.denoise(z, clean), z)  # clean frames are returned as they are
    # frame 0 clean, frames 1 and 2 without signal: the AR(1) predictions rho x_0, rho^2 x_0
    level = torch.tensor([[math.inf, -80.0, -80.0]], dtype=torch.float64).expand(3, 3)
    x_hat = g.denoise(z, level)
    torch.testing.assert_close(x_hat[:, 1], 0.6 * z[:, 0])
    torch.testing.assert_close(x_hat[:, 2], 0.36 * z[:, 0])
    # one frame at level l, per DCT coordinate: s^2 a / (s^2 a^2 + sigma^2) z
    g1 = GaussianFrames((1, 4, 4), rho=0.6, power=1.0)
    z1 = torch.randn(2, 1, 1, 4, 4, dtype=torch.float64)
    level = torch.tensor([[0.7]], dtype=torch.float64)
    a2, s2 = torch.sigmoid(level), g1.spectrum()
    from difflab.diffusion.dct import dct2

    expected = s2 * a2.sqrt() / (s2 * a2 + 1 - a2) * dct2(z1)
    torch.testing.assert_close(dct2(g1.denoise(z1, level.expand(2, 1))), expected)


@pytest.mark.parametrize("name", ["rolling", "block"])
def test_exact_gaussian_moments_converge_for_both_samplers(name):
    """Per-pixel AR(1) frames, white in space, exact denoiser: the whitened per-frame variance
    (1) and lag-1 correlation (rho) of the rollouts approach the process's as steps grow
    (about first order; results/rolling has the 64-frame table). 16k samples per frame: the
    Monte Carlo error of each mean is about 0.005."""
    g = GaussianFrames((1, 8, 8), rho=0.8, power=0.0)
    errors = []
    for n in (4, 16):
        gen = torch.Generator().manual_seed(7)
        context = g.sample(256, 1, gen)
        out = SAMPLERS[name](g.denoise, context, 8, window=3, steps_per_frame=n,
                             schedule=SCHEDULE, generator=gen)  # fmt: skip
        stats = g.statistics(out, 1)
        errors.append((float(stats["variance"].mean() - 1), float(stats["correlation"][1] - 0.8)))
    (v4, c4), (v16, c16) = errors
    assert v4 < -0.1 and c4 < -0.07  # too few steps lose variance (deterministic DDIM)
    assert abs(v16) < 0.07 and abs(c16) < 0.05
    assert abs(v16) < 0.4 * abs(v4) and abs(c16) < 0.4 * abs(c4)


# ----------------------------------------------------------------------------- bad input


def test_bad_shapes_and_windows_name_the_argument():
    g = GaussianFrames((1, 4, 4))
    ctx = g.sample(2, 1)
    kw = {"window": 2, "steps_per_frame": 1, "schedule": SCHEDULE}
    with pytest.raises(
        ValueError, match=r"context must have shape \[B, T, C, H, W\], got \(2, 1, 4, 4\)"
    ):
        sample_rolling(g.denoise, ctx[:, 0], 3, **kw)
    with pytest.raises(ValueError, match="context must have at least 1 frame"):
        sample_blocks(g.denoise, ctx[:, :0], 3, **kw)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=f"window must be a positive integer, got {bad!r}"):
            sample_rolling(g.denoise, ctx, 3, **{**kw, "window": bad})
    with pytest.raises(ValueError, match="steps_per_frame must be a positive integer"):
        sample_blocks(g.denoise, ctx, 3, **{**kw, "steps_per_frame": 0})
    with pytest.raises(ValueError, match="num_frames must be a positive integer"):
        sample_rolling(g.denoise, ctx, 0, **kw)
    with pytest.raises(ValueError, match=r"denoise returned shape \(2, 2, 1, 4, 4\) for input"):
        sample_rolling(lambda z, l: z[:, 1:], ctx, 2, **kw)
    x = torch.randn(2, 3, 1, 4, 4)
    with pytest.raises(ValueError, match="window=3 needs at least one clean context frame"):
        rolling_loss(g.denoise, x, SCHEDULE, make_weighting("sigmoid"), window=3)
    with pytest.raises(ValueError, match="window must be a positive integer, got 0"):
        RollingOptions(window=0)
    with pytest.raises(ValueError, match="init_prob must be in"):
        RollingOptions(init_prob=1.5)
    net = build_net("spacetime", in_channels=1, resolution=8, frames=3, patch_size=4, width=16,
                    depth=1, heads=2, emb_dim=16)  # fmt: skip
    with pytest.raises(
        ValueError, match=r"z must have shape \[B, 3, 1, 8, 8\], got \(2, 4, 1, 8, 8\)"
    ):
        net(torch.randn(2, 4, 1, 8, 8), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"logsnr must be one level per frame.*got \(2, 2\)"):
        net(torch.randn(2, 3, 1, 8, 8), torch.zeros(2, 2))
    denoise = as_denoiser(net, "v")
    with pytest.raises(ValueError, match=r"z must have shape \[B, 3, 1, 8, 8\]"):
        sample_rolling(denoise, torch.randn(1, 2, 1, 8, 8), 2, window=2, steps_per_frame=1,
                       schedule=SCHEDULE)  # fmt: skip


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_flow(tmp_path_factory):
    """A Kolmogorov cache small enough to build in a second (16x16 solver, 8x8 frames)."""
    root = tmp_path_factory.mktemp("flow")
    data = KolmogorovData(num_trajectories=3, num_frames=12, frame_dt=0.1, spinup=0.2,
                          frame_resolution=8)  # fmt: skip
    prepare_kolmogorov(root, data, FlowParams(resolution=16, dt=0.05), progress=False)
    return root


TINY_OVERRIDES = [
    "model.kwargs.resolution=8", "model.kwargs.frames=3", "model.kwargs.width=16",
    "model.kwargs.depth=1", "model.kwargs.heads=2", "model.kwargs.emb_dim=16",
    "method.kwargs.context=1", "method.kwargs.window=2", "data.kwargs.frames=3",
    "data.kwargs.test_trajectories=1", "data.batch_size=4", "train.steps=2", "train.ckpt_every=2",
    "train.log_every=1", "optim.warmup_steps=1",
]  # fmt: skip


@pytest.mark.parametrize("method", ["rolling", "block"])
def test_train_and_sample_a_tiny_sequence_model(tmp_path, tiny_flow, method, capsys):
    run = tmp_path / "run"
    argv = ["train", f"configs/{method}_kolmogorov.yaml", *TINY_OVERRIDES,
            f"data.kwargs.cache_dir={tiny_flow}", f"train.out_dir={run}"]  # fmt: skip
    assert cli_main(argv) == 0
    out = tmp_path / "out"
    argv = ["sample", str(run), "--num", "2", "--frames", "3", "--steps", "1", "--out", str(out)]
    assert cli_main(argv) == 0
    assert f"{method} rollouts of 3 frames" in capsys.readouterr().out
    gif = Image.open(out / "rollout_00001.gif")
    assert gif.n_frames == 1 + 3  # context and generated frames, truth | sample side by side
    assert gif.size == (2 * 8 * 4, 8 * 4)
    assert (out / "strip_00000.png").exists() and (out / "samples.json").exists()
    assert cli_main(argv) == 2  # earlier samples are not overwritten without --overwrite
    argv = ["train", f"configs/{method}_kolmogorov.yaml", *TINY_OVERRIDES,
            f"data.kwargs.cache_dir={tiny_flow}", f"train.out_dir={tmp_path / 'bad'}",
            "model.kwargs.frames=4"]  # fmt: skip
    assert cli_main(argv) == 2
    assert "model.kwargs.frames=4 must equal method.kwargs.context" in capsys.readouterr().err


@pytest.mark.skipif(not (data_dir() / "mnist.npz").exists(), reason="difflab data prepare mnist")
def test_the_moving_digits_configs_train(tmp_path):
    for method in ("rolling", "block"):
        overrides = ["model.kwargs.width=16", "model.kwargs.depth=1", "model.kwargs.heads=2",
                     "model.kwargs.emb_dim=16", "data.kwargs.num_sequences=8",
                     "data.batch_size=4", "train.steps=1", "train.log_every=1",
                     f"train.out_dir={tmp_path / method}"]  # fmt: skip
        assert cli_main(["train", f"configs/{method}_moving_digits.yaml", *overrides]) == 0
        assert (tmp_path / method / "checkpoints").is_dir()
