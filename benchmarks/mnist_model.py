"""Quality of the shipped MNIST model across samplers and step counts.

    python benchmarks/mnist_model.py --num 2000 \
        --settings ddim:8 ddim:16 ddim:32 ddpm:32 \
        --metrics fd-lenet,pr-lenet --out results/mnist_model

Writes `<out>/results.json` and `<out>/README.md`. fd-lenet is a Frechet distance in the
features of difflab's own MNIST LeNet (not FID); `fid` is Inception FID against MNIST-test
statistics, comparable in preprocessing to published numbers but biased upward at small sample
counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import (
    RAW,
    command_line,
    machine,
    markdown_table,
    read_json,
    record_run,
    study_folder,
    utc_now,
    write_json,
    write_report,
)


def main() -> None:

    from difflab import api
    from difflab.eval.scores import feature_metrics, parse_metrics

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: the shipped model")
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--settings", nargs="+", default=["ddim:8", "ddim:16", "ddim:32", "ddpm:32"])
    p.add_argument("--metrics", default="fd-lenet,pr-lenet")
    p.add_argument("--ref-num", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/mnist_model", help="the study folder")
    a = p.parse_args()
    metrics = parse_metrics(a.metrics)
    model = a.model or str(api.shipped_model_path())
    rows = []
    for setting in a.settings:
        sampler, steps = setting.split(":")
        result = api.sample(
            model, num=a.num, sampler=sampler, steps=int(steps), seed=a.seed, progress=False
        )
        row = {"sampler": sampler, "steps": int(steps), "nfe": result.nfe}
        row["sampling_seconds"] = round(result.seconds, 1)
        row.update(feature_metrics(result.samples, metrics, ref_num=a.ref_num))
        rows.append(row)
        print(json.dumps(row))
    m = machine()
    setup = {
        "model": model,
        "num_samples": a.num,
        "seed": a.seed,
        "reference": f"mnist/test (first {a.ref_num} for KID/PR; all 10k for FD stats)",
        "machine": f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
        f"{m['torch_threads']} threads",
        "date": utc_now(),
    }
    folder = study_folder(a.out)
    write_json(folder / RAW, {"setup": setup, "records": rows})
    write_report(folder, render(setup, rows))
    record_run(folder, command_line())


def render(setup: dict, rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("sampler", "steps")]
    lines = [
        "# Shipped MNIST model: quality by sampler and steps (`benchmarks/mnist_model.py`)",
        "",
        *(f"- {k}: {v}" for k, v in setup.items()),
        "- fd-lenet = Frechet distance in difflab's MNIST LeNet features (not FID).",
        "",
    ]
    cells = [
        [row["sampler"], row["steps"], *(f"{row[k]:.4g}" if isinstance(row[k], float) else row[k]
                                         for k in keys)]
        for row in rows
    ]  # fmt: skip
    lines += markdown_table(["sampler", "steps", *keys], cells, "lr" + "r" * len(keys))
    return "\n".join(lines) + "\n"


def report_text(folder: Path) -> str:
    data = read_json(Path(folder) / RAW)
    return render(data["setup"], data["records"])


if __name__ == "__main__":
    main()
