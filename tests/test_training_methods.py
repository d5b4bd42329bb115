"""Training methods by name (`TrainConfig.method`, `difflab.train.methods`): the registry's
errors, a registered method's loss and extra modules reaching the trainer, the method section
stored with the run, and `difflab sample` handing a method's model to its own sampler."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_run import TINY, fast_overrides

from difflab import api
from difflab.cli import main as cli_main
from difflab.config import load_config
from difflab.train import (
    MethodParts,
    diffusion_loss_fn,
    method_options,
    newest_valid_checkpoint,
    register_training_method,
    run_training,
)
from difflab.train.methods import TRAINING_METHODS


@dataclasses.dataclass(frozen=True)
class ScaledOptions:
    scale: float = 1.0

    def __post_init__(self):
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")


CALLS: list[tuple[float, int]] = []


def _scaled(cfg, net, dataset):
    """The diffusion loss times `scale`, with a frozen extra module the loss must see."""
    options = method_options(cfg)
    base = diffusion_loss_fn(cfg.diffusion)
    probe = torch.nn.Linear(1, 1).requires_grad_(False)

    def loss_fn(models, batch, generator):
        assert models["probe"] is probe and not models["probe"].training
        CALLS.append((options.scale, batch[0].shape[0]))
        return options.scale * base(models, batch, generator)

    return MethodParts(loss_fn, extra_modules={"probe": probe})


@pytest.fixture
def scaled_method():
    register_training_method("test_scaled", _scaled, ScaledOptions)
    CALLS.clear()
    yield "test_scaled"
    TRAINING_METHODS.pop("test_scaled", None)


def tiny(tmp_path, *extra):
    return load_config(
        TINY, [*fast_overrides(8), "train.steps=2", f"train.out_dir={tmp_path}", *extra]
    )


def test_the_default_method_is_plain_diffusion():
    cfg = load_config(TINY)
    assert cfg.method.name == "diffusion" and cfg.method.kwargs == {}
    assert method_options(cfg) is None


def test_unknown_method_and_bad_options_name_the_key(tmp_path, scaled_method):
    with pytest.raises(
        ValueError, match=r"method\.name: unknown training method 'nope'.*test_scaled"
    ):
        run_training(tiny(tmp_path, "method.name=nope"))
    with pytest.raises(ValueError, match=r"method\.kwargs\.scael"):
        method_options(tiny(tmp_path, f"method.name={scaled_method}", "method.kwargs.scael=2"))
    with pytest.raises(ValueError, match=r"method\.kwargs: scale must be > 0"):
        method_options(tiny(tmp_path, f"method.name={scaled_method}", "method.kwargs.scale=-1"))
    with pytest.raises(ValueError, match=r"'diffusion' takes no options"):
        method_options(tiny(tmp_path, "method.kwargs.scale=2"))
    assert not (tmp_path / "checkpoints").exists()  # nothing was written


def test_a_name_cannot_be_claimed_by_two_builders(scaled_method):
    register_training_method(scaled_method, _scaled, ScaledOptions)  # the same builder: fine
    with pytest.raises(ValueError, match="already registered"):
        register_training_method(scaled_method, lambda cfg, net, data: None)


def test_a_registered_method_trains_and_is_stored_with_the_run(tmp_path, scaled_method):
    cfg = tiny(tmp_path, f"method.name={scaled_method}", "method.kwargs.scale=3")
    run_training(cfg)
    assert CALLS == [(3.0, 8), (3.0, 8)]  # its loss ran at every step, with its options
    stored = newest_valid_checkpoint(tmp_path).config
    assert stored.method.name == scaled_method and stored.method.kwargs == {"scale": 3.0}
    assert not any("probe" in p.name for p in newest_valid_checkpoint(tmp_path).path.iterdir())
    run_training(tiny(tmp_path / "plain", f"method.name={scaled_method}"))
    assert CALLS[-1] == (1.0, 8)


def test_sample_hands_a_method_model_to_its_own_sampler(tmp_path, scaled_method, monkeypatch):
    run_training(tiny(tmp_path / "run", f"method.name={scaled_method}"))
    seen = {}

    def fake_sampler(model, folder, *, num, seed, overwrite, **kwargs):
        seen.update(model=model, folder=folder, num=num, seed=seed, steps=kwargs.get("steps"))
        return {"summary": f"{num} method samples"}

    monkeypatch.setitem(api.METHOD_SAMPLERS, scaled_method, fake_sampler)
    out = tmp_path / "out"
    argv = ["sample", str(tmp_path / "run"), "--num", "3", "--seed", "5", "--steps", "4"]
    assert cli_main([*argv, "--out", str(out)]) == 0
    assert seen["num"] == 3 and seen["seed"] == 5 and seen["steps"] == 4
    assert seen["folder"] == out and seen["model"].config.method.name == scaled_method
    assert not list(out.glob("*.png"))  # the generic image writer did not run
