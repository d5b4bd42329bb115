"""The background-haze share (`difflab.eval.image_stats.haze_share`) and `--metric haze`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difflab.eval.image_stats import HAZE_FRAME, haze_share
from difflab.eval.reference import reference_images
from difflab.eval.scores import METRICS, FeatureScorer, parse_metrics


def test_haze_counts_the_lit_border_pixels_exactly():
    black = -torch.ones(4, 1, 28, 28)
    assert haze_share(black) == 0.0
    border = 28 * 28 - (28 - 2 * HAZE_FRAME) ** 2  # 384 pixels per image
    images = black.clone()
    images[0, 0, 0, :10] = 0.5  # 10 border pixels of image 0
    images[1, 0, 27, 27] = 1.0  # 1 border pixel of image 1
    images[2, 0, 4:24, 4:24] = 1.0  # the interior only: not counted
    assert haze_share(images) == pytest.approx(11 / (4 * border), abs=1e-15)
    # a faint grey everywhere (the haze) lights the whole border; the quantization is a PNG's
    assert haze_share(torch.full((2, 1, 28, 28), -1 + 1 / 127.5)) == 1.0
    assert haze_share(torch.full((2, 1, 28, 28), -1 + 0.9 / 255)) == 0.0  # rounds to 0
    # uint8 arrays (saved samples) as they are, with or without a channel dimension
    uint8 = np.zeros((3, 28, 28), np.uint8)
    uint8[:, 0, 0] = 1
    assert haze_share(uint8) == pytest.approx(3 / (3 * border))
    assert haze_share(uint8, frame=1) == pytest.approx(1 / (28 * 4 - 4))


def test_haze_rejects_bad_input_naming_it():
    with pytest.raises(ValueError, match="frame"):
        haze_share(torch.zeros(1, 1, 8, 8), frame=4)
    with pytest.raises(ValueError, match="frame"):
        haze_share(torch.zeros(1, 1, 8, 8), frame=0)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        haze_share(torch.zeros(28, 28))
    with pytest.raises(ValueError, match="uint8"):
        haze_share(torch.zeros(1, 1, 28, 28, dtype=torch.int32))


def test_real_mnist_has_almost_no_haze_and_the_scorer_reports_it():
    real = reference_images("mnist", "test", 2000)  # uint8 [N, 1, 28, 28]
    share = haze_share(real)
    assert 0.0 < share < 0.03  # strokes that reach the border (about 0.015)
    floats = real.float() / 127.5 - 1  # how evaluate_real hands images to the scorer
    assert haze_share(floats) == share
    assert "haze" in METRICS and parse_metrics("haze,fd-lenet") == ["haze", "fd-lenet"]
    scorer = FeatureScorer(["haze"], dataset="mnist")
    assert scorer.extractors == {}  # no feature network for a pixel statistic
    assert scorer(floats) == {"haze": share}


def test_evaluate_reports_haze_of_the_samples_it_draws():
    from difflab import api

    model = api.load(api.shipped_model_path())
    record = api.evaluate(model, metrics="haze", num=8, steps=2, batch_size=8, progress=False)
    again = api.sample(model, num=8, steps=2, batch_size=8, progress=False)
    assert record["haze"] == haze_share(again.samples)  # the same seed: the same samples
    assert "fd-lenet" not in record
