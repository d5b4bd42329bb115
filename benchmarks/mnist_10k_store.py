"""Shared pieces of the MNIST-at-10k study (`mnist_10k_sample.py`, `mnist_10k_score.py`,
`mnist_10k_report.py`): the samples folder and its `rows.json` store, the scorer (Inception FID,
fd-lenet, LeNet precision/recall against the 10k MNIST test images), the deadline clock and the
flags every phase shares.

Samples are kept as uint8 `.npz` (`<samples-dir>/<row>.npz`), the numbers in
`<samples-dir>/rows.json` (rewritten after every row; a re-run skips finished rows).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
from common import command_line, locked_update, machine, united

TEACHER = "src/difflab/assets/mnist_uvit.safetensors"
TEACHER_ROWS = ("ddim@8", "ddpm@8", "ddim@32", "ddim@256")


# --------------------------------------------------------------------------- the store
def merge_stores(disk: dict, mine: dict) -> dict:
    """`disk` updated with `mine`: rows merged field by field (mine wins), lists (commands)
    united in order, other keys replaced, nested dicts (machine, seconds) merged."""
    out = dict(disk)
    for key, value in mine.items():
        old = disk.get(key)
        if key == "rows" and isinstance(old, dict):
            out[key] = dict(old)
            for name, row in value.items():
                out[key][name] = {**old.get(name, {}), **row}
        elif isinstance(value, list) and isinstance(old, list):
            out[key] = united(old, value)
        elif isinstance(value, dict) and isinstance(old, dict):
            out[key] = {**old, **value}
        else:
            out[key] = value
    return out


class Store:
    """`rows.json` in the samples folder: ordered rows with their numbers, saved atomically.
    Several processes may share a folder (e.g. one samples students while another adds FIDs):
    each save merges this process's rows into the file's under a lock, field by field, so no
    process drops what another wrote."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / "rows.json"
        folder.mkdir(parents=True, exist_ok=True)
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"rows": {}}

    @property
    def rows(self) -> dict[str, dict]:
        return self.data["rows"]

    def save(self, copy_to: str | None = None) -> None:
        self.data = locked_update(self.path, self.data, lambda mine, disk: merge_stores(disk, mine))
        if copy_to:
            Path(copy_to).mkdir(parents=True, exist_ok=True)
            (Path(copy_to) / "rows.json").write_text(self.path.read_text())

    def samples_file(self, name: str) -> Path:
        return samples_file(self.folder, name)

    def put_samples(self, name: str, images) -> np.ndarray:
        """Keep `images` (a tensor in [-1, 1]) as uint8; returns them."""
        from difflab.eval.features import to_uint8

        u8 = to_uint8(images.float().clamp(-1, 1)).numpy()
        np.savez(self.samples_file(name), images=u8)
        return u8

    def get_samples(self, name: str) -> np.ndarray:
        return read_samples(self.samples_file(name))


def samples_file(folder: Path, name: str) -> Path:
    """Where a row's uint8 samples are kept in a samples folder."""
    return folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".npz")


def read_samples(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as f:
        return f["images"]


class Clock:
    """Seconds since start against `--deadline`; rows past it are recorded as skipped."""

    def __init__(self, deadline: float):
        self.start, self.deadline = time.monotonic(), deadline

    def out(self, needed: float = 0.0) -> bool:
        """Whether the deadline has passed (or would, `needed` seconds from now)."""
        return time.monotonic() - self.start + needed > self.deadline


# --------------------------------------------------------------------------- scoring
class Scorer:
    """Frechet distance in each feature space against the MNIST test statistics, and LeNet
    precision/recall (k = 3) against the test images' LeNet features."""

    def __init__(self, features: list[str], device: str):
        from difflab.eval.features import get_feature_extractor
        from difflab.eval.reference import DATASETS, compute_reference_stats, load_reference_stats

        self.extractors = {name: get_feature_extractor(name, device) for name in features}
        self.refs, self.ref_seconds = {}, {}
        for name, ex in self.extractors.items():
            start = time.perf_counter()
            try:
                self.refs[name] = load_reference_stats("mnist", "test", ex)
            except FileNotFoundError:
                print(f"computing the {name} statistics of the MNIST test set on {device}")
                compute_reference_stats("mnist", "test", name, device=device)
                self.refs[name] = load_reference_stats("mnist", "test", ex)
                self.ref_seconds[name] = time.perf_counter() - start
        self.test_lenet = None
        if "fd-lenet" in self.extractors:
            test = DATASETS["mnist"]("test")
            self.test_lenet = self.extractors["fd-lenet"](test, progress=False)

    def __call__(self, images: np.ndarray) -> dict:
        import torch

        from difflab.eval.metrics import feature_stats, frechet_distance, precision_recall

        out = {}
        for name, ex in self.extractors.items():
            start = time.perf_counter()
            feats = ex(torch.from_numpy(images), progress=False)
            out[name] = frechet_distance(feature_stats(feats), self.refs[name])
            out[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
            if name == "fid":
                out["fid_runtime"] = ex.runtime
            if name == "fd-lenet":
                pr = precision_recall(self.test_lenet, feats)
                out["precision"], out["recall"] = pr.precision, pr.recall
        return out


def student_fields(path: Path) -> dict:
    """A student's method (`mcm-cd`, `mmd-alternating`, ...), its number of steps and its
    training (steps, batch; for a run directory also the device and the wall time, the sum of
    the logged throughput of each interval, without checkpoint writes)."""
    from difflab.methods.distill import read_student_spec
    from difflab.train import read_metrics

    record = read_student_spec(path)
    variant = record["config"].get("variant", "")
    out = {"method": f"{record['method']}-{variant}" if variant else record["method"],
           "student_steps": int(record["steps"])}  # fmt: skip
    if path.is_file():  # an exported model: its metadata has the step and the run's config
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        config = json.loads(meta.get("difflab_config", "{}"))
        return out | {"train_steps": int(meta["step"]) if "step" in meta else None,
                      "train_batch": config.get("data", {}).get("batch_size")}  # fmt: skip
    records = read_metrics(path / "metrics.jsonl")
    batch = next((r["global_batch"] for r in records if "global_batch" in r), None)
    device = next((r["device"] for r in records if "device" in r), None)
    out |= {"train_steps": max((r["step"] for r in records if "step" in r), default=0),
            "train_batch": batch, "train_device": device}  # fmt: skip
    logged = [(r["step"], r["images_per_s"]) for r in records if "images_per_s" in r]
    if batch and logged:
        previous = [0] + [step for step, _ in logged[:-1]]
        out["train_seconds"] = round(
            sum((step - prev) * batch / rate for (step, rate), prev in zip(logged, previous)), 1
        )
    return out


def fmt(v) -> str:
    if not isinstance(v, float) or not math.isfinite(v):
        return str(v) if v is not None else ""
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def fmt_row(row: dict) -> str:
    keys = ("nfe", "jvps", "fid", "fd-lenet", "precision", "recall", "sampling_seconds")
    return "  ".join(f"{k} {fmt(row[k])}" for k in keys if k in row)


# --------------------------------------------------------------------------- the phases' CLI
def phase_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with the flags the sampling and scoring phases share."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--samples-dir", required=True, help="uint8 samples and rows.json")
    p.add_argument("--out-dir", default=None, help="also copy rows.json (and students) here")
    p.add_argument("--device", default="auto")
    p.add_argument("--teacher", default=TEACHER)
    p.add_argument("--num", type=int, default=10_000, help="samples per row")
    p.add_argument("--batch", type=int, default=2500, help="samples per sampler call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nfe", type=int, nargs="*", default=[8, 10], help="the samplers' main NFE")
    p.add_argument("--deadline", type=float, default=math.inf, help="seconds for this phase")
    from difflab.cli.eval import add_fid_runtime_argument

    add_fid_runtime_argument(p)
    return p


def run_phase(p: argparse.ArgumentParser, argv, phase: str, features: list[str], body) -> int:
    """Parse the flags, open the store, run `body(args, store, clock)`, close the store."""
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from difflab.cli.eval import use_fid_runtime

    use_fid_runtime(args)
    store, clock = open_phase(args, phase, features)
    body(args, store, clock)
    close_phase(args, store, clock, phase)
    return 0


def open_phase(args, phase: str, features: list[str]) -> tuple[Store, Clock]:
    """The samples folder's store with this phase's machine and command recorded, the clock."""
    from difflab.devices import resolve_device

    args.device = str(resolve_device(args.device))
    args.features = args.features or features
    store, clock = Store(Path(args.samples_dir)), Clock(args.deadline)
    store.data.setdefault("machine", {})[phase] = machine(args.device)
    command = command_line(args.argv)
    if command not in store.data.setdefault("commands", []):
        store.data["commands"].append(command)
    store.data.setdefault("num", args.num)
    return store, clock


def close_phase(args, store: Store, clock: Clock, phase: str) -> None:
    store.data.setdefault("seconds", {})[phase] = round(time.monotonic() - clock.start, 1)
    store.save(args.out_dir)
