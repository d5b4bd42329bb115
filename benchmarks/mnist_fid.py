"""Inception FID of the shipped MNIST model at a few settings, with the real-data floor.

The numbers come from `difflab eval` (one JSON record per row, appended to
`results/mnist_fid/results.json`), the last row for the 8-step MMD student that
`benchmarks/distill_mnist.py` trains (`results/distill_mnist/`); `--run` executes the
commands below (about 20 min per row on one shared CPU core, Inception dominates) and a cheap
diagnostic on 256 samples per row (`diagnostics.json`, with the machine): the share of
near-black pixels (<= 2/255) and of faint grey ones (3-49/255), which Inception sees and LeNet
hardly does. The table is rendered to `results/mnist_fid/README.md` from the two files.

    python benchmarks/mnist_fid.py --run     # all rows (~100 min here), then the table
    python benchmarks/mnist_fid.py           # only re-render the table from the JSON
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from common import (
    RAW,
    machine,
    markdown_table,
    read_json,
    record_run,
    study_folder,
    write_json,
    write_report,
)

MODEL = "src/difflab/assets/mnist_uvit.safetensors"
ROWS = [("ddim", 8), ("dpmpp_2m", 8), ("ddim", 32)]
METRICS = "fid,fd-lenet,pr-lenet"
STUDENT = "runs/bench_distill/mnist/mmd_alternating_k8_lr0.0001"  # benchmarks/distill_mnist.py
DIAGNOSTICS = "diagnostics.json"


def commands(num: int, out: str) -> list[list[str]]:
    common = ["--metric", METRICS, "--num", str(num), "--out", out]
    rows = [["difflab", "eval", MODEL, "--sampler", s, "--steps", str(k), *common] for s, k in ROWS]
    student = ["difflab", "eval", STUDENT, *common]  # its recorded sampler and steps
    return rows + [["difflab", "eval", "real", "mnist", "--split", "train", *common], student]


def pixel_shares(images: torch.Tensor) -> dict:
    """Shares of near-black (<= 2/255) and faint grey (3..49/255) pixels of images in [-1, 1]."""
    u = ((images.clamp(-1, 1) + 1) * 127.5).round().flatten()
    return {
        "black": float((u <= 2).float().mean()),
        "grey": float(((u > 2) & (u < 50)).float().mean()),
    }


def diagnostics(num: int = 256) -> dict[str, dict]:
    from difflab import api
    from difflab.data.mnist import load_mnist

    out = {}
    for sampler, steps in ROWS:
        result = api.sample(MODEL, num=num, sampler=sampler, steps=steps, progress=False)
        out[f"{sampler}@{steps}"] = pixel_shares(result.samples)
    if Path(STUDENT).is_dir():  # its recorded sampler and steps
        result = api.sample(STUDENT, num=num, progress=False)
        out[f"{Path(STUDENT).name}: {result.sampler}@{result.steps}"] = pixel_shares(result.samples)
    images, _ = load_mnist("train")
    out["real"] = pixel_shares(torch.from_numpy(images[:num]).float() / 127.5 - 1)
    return out


def render(records: list[dict], diagnosed: dict, num: int) -> str:
    """The table of the `difflab eval` records with the pixel shares and the machine of
    `diagnostics.json`."""
    shares = diagnosed["pixel_shares"]
    lines = [
        "# Inception FID of the shipped MNIST model (`benchmarks/mnist_fid.py`)",
        "",
        f"`{MODEL}`; {num} samples per row (class labels cycled, seed 0) against the Inception",
        "statistics of the 10k MNIST test images (`difflab eval refstats mnist --split test "
        "--feature fid`); FID at 2k samples carries a positive bias against a 10k FID, the same",
        "for every row, and the `real` row (2k MNIST training images) is that floor. fd-lenet and",
        "precision/recall use difflab's LeNet features (not FID).",
        f"Machine: {diagnosed['machine']}.",
        "",
    ]
    cells = []
    for r in records:
        key = r.get("real", f"{r.get('sampler')}@{r.get('steps')}")
        if r.get("checkpoint", MODEL) != MODEL:  # another model, e.g. a distilled student
            key = f"{Path(r['checkpoint']).name}: {key}"
        share = shares.get("real" if "real" in r else key, {})
        cells.append([
            key, r.get("nfe", "-"), f"{r['fid']:.1f}", f"{r['fd-lenet']:.1f}",
            f"{r['pr-lenet_precision']:.3f}", f"{r['pr-lenet_recall']:.3f}",
            f"{share.get('black', float('nan')):.2f}", f"{share.get('grey', float('nan')):.2f}",
            f"{r['feature_seconds']:.0f}",
        ])  # fmt: skip
    header = ["row", "NFE", "FID", "fd-lenet", "precision", "recall", "black px", "grey px",
              "feature s"]  # fmt: skip
    lines += markdown_table(header, cells, "l" + "r" * 8)
    lines += [
        "",
        "black/grey px: shares of pixels <= 2/255 and in 3..49/255 on 256 samples per row; "
        "feature s: seconds of feature extraction (Inception and LeNet) for the row, shared CPU.",
        "",
        "Commands:",
        "",
        *[f"    {' '.join(c)}" for c in commands(num, f"results/mnist_fid/{RAW}")],
    ]
    return "\n".join(lines) + "\n"


def report_text(folder: Path) -> str:
    """The report of the stored records and pixel shares (`--num` is the records' `num`)."""
    records = read_json(Path(folder) / RAW)
    return render(records, read_json(Path(folder) / DIAGNOSTICS), records[0]["num"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="store_true", help="run the difflab eval commands first")
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--out", default="results/mnist_fid", help="the study folder")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    folder = study_folder(args.out)
    if args.run:
        for cmd in commands(args.num, str(folder / RAW)):
            subprocess.run(cmd, check=True)
            record_run(folder, shlex.join(cmd))
        m = machine()
        where = f"{m['cpu']}, {m['cores']} CPU cores, {m['torch_threads']} torch thread per job"
        diagnosed = {"machine": f"{where}, torch {m['torch']}", "pixel_shares": diagnostics()}
        write_json(folder / DIAGNOSTICS, diagnosed)
    if not (folder / RAW).is_file():
        sys.exit(f"{folder / RAW} is missing: run with --run first")
    write_report(folder, report_text(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
