"""`difflab.api`: a loaded model's parts and sampling defaults, its denoisers against the
formulas they implement, student defaults, and evaluation records."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from difflab import api
from difflab.diffusion.parameterization import as_denoiser
from difflab.train import load_denoiser
from difflab.train.checkpoint import NetDenoiser

MODEL = api.shipped_model_path()


@pytest.fixture(scope="module")
def model() -> api.LoadedModel:
    return api.load(MODEL)


def test_load_returns_the_net_config_and_defaults(model):
    assert (model.sampler, model.steps, model.grid, model.student) == ("ddim", 32, "default", None)
    assert model.shape == (1, 28, 28) and model.num_classes == 10
    assert model.prediction == model.config.diffusion.prediction
    assert model.source["sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert model.schedule.logsnr_max == model.config.diffusion.build_schedule().logsnr_max
    assert not model.net.training and not any(p.requires_grad for p in model.net.parameters())


def test_denoisers_are_the_parameterization_and_cfg_formulas(model):
    torch.manual_seed(0)
    z, level = torch.randn(4, 1, 28, 28), torch.full((4,), 1.5)
    labels = torch.tensor([0, 3, 5, 9])
    cond = as_denoiser(model.net, model.prediction, 1.0, labels=labels)(z, level)
    uncond = as_denoiser(model.net, model.prediction, 1.0)(z, level)
    assert torch.equal(model.denoiser(labels)(z, level), cond)
    assert torch.equal(model.denoiser()(z, level), uncond)
    w = 2.0
    guided = model.denoiser(labels, guidance=w)(z, level)
    torch.testing.assert_close(guided, cond + w * (cond - uncond))
    outside = model.denoiser(labels, guidance=w, interval=(-5.0, 1.0))(z, level)
    assert torch.equal(outside, cond)  # logsnr 1.5 lies outside [-5, 1]
    with pytest.raises(ValueError, match="guidance needs class labels"):
        model.denoiser(guidance=w)


def test_load_denoiser_is_a_real_factory():
    make, cfg = load_denoiser(MODEL)
    assert isinstance(make, NetDenoiser) and make.prediction == cfg.diffusion.prediction
    z, level = torch.randn(2, 1, 28, 28), torch.zeros(2)
    expected = as_denoiser(make.net, make.prediction, 1.0, labels=torch.tensor([1, 2]))(z, level)
    assert torch.equal(make(labels=torch.tensor([1, 2]))(z, level), expected)


def test_student_defaults_and_explicit_settings(model):
    levels = [-10.0, 0.0]
    student = api.LoadedModel(
        model.path, model.net, model.config, model.source,
        {"sampler": "ddpm", "steps": 2, "logsnrs": levels, "final_logsnr": "inf"},
    )  # fmt: skip
    sampler, steps, grid = api.sampling_settings(student, None, None, None)
    assert (sampler, steps) == ("ddpm", 2)
    assert grid.tolist() == [-10.0, 0.0, float("inf")]
    assert api.sampling_settings(student, None, 4, None) == ("ddpm", 4, "default")
    assert api.sampling_settings(student, "ddim", None, "edm") == ("ddim", 2, "edm")
    assert api.sampling_settings(model, None, None, None) == ("ddim", 32, "default")
    gen = api.sample(student, num=2, progress=False)
    assert (gen.sampler, gen.steps, gen.grid, gen.nfe) == ("ddpm", 2, "explicit", 2)
    # the recorded levels are the ones sampled: the same as passing them explicitly, and not
    # the default 2-step grid
    levels = torch.tensor([-10.0, 0.0, float("inf")], dtype=torch.float64)
    explicit = api.sample(model, num=2, sampler="ddpm", steps=2, grid=levels, progress=False)
    torch.testing.assert_close(gen.samples, explicit.samples, rtol=0, atol=0)
    default = api.sample(model, num=2, sampler="ddpm", steps=2, progress=False)
    assert (gen.samples - default.samples).abs().max() > 1e-2


def test_sample_rejects_what_would_be_ignored(model):
    with pytest.raises(ValueError, match="interval .* has no effect without guidance"):
        api.sample(model, num=2, interval=(-2.0, 6.0))
    with pytest.raises(ValueError, match=r"label must be in \[0, 10\), got 10"):
        api.sample(model, num=2, label=10)
    assert api.class_labels(model, 12, None).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert api.class_labels(model, 3, "7").tolist() == [7, 7, 7]


def test_evaluate_appends_its_record_and_checks_the_out_file(model, tmp_path):
    out = tmp_path / "r" / "eval.json"
    kwargs = dict(metrics="fd-lenet", num=20, ref_num=50, steps=2, progress=False)
    record = api.evaluate(model, out=out, **kwargs)
    assert json.loads(out.read_text()) == [json.loads(json.dumps(record))]
    assert record["nfe"] == 2 and record["steps"] == 2
    # the fd-lenet of the same 20 samples, from their LeNet features and the test statistics
    from difflab.eval.features import LeNetFeatures
    from difflab.eval.metrics import frechet_distance
    from difflab.eval.reference import load_reference_stats

    samples = api.sample(model, num=20, steps=2, progress=False).samples
    lenet = LeNetFeatures()
    stats = load_reference_stats("mnist", "test", lenet)
    direct = frechet_distance(lenet(samples.clamp(-1, 1), progress=False), stats)
    assert record["fd-lenet"] == pytest.approx(direct, rel=1e-9)
    api.evaluate(model, out=out, **kwargs)
    assert len(json.loads(out.read_text())) == 2
    with pytest.raises(ValueError, match="elbo-logsnr-max must be .best. or lie in"):
        api.evaluate(model, metrics="elbo", num=4, elbo_logsnr_max=99.0)


def test_evaluate_checks_the_sample_shape_before_sampling(monkeypatch):
    """An 8x8 model scored against 28x28 MNIST: an error naming both shapes, before sampling."""
    from pathlib import Path

    from difflab.config import load_config
    from difflab.train.checkpoint import build_net_from_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "digits_tiny.yaml")
    small = api.LoadedModel(Path("tiny"), build_net_from_config(cfg).eval(), cfg, {"path": "t"})
    assert small.shape == (1, 8, 8)

    def boom(*args, **kwargs):
        raise AssertionError("sampled before the shapes were checked")

    monkeypatch.setattr(api, "generate", boom)
    match = r"samples of tiny of shape \[N, 1, 8, 8\] cannot be compared with mnist images"
    with pytest.raises(ValueError, match=match):
        api.evaluate(small, metrics="fd-lenet,kid-lenet", num=4, ref_num=10)


def test_shipped_models_load_by_name_and_a_local_path_wins(tmp_path, monkeypatch):
    by_name = api.load("mnist_uvit")
    assert by_name.path == MODEL and by_name.source["sha256"] == api.load(MODEL).source["sha256"]
    assert api.resolve_model_path("runs/x") == Path("runs/x")  # not a name: left to the loader
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist_uvit").mkdir()  # a local folder of that name is what the user means
    assert api.resolve_model_path("mnist_uvit") == Path("mnist_uvit")
    with pytest.raises(ValueError, match="no shipped model 'cifar'; shipped: mnist_uvit, fashion"):
        api.shipped_model_path("cifar")
    with pytest.raises(ValueError, match="does not exist .*shipped model: mnist_uvit, fashion"):
        api.load("mnist_uvit_v0")


def test_every_shipped_model_has_its_file_and_provenance():
    for name in api.SHIPPED_MODELS:
        path = api.shipped_model_path(name)
        provenance = json.loads(path.with_suffix(".json").read_text())
        assert provenance["file"] == path.name
        assert {"command", "steps", "wall_time_minutes", "machine"} <= set(provenance)
        model = api.load(name)
        assert model.config.data.name == name.removesuffix("_uvit")
        assert model.config.train.steps == provenance["steps"]


def test_evaluate_defaults_to_the_models_own_data(model):
    assert api.default_reference(model) == "mnist"

    def trained_on(name: str) -> api.LoadedModel:
        config = replace(model.config, data=replace(model.config.data, name=name))
        return api.LoadedModel(model.path, model.net, config, model.source)

    assert api.default_reference(trained_on("fashion_mnist")) == "fashion_mnist"
    assert api.default_reference(trained_on("digits")) == "mnist"  # no reference statistics
