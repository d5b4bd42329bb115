"""The resolution experiment of docs/methods/recipe.md: the datasets' `resolution` option
(bilinear upsampling against its hand-computed weights, range, errors), the least-squares
inverse that `benchmarks/recipe_resolution.py` scores with, and the two 64x64 configs (they
differ only in the schedule, and their net takes their data)."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

from difflab.config import load_config
from difflab.data import make_dataset
from difflab.data.datasets import ArrayImageDataset, upsample_image
from difflab.data.packaged import FASHION_MNIST_DIR
from difflab.nets import build_net

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import recipe_resolution  # noqa: E402

CONFIGS = [ROOT / c for c in recipe_resolution.CONFIGS]
needs_fashion = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist"
)


def test_upsampling_is_bilinear_with_half_pixel_centres():
    # 2 -> 4 pixels: output pixel i samples the input at (i + 0.5) / 2 - 0.5, clamped to the
    # edge: -0.25 -> 0, 0.25, 0.75, 1.25 -> 1
    weights = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    image = torch.tensor([[[-1.0, 0.5], [0.25, 1.0]]])
    expected = weights @ image[0] @ weights.T
    torch.testing.assert_close(upsample_image(image, 4)[0], expected, rtol=0, atol=1e-6)


def test_resolution_option_shape_range_and_identity():
    pixels = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8).numpy()
    ds = ArrayImageDataset(pixels, resolution=64)
    image, _ = ds[1]
    assert image.shape == ds.image_shape == (1, 64, 64)
    assert -1 <= image.min() and image.max() <= 1  # convex combinations of pixels in [-1, 1]
    same = ArrayImageDataset(pixels, resolution=28)
    assert torch.equal(same[1][0], ArrayImageDataset(pixels)[1][0])
    padded = ArrayImageDataset(pixels, resolution=60, pad_to=64)
    assert padded[0][0].shape == (1, 64, 64) and padded[0][0][:, :2].eq(-1).all()


def test_bad_resolution_is_an_error_naming_it():
    pixels = torch.zeros(2, 28, 28, dtype=torch.uint8).numpy()
    with pytest.raises(ValueError, match=r"resolution=20 is smaller than the images \(28x28\)"):
        ArrayImageDataset(pixels, resolution=20)
    with pytest.raises(ValueError, match="resolution must be an int, got 64.0"):
        ArrayImageDataset(pixels, resolution=64.0)


@needs_fashion
def test_fashion_mnist_at_64_and_back_exactly():
    native = make_dataset("fashion_mnist", "test")
    up = make_dataset("fashion_mnist", "test", resolution=64)
    x = torch.stack([native[i][0] for i in range(4)])
    y = torch.stack([up[i][0] for i in range(4)])
    assert y.shape == (4, 1, 64, 64) and up.num_classes == 10
    torch.testing.assert_close(recipe_resolution.to_scored_size(y), x, rtol=0, atol=1e-5)


def test_res64_configs_differ_only_in_the_schedule():
    cosine, shifted = (dataclasses.asdict(load_config(c)) for c in CONFIGS)
    for cfg in (cosine, shifted):
        cfg["train"].pop("out_dir")
    assert cosine["diffusion"].pop("schedule") == "cosine"
    assert shifted["diffusion"].pop("schedule") == "shifted_cosine"
    kwargs = shifted["diffusion"].pop("schedule_kwargs")
    cosine["diffusion"].pop("schedule_kwargs")
    assert cosine == shifted
    schedule = load_config(CONFIGS[1]).diffusion.build_schedule()
    assert math.isclose(schedule.shift, 2 * math.log(28 / 64))
    assert kwargs["resolution"] == cosine["model"]["kwargs"]["resolution"] == 64


@needs_fashion
def test_res64_net_takes_its_data():
    cfg = load_config(CONFIGS[0])
    net = build_net(cfg.model.name, **cfg.model.kwargs)
    image, label = make_dataset(cfg.data.name, "test", **cfg.data.kwargs)[0]
    with torch.no_grad():
        out = net(image[None], torch.zeros(1), torch.tensor([int(label)]))
    assert out.shape == (1, 1, 64, 64)
