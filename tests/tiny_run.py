"""The tiny training run the train/resume/config tests share: the 8x8-digits recipe with logging
kept and sampling, TensorBoard and progress bars off (each test then runs in about a second)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "digits_tiny.yaml"


def fast_overrides(batch_size: int) -> list[str]:
    return [
        f"data.batch_size={batch_size}",
        "train.log_every=1",
        "train.sample_every=0",
        "train.tensorboard=false",
        "train.progress=false",
    ]
