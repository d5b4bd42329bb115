"""What a run leaves to look at: `metrics.jsonl`, TensorBoard scalars, sample grids, loss plot."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import write_text_atomic

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """Appends one JSON object per line to `metrics.jsonl` (flushed at once, so a crash loses
    nothing already logged) and mirrors numeric fields to TensorBoard when it is installed."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:  # tensorboard is optional
                self._tb = None

    def log(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(dict(record), allow_nan=True) + "\n")
        self._file.flush()
        if self._tb is not None and "step" in record and "event" not in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a `metrics.jsonl` (a torn last line from a crash is ignored)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def truncate_metrics(path: str | Path, step: int) -> None:
    """Keep the records up to `step` (a resumed run re-logs the steps after its checkpoint)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step and r.get("event") != "end"]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def plot_loss_curve(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Loss against step (log scale, with a moving average) from `metrics.jsonl`."""
    records = [r for r in read_metrics(metrics_path) if "loss" in r and "event" not in r]
    finite = [(r["step"], r["loss"]) for r in records if math.isfinite(r["loss"]) and r["loss"] > 0]
    if not finite:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = map(np.asarray, zip(*finite))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    k = max(1, len(losses) // 20)
    if k > 1:
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"moving average ({k} logs)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)
