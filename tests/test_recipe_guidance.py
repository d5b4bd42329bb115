"""`benchmarks/recipe_guidance.py`: its two modes are the library's guided sampling, exactly at
the limits (an interval that covers every level the sampler evaluates is full guidance, one that
covers none is no guidance), and a result store made with other settings is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from difflab import api
from difflab.sampling import default_grid

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import recipe_guidance as rg  # noqa: E402

SETTINGS = {"num": 6, "steps": 3, "seed": 1, "batch_size": 6}


@pytest.fixture(scope="module")
def model() -> api.LoadedModel:
    return api.load(api.shipped_model_path())


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "ddpm"])
def test_an_interval_over_every_evaluated_level_is_full_guidance(model, sampler):
    # exactly from the first to the last level the sampler evaluates: both ends are inclusive
    # (the schedule's own range would not do: the uniform-t grid starts 2.4e-13 below
    # logsnr_min = -15, so (-15, 15) leaves its first step unguided)
    levels = default_grid(sampler, model.schedule, SETTINGS["steps"])[:-1]
    whole = (levels.min().item(), levels.max().item())
    full = rg.draw(model, 2.0, "full", whole, sampler=sampler, **SETTINGS)
    inside = rg.draw(model, 2.0, "interval", whole, sampler=sampler, **SETTINGS)
    assert rg.levels_inside(model, sampler, SETTINGS["steps"], whole) == SETTINGS["steps"]
    assert torch.equal(full.samples, inside.samples)
    assert full.nfe == inside.nfe == 2 * SETTINGS["steps"]


def test_interval_outside_every_level_is_no_guidance(model):
    beyond = (model.schedule.logsnr_max + 1, model.schedule.logsnr_max + 2)
    off = rg.draw(model, 0.0, "full", beyond, sampler="dpmpp_2m", **SETTINGS)
    outside = rg.draw(model, 3.0, "interval", beyond, sampler="dpmpp_2m", **SETTINGS)
    assert rg.levels_inside(model, "dpmpp_2m", SETTINGS["steps"], beyond) == 0
    assert torch.equal(off.samples, outside.samples)
    guided = rg.draw(model, 3.0, "full", beyond, sampler="dpmpp_2m", **SETTINGS)
    assert not torch.equal(off.samples, guided.samples)  # the weight does act


def test_default_interval_is_the_paper_sigma_interval_in_logsnr():
    lo, hi = rg.DEFAULT_INTERVAL
    sigma_lo, sigma_hi = rg.PAPER_SIGMA
    # sigma = exp(-logsnr / 2): the high-noise end of the sigma interval is the low logsnr end
    assert abs(torch.tensor(-lo / 2).exp().item() - sigma_hi) < 0.01
    assert abs(torch.tensor(-hi / 2).exp().item() - sigma_lo) < 0.01


def test_a_store_made_with_other_settings_is_refused(tmp_path):
    stored = {"model_sha256": "a", "sampler": "ddim", "steps": 16, "num": 500, "seed": 0,
              "interval": [-3.38, 2.55]}  # fmt: skip
    rg.check_setup(stored, dict(stored), tmp_path)  # the same settings resume
    with pytest.raises(SystemExit, match=r"steps=16, this run has 32"):
        rg.check_setup(stored, {**stored, "steps": 32}, tmp_path)


def test_bad_arguments_name_the_option():
    with pytest.raises(ValueError, match="--interval must satisfy LO < HI"):
        rg.parse_interval("2,-1")
    with pytest.raises(ValueError, match="--weights must be finite numbers >= 0"):
        rg.parse_weights("1,-2")
    assert rg.parse_weights("0,0.5,4") == [0.0, 0.5, 4.0]
