"""`benchmarks/recipe.py`'s EMA rows: under the warm-up a slow decay is the base row's average
in a short run, and the report says so; the raw-weights row reads the base row's run."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import recipe  # noqa: E402

PILOT = {"config": "configs/recipe_mnist_pilot.yaml"}


def test_raw_weights_row_scores_the_base_run_without_its_average(tmp_path):
    assert recipe.row_weights(recipe.RAW_WEIGHTS_ROW) == (recipe.BASE_ROW, False)
    assert recipe.row_weights("ema0.9") == ("ema0.9", True)

    class Args:
        runs, set = str(tmp_path), []
        config = str(ROOT / PILOT["config"])

    cfg = recipe.row_config(Args, recipe.RAW_WEIGHTS_ROW, 3)
    base = recipe.row_config(Args, recipe.BASE_ROW, 3)
    assert cfg.train.out_dir == base.train.out_dir == str(tmp_path / f"{recipe.BASE_ROW}_s3")
    assert cfg == base  # the same run: it trains nothing of its own


def test_ema_note_counts_the_updates_each_decay_was_used():
    rows = ("ema0.9", "ema0.98", "ema0.9999", "ema-none", "ema-no-warmup")
    text = "\n".join(recipe.ema_note(PILOT, {row: {} for row in (recipe.BASE_ROW, *rows)}))
    assert "`ema0.9` (0.9): in force for the last 1120 of 1200" in text
    assert "`ema0.98` (0.98): in force for the last 760 of 1200" in text
    assert f"`{recipe.BASE_ROW}` (0.999): in force for the last 0 of 1200" in text
    assert f"So `ema0.9999` averages exactly the weights of `{recipe.BASE_ROW}`" in text
    assert "`ema-none` scores the base runs' raw weights" in text
    assert "`ema-no-warmup` averages with 0.999 from the first update" in text
    assert recipe.ema_note(PILOT, {recipe.BASE_ROW: {}}) == []  # no EMA row scored: no note
