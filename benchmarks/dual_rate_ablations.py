"""Dual-Rate Diffusion ablations on MNIST: feature dropout off, last-level features only, a larger
light net; each a retrained `configs/dual_rate_mnist.yaml` plus overrides, scored at a few
sampler settings against the main dual-rate model.

    python benchmarks/dual_rate_ablations.py --ablation no_dropout --num 500 \
        --settings 16:1 16:4 32:4 32:8 --out results/dual_rate

One ablation per call (each trains for about ten CPU minutes); rows land in the `ablations` key
of `<out>/results.json`, and the main model's rows at the same settings are scored too (once)
so the comparison is at equal samples and seed. fd-lenet: Frechet distance in difflab's MNIST
LeNet features (not FID).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import (
    RAW,
    command_line,
    read_json,
    record_run,
    study_folder,
    update_results,
    write_report,
)
from dual_rate_frontier import model_record, report_text, score_row

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dual_rate_mnist.yaml"
ABLATIONS = {
    "no_dropout": ["model.kwargs.feature_dropout=0.0"],
    "last_level": ["model.kwargs.feature_levels=last"],
    "light_24_48": ["model.kwargs.light_channels=[24,48]"],
}
"""Name -> overrides of the main dual-rate config."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ablation", required=True, choices=sorted(ABLATIONS) + ["main"])
    p.add_argument("--main", default="runs/dual_rate/mnist", help="the main dual-rate run")
    p.add_argument("--settings", nargs="+", default=["16:1", "16:4", "32:4", "32:8"],
                   help="STEPS:K of dual_rate_ddpm")  # fmt: skip
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default="runs/dual_rate")
    p.add_argument("--out", default="results/dual_rate")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    folder = study_folder(a.out)
    stored = read_json(folder / RAW, {}) or {}
    ablations = dict(stored.get("ablations", {}))
    if a.ablation == "main":
        run = a.main
    else:
        import difflab.methods  # noqa: F401  (registers the dual_rate training method)
        from difflab.config import load_config
        from difflab.train import run_training

        out = Path(a.work_dir) / f"ablation_{a.ablation}"
        overrides = [*ABLATIONS[a.ablation], f"train.out_dir={out}", "train.max_minutes=22"]
        cfg = load_config(CONFIG, overrides)
        run = str(run_training(cfg, resume=True))
    entry = ablations.get(a.ablation, {"model": model_record(run), "rows": {}})
    entry["overrides"] = ABLATIONS.get(a.ablation, [])
    for setting in a.settings:
        steps, k = (int(v) for v in setting.split(":"))
        key = f"{steps}|{k}|{a.seed}"
        if key in entry["rows"]:
            continue
        row = score_row(run, "dual_rate_ddpm", steps, {"refresh_every": k}, a.num, a.seed)
        entry["rows"][key] = row
        ablations[a.ablation] = entry
        update_results(folder, {"ablations": ablations})
        print(json.dumps(row), flush=True)
    write_report(folder, report_text(folder))
    record_run(folder, command_line())


if __name__ == "__main__":
    main()
