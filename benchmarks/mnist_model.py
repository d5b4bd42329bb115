"""Quality of the shipped MNIST model across samplers and step counts.

    python benchmarks/mnist_model.py --num 2000 --settings ddim:8 ddim:16 ddim:32 ddpm:32 \
        --metrics fd-lenet,pr-lenet --out results/mnist_model

Writes `<out>.json` and `<out>.md`. fd-lenet is a Frechet distance in the features of difflab's
own MNIST LeNet (not FID); `fid` is Inception FID against MNIST-test statistics, comparable in
preprocessing to published numbers but biased upward at small sample counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from difflab.cli import sample_checkpoint, shipped_model_path
from difflab.eval.cli import feature_metrics, parse_metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: the shipped model")
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--settings", nargs="+", default=["ddim:8", "ddim:16", "ddim:32", "ddpm:32"])
    p.add_argument("--metrics", default="fd-lenet,pr-lenet")
    p.add_argument("--ref-num", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/mnist_model")
    a = p.parse_args()
    metrics = parse_metrics(a.metrics)
    model = a.model or str(shipped_model_path())
    rows = []
    for setting in a.settings:
        sampler, steps = setting.split(":")
        result, _ = sample_checkpoint(
            model, sampler=sampler, steps=int(steps), num=a.num, seed=a.seed, progress=False
        )
        row = {"sampler": sampler, "steps": int(steps), "nfe": result.nfe}
        row["sampling_seconds"] = round(result.seconds, 1)
        row.update(feature_metrics(result.samples, metrics, ref_num=a.ref_num))
        rows.append(row)
        print(json.dumps(row))
    setup = {
        "model": model,
        "num_samples": a.num,
        "seed": a.seed,
        "reference": f"mnist/test (first {a.ref_num} for KID/PR; all 10k for FD stats)",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"setup": setup, "records": rows}, indent=1))
    keys = [k for k in rows[0] if k not in ("sampler", "steps")]
    lines = [
        "# Shipped MNIST model: quality by sampler and steps (`benchmarks/mnist_model.py`)",
        "",
        *(f"- {k}: {v}" for k, v in setup.items()),
        "- fd-lenet = Frechet distance in difflab's MNIST LeNet features (not FID).",
        "",
        "| sampler | steps | " + " | ".join(keys) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    for row in rows:
        vals = [f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append(f"| {row['sampler']} | {row['steps']} | " + " | ".join(vals) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
