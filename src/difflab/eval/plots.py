"""Plots of evaluation results: quality against NFE, and labelled rows of samples.

A results JSON holds records, one per (sampler, NFE) evaluation, either as a bare list or under
`"records"`:

    {"records": [{"sampler": "ddim", "nfe": 8, "fd-lenet": 12.3, "fid": 45.6}, ...]}

Every numeric key other than `nfe` is a metric; `plot_quality_vs_nfe` draws one panel per metric
(log-log: distances span orders of magnitude across NFE) and one line per sampler.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor

from difflab.fileio import read_json
from difflab.images import image_grid


def _pyplot():
    """pyplot on the file-only Agg backend, chosen at first use rather than at import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_records(path: str | Path) -> list[dict]:
    """The records of a results JSON (see the module docstring)."""
    path = Path(path)
    data = read_json(path)
    records = data.get("records") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected a list of records or {{'records': [...]}}")
    return records


def metric_names(records: Sequence[dict], group: str = "sampler") -> list[str]:
    """Numeric keys other than `nfe` and the group key, in order of first appearance."""
    names: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in ("nfe", group) and isinstance(value, int | float):
                names.setdefault(key, None)
    return list(names)


def plot_quality_vs_nfe(
    records: Sequence[dict],
    out: str | Path,
    *,
    metrics: Sequence[str] | None = None,
    group: str = "sampler",
    title: str | None = None,
) -> Path:
    """One panel per metric, metric against NFE, one line per `group` value; writes a PNG."""
    for i, record in enumerate(records):
        if "nfe" not in record or group not in record:
            raise ValueError(f"record {i} lacks 'nfe' or {group!r}: {record}")
    metrics = list(metrics or metric_names(records, group))
    if not metrics:
        raise ValueError("records have no numeric metric besides 'nfe'")
    plt = _pyplot()
    from matplotlib import ticker

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        groups: dict[str, list[tuple[float, float]]] = {}
        for record in records:
            value = record.get(metric)
            if isinstance(value, int | float) and math.isfinite(value):
                groups.setdefault(str(record[group]), []).append((record["nfe"], value))
        colors = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20").colors
        for k, (name, points) in enumerate(groups.items()):
            nfe, value = zip(*sorted(points))
            ax.plot(nfe, value, marker="os^D"[k // len(colors) % 4], color=colors[k % len(colors)],
                    label=name)  # fmt: skip
        values = [v for points in groups.values() for _, v in points]
        ax.set_xscale("log")
        ax.set_xticks(sorted({n for points in groups.values() for n, _ in points}))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))  # 4 8 16, not 4x10^0
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        if values and min(values) > 0:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        ax.set_xlabel("NFE")
        ax.set_ylabel(metric)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_sample_rows(
    rows: Mapping[str, Tensor], out: str | Path, *, title: str | None = None
) -> Path:
    """One labelled row per entry (e.g. `{"ddim 4": x, "ddim 16": y}`), images `[N, C, H, W]` in
    [-1, 1]; every row shows its first N images (N = the shortest row)."""
    if not rows:
        raise ValueError("rows is empty")
    n = min(len(images) for images in rows.values())
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.5 * n + 1.2, 0.6 * len(rows) + 0.4))
    for ax, (label, images) in zip(getattr(axes, "flat", [axes]), rows.items()):
        grid = image_grid(images[:n], nrow=n)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    _pyplot().close(fig)
    return out
