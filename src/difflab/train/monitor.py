"""What a run leaves to look at: `metrics.jsonl`, TensorBoard scalars, sample grids, loss plot."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """`[N, C, H, W]` images in [-1, 1] -> one `uint8` `[rows*(H+pad)+pad, ..., C]` array."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [N, 1 or 3, H, W], got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def save_image_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int = 1):
    """Write `image_grid(images)` as a PNG, upscaled by `scale` (nearest) for small images."""
    grid = image_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


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
