"""Bring your own model (difflab.interop): difflab's samplers on a diffusers model agree with
diffusers' own sampling loops to float32 round-off, and difflab's samplers on a k-diffusion
denoiser (and k-diffusion's samplers on a difflab one) agree with k-diffusion's; the
continuous-time schedule, the off-grid timestep rule, folder loading and bad inputs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

import difflab as dl
from difflab.interop import (
    AlphasCumprodSchedule,
    from_diffusers,
    from_k_diffusion,
    grid_of_sigmas,
    load_diffusers,
    sigmas_of_grid,
    to_k_diffusion,
    ve_of_vp,
)

diffusers = pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
PREDICTIONS = ("epsilon", "v_prediction")


def tiny_unet(seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    )
    return diffusers.UNet2DModel(**{**cfg, **kwargs}).eval().requires_grad_(False)


def ddpm(prediction_type: str = "epsilon"):
    return diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)


def noise(n: int = 3, shape=(1, 8, 8), seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def diffusers_loop(unet, scheduler, z: torch.Tensor, steps: int) -> torch.Tensor:
    """diffusers' own sampling loop (as its pipelines run it)."""
    scheduler.set_timesteps(steps)
    x = z * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = unet(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(out, t, x).prev_sample
    return x


def grid_of_timesteps(model, timesteps: torch.Tensor) -> torch.Tensor:
    inf = torch.tensor([math.inf], dtype=F64)
    return torch.cat([model.logsnr_of_timesteps(timesteps), inf])


def assert_round_off(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = float(theirs.abs().max())
    err = float((ours - theirs).abs().max())
    assert err <= 2e-5 * max(scale, 1.0), f"max error {err:.2e} at scale {scale:.2f}"


# ----------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("steps", [4, 10])
def test_ddim_equals_diffusers_ddim_loop(prediction_type, steps):
    unet, train = tiny_unet(), ddpm(prediction_type)
    scheduler = diffusers.DDIMScheduler.from_config(
        train.config, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False
    )
    z = noise()
    theirs = diffusers_loop(unet, scheduler, z, steps)
    model = dl.from_diffusers(unet, train)
    ours = dl.sample_ddim(model.denoise, z, grid_of_timesteps(model, scheduler.timesteps))
    assert_round_off(ours, theirs)
    # and the outputs are not trivially equal: a different grid gives a different sample
    other = dl.sample_ddim(model.denoise, z, grid_of_timesteps(model, scheduler.timesteps - 1))
    assert float((other - theirs).abs().max()) > 1e-3


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("steps", [5, 8])
def test_dpmpp_2m_equals_diffusers_dpm_solver_loop(prediction_type, steps):
    unet, train = tiny_unet(1), ddpm(prediction_type)
    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(
        train.config, algorithm_type="dpmsolver++", solver_order=2, thresholding=False
    )
    z = noise(seed=2)
    theirs = diffusers_loop(unet, scheduler, z, steps)
    model = dl.from_diffusers(unet, train)
    ours = dl.sample_dpmpp_2m(model.denoise, z, grid_of_timesteps(model, scheduler.timesteps))
    assert_round_off(ours, theirs)
    first_order = dl.sample_ddim(model.denoise, z, grid_of_timesteps(model, scheduler.timesteps))
    assert float((first_order - theirs).abs().max()) > 1e-3


def test_sample_prediction_and_class_labels_reach_the_model():
    """`sample` prediction: x_hat is the model output; labels become `class_labels`."""
    unet = tiny_unet(num_class_embeds=3)
    model = from_diffusers(unet, ddpm("sample"))
    z, level = noise(), torch.full((3,), 0.5)
    labels = torch.tensor([0, 1, 2])
    t = model.schedule.timestep_of(level).float()
    expected = unet(z, t, class_labels=labels).sample
    assert torch.equal(model.make_denoise(labels)(z, level), expected)
    assert torch.equal(model.denoiser(class_labels=labels)(z, level), expected)
    assert not torch.equal(model.make_denoise(labels.flip(0))(z, level), expected)


def test_model_dtype_and_device_are_respected():
    unet = tiny_unet().to(torch.float64)
    model = from_diffusers(unet, ddpm())
    z = noise()  # float32 in, float32 out; the model ran in float64
    out = model.denoise(z, torch.zeros(3))
    assert out.dtype == torch.float32 and model.dtype == torch.float64
    assert model.device == torch.device("cpu")


# ----------------------------------------------------------------------------- the schedule


def test_schedule_interpolates_the_chain_and_inverts():
    train = ddpm()
    model = from_diffusers(tiny_unet(), train)
    s = model.schedule
    ab = train.alphas_cumprod.double()
    knots = torch.log(ab) - torch.log1p(-ab)
    n = torch.tensor([0, 1, 500, 999])
    assert torch.equal(model.logsnr_of_timesteps(n), knots[n])
    assert s.logsnr_max == float(knots[0]) and s.logsnr_min == float(knots[-1])
    assert torch.allclose(s.logsnr(n.double() / 999), knots[n], rtol=0, atol=1e-12)
    # fractional timesteps: linear in logsnr between the neighbours
    mid = model.logsnr_of_timesteps(torch.tensor([10.25]))
    assert torch.allclose(mid, 0.75 * knots[10] + 0.25 * knots[11], rtol=0, atol=1e-12)
    t = torch.linspace(0, 1, 37, dtype=F64)
    assert torch.allclose(s.t_of(s.logsnr(t)), t, atol=1e-12)
    # closed-form slope against finite differences inside a segment
    t0 = torch.tensor([0.3004], dtype=F64)
    fd = (s.logsnr(t0 + 1e-7) - s.logsnr(t0 - 1e-7)) / 2e-7
    assert torch.allclose(s.dlogsnr_dt(t0), fd, rtol=1e-6)
    # difflab grids on it stay within the trained levels
    grid = dl.uniform_t_grid(s, 8)
    assert float(grid[0]) == s.logsnr_min and math.isinf(float(grid[-1]))


def test_float32_levels_of_timesteps_snap_to_integer_timesteps():
    s = from_diffusers(tiny_unet(), ddpm()).schedule
    n = torch.tensor([0, 7, 333, 999])
    levels32 = s.knots[n].float()
    assert torch.equal(s.timestep_of(levels32), n.double())
    # a level between two timesteps gets the fractional timestep of the rule
    between = torch.tensor([0.5 * float(s.knots[20] + s.knots[21])])
    assert torch.allclose(s.timestep_of(between), torch.tensor([20.5], dtype=F64), atol=1e-12)


def test_off_grid_rule_equals_k_diffusions_continuous_timestep_rule():
    """k-diffusion's `DiscreteEpsDDPMDenoiser` (quantize=False) interpolates the timestep linearly
    in log sigma = -logsnr / 2: the same rule, so off-grid outputs agree."""
    from difflab.interop import k_diffusion_module

    try:
        external = k_diffusion_module("external")
    except ImportError as err:
        pytest.skip(str(err))
    unet, train = tiny_unet(), ddpm()
    theirs = external.DiscreteEpsDDPMDenoiser(
        lambda x, t: unet(x, t).sample, train.alphas_cumprod, quantize=False
    )
    ours = to_k_diffusion(from_diffusers(unet, train).denoise)
    x = noise() * 2.0
    for sigma in (0.05, 0.8, 3.3, 40.0):
        s = torch.full((3,), sigma)
        assert theirs.sigma_to_t(s)[0] % 1 != 0  # off the grid
        assert_round_off(ours(x, s), theirs(x, s))


# ----------------------------------------------------------------------------- k-diffusion


def k_sampling():
    from difflab.interop import k_diffusion_sampling

    try:
        return k_diffusion_sampling()
    except ImportError as err:
        pytest.skip(str(err))


def edm_denoiser(seed: int = 0):
    """A small EDM-preconditioned network `D(x, sigma)` (random weights): the k-diffusion side."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(8, 1, 3, padding=1)).double()  # fmt: skip

    def denoise(x, sigma):
        s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        c_in, c_skip = 1 / (s**2 + 1).sqrt(), 1 / (s**2 + 1)
        c_out = s / (s**2 + 1).sqrt()
        cond = torch.log(s).expand(-1, 1, *x.shape[2:]) / 4
        return c_skip * x + c_out * net(torch.cat([c_in * x, cond], 1))

    return denoise


@pytest.mark.parametrize(
    ("k_name", "ours"), [("sample_euler", "euler"), ("sample_dpmpp_2m", "dpmpp_2m")]
)
def test_k_diffusion_samplers_equal_difflab_samplers_on_an_edm_model(k_name, ours):
    ks = k_sampling()
    D = edm_denoiser()
    sigmas = ks.get_sigmas_karras(7, 0.02, 40.0, rho=7.0).double()
    x0 = noise(2, seed=3).double() * sigmas[0]
    theirs = getattr(ks, k_name)(D, x0, sigmas, disable=True)
    grid = grid_of_sigmas(sigmas)
    z0 = x0 / torch.sqrt(1 + sigmas[0] ** 2)  # the same sample, variance preserving
    mine = dl.get_sampler(ours).fn(from_k_diffusion(D), z0, grid)
    assert torch.allclose(mine, theirs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize(
    ("k_name", "ours"), [("sample_euler", "euler"), ("sample_dpmpp_2m", "dpmpp_2m")]
)
def test_k_diffusion_samplers_on_a_diffusers_model_through_difflab(prediction_type, k_name, ours):
    """diffusers model -> from_diffusers -> to_k_diffusion -> k-diffusion's sampler equals
    difflab's sampler on the same levels (float32 round-off)."""
    ks = k_sampling()
    model = from_diffusers(tiny_unet(2), ddpm(prediction_type))
    grid = dl.uniform_t_grid(model.schedule, 6)
    z = noise(seed=4)
    sigmas = sigmas_of_grid(grid).float()
    theirs = getattr(ks, k_name)(to_k_diffusion(model.denoise), ve_of_vp(z, grid[0]), sigmas,
                                 disable=True)  # fmt: skip
    mine = dl.get_sampler(ours).fn(model.denoise, z, grid)
    assert_round_off(mine, theirs)


def test_k_diffusion_conversions_round_trip():
    D = edm_denoiser(1)
    denoise = from_k_diffusion(D)
    x = noise(2, seed=5).double() * 3.0
    sigma = torch.tensor([0.3, 3.0], dtype=F64)
    assert torch.allclose(to_k_diffusion(denoise)(x, sigma), D(x, sigma), rtol=0, atol=1e-12)
    oracle = dl.GaussianMixtureOracle.image_like((1, 8, 8))
    z, level = noise(2, seed=6).double(), torch.tensor([-1.0, 2.0], dtype=F64)
    back = from_k_diffusion(to_k_diffusion(oracle.denoise))(z, level)
    assert torch.allclose(back, oracle.denoise(z, level), rtol=0, atol=1e-10)
    assert torch.allclose(grid_of_sigmas(sigmas_of_grid(level)), level, atol=1e-12)


# ----------------------------------------------------------------------------- folders and CLI


def save_folder(tmp_path: Path, prediction_type: str = "epsilon", pipeline: bool = False) -> Path:
    unet, sched = tiny_unet(), ddpm(prediction_type)
    root = tmp_path / "model"
    unet.save_pretrained(root / "unet" if pipeline else root, safe_serialization=True)
    sched.save_pretrained(root / "scheduler" if pipeline else root)
    return root


@pytest.mark.parametrize("pipeline", [False, True])
def test_load_diffusers_folder_matches_the_model(tmp_path, pipeline):
    root = save_folder(tmp_path, "v_prediction", pipeline)
    loaded = load_diffusers(root)
    model = from_diffusers(tiny_unet(), ddpm("v_prediction"))
    z, level = noise(), torch.tensor([-3.0, 0.0, 4.0])
    assert loaded.prediction == "v"
    assert torch.equal(loaded.denoise(z, level), model.denoise(z, level))


def test_difflab_sample_reads_a_save_pretrained_folder(tmp_path, capsys):
    from difflab.cli import main

    root = tmp_path / "unet"
    tiny_unet().save_pretrained(root, safe_serialization=True)
    ddpm().save_pretrained(root)
    out = tmp_path / "samples"
    argv = ["sample", str(root), "--num", "3", "--steps", "4", "--sampler", "dpmpp_2m"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    record = json.loads((out / "samples.json").read_text())
    assert record["sampler"] == "dpmpp_2m" and record["num"] == 3 and record["nfe"] == 4
    assert record["checkpoint"]["format"] == "diffusers"
    assert sorted(p.name for p in out.glob("0*.png")) == ["00000.png", "00001.png", "00002.png"]


def test_difflab_eval_scores_a_diffusers_folder(tmp_path, capsys):
    from difflab.cli import main

    root = tmp_path / "unet"
    tiny_unet(sample_size=28).save_pretrained(root, safe_serialization=True)
    ddpm().save_pretrained(root)
    out = tmp_path / "eval.json"
    argv = ["eval", str(root), "--num", "8", "--steps", "2", "--ref-num", "64", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    (record,) = json.loads(out.read_text())
    assert record["num"] == 8 and record["nfe"] == 2 and math.isfinite(record["fd-lenet"])


def test_api_load_of_a_diffusers_folder_samples_like_the_wrapper(tmp_path):
    from difflab import api

    root = save_folder(tmp_path)
    model = api.load(root)
    assert model.shape == (1, 8, 8) and model.prediction == "eps" and model.num_classes == 0
    wrapper = from_diffusers(tiny_unet(), ddpm(), clip_x=1.0)
    z, level = noise(), torch.tensor([-5.0, 0.0, 5.0])
    assert torch.equal(model.make_denoise()(z, level), wrapper.denoise(z, level))
    gen = api.sample(model, num=2, sampler="ddim", steps=3, progress=False)
    assert gen.samples.shape == (2, 1, 8, 8) and gen.nfe == 3


# ----------------------------------------------------------------------------- bad inputs


def test_unknown_prediction_type_is_named():
    sched = ddpm()
    sched.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match=r"prediction_type 'flow'"):
        from_diffusers(tiny_unet(), sched)


def test_zero_terminal_snr_is_refused_with_its_reason():
    sched = diffusers.DDPMScheduler(rescale_betas_zero_snr=True)
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        from_diffusers(tiny_unet(), sched)


def test_missing_weights_and_bad_folders_are_named(tmp_path):
    root = save_folder(tmp_path)
    (root / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no diffusion_pytorch_model\.safetensors"):
        load_diffusers(root)
    with pytest.raises(ValueError, match="is not a diffusers model folder"):
        load_diffusers(tmp_path / "nowhere")
    config = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**config, "_class_name": "NoSuchModel"}))
    tiny_unet().save_pretrained(tmp_path / "other", safe_serialization=True)
    (root / "diffusion_pytorch_model.safetensors").write_bytes(
        (tmp_path / "other" / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="unknown diffusers model class 'NoSuchModel'"):
        load_diffusers(root)


def test_mismatched_weights_name_the_file(tmp_path):
    root = save_folder(tmp_path)
    tiny_unet(block_out_channels=(4, 8)).save_pretrained(
        tmp_path / "small", safe_serialization=True
    )
    (root / "diffusion_pytorch_model.safetensors").write_bytes(
        (tmp_path / "small" / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors does not match"):
        load_diffusers(root)


def test_cli_error_for_a_folder_without_weights(tmp_path, capsys):
    from difflab.cli import main

    root = save_folder(tmp_path)
    (root / "diffusion_pytorch_model.safetensors").unlink()
    for command, out in (
        (["sample", str(root)], "s"),
        (["eval", str(root), "--num", "2"], "r.json"),
    ):
        assert main([*command, "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err
        assert re.search(r"error: .*no diffusion_pytorch_model\.safetensors", err), err


def test_per_element_levels_are_refused_with_their_shape():
    model = from_diffusers(tiny_unet(), ddpm())
    z = noise()
    with pytest.raises(ValueError, match=r"logsnr of shape \(3, 1, 8, 8\)"):
        model.denoise(z, torch.zeros(3, 1, 8, 8) + torch.arange(8.0))
    with pytest.raises(ValueError, match="one sigma per example"):
        to_k_diffusion(model.denoise)(z, torch.ones(2))


def test_readme_example_runs(tmp_path, monkeypatch):
    """The README's diffusers example, as written, on a `save_pretrained` folder `my-unet` (a
    small random UNet2DModel and its DDPMScheduler) in the working directory; `torch` and `dl`
    come from the README's first example. Its samples are difflab's DPM-Solver++(2M) on the
    model: equal to running the sampler on `from_diffusers` of the same model directly."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    blocks = [b for b in blocks if "from_diffusers" in b]
    assert blocks, "README.md has no from_diffusers example"
    monkeypatch.chdir(tmp_path)
    unet, sched = tiny_unet(3), ddpm("v_prediction")
    unet.save_pretrained("my-unet", safe_serialization=True)
    sched.save_pretrained("my-unet")
    torch.manual_seed(0)
    names: dict = {"torch": torch, "dl": dl}
    exec(compile(blocks[0], "README.md", "exec"), names)
    x, z = names["x"], names["z"]
    assert x.shape == z.shape == (16, 1, 8, 8) and bool(x.isfinite().all())
    model = from_diffusers(unet, sched)
    assert isinstance(names["model"].schedule, AlphasCumprodSchedule)
    expected = dl.sample_dpmpp_2m(model.denoise, z, dl.uniform_t_grid(model.schedule, 8))
    assert torch.allclose(x, expected, rtol=0, atol=1e-5)
