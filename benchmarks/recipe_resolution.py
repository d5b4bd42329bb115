"""Simple diffusion's resolution claim (issue 15): at 64x64, does the shifted cosine schedule
beat the plain cosine at equal training compute? Fashion-MNIST upsampled bilinearly to 64x64.

Trains (or resumes, or skips when finished) each `--configs` file for each seed under `--runs`,
then scores it: `--num` class-conditional samples at `--steps` with each sampler (same noise
seed), mapped to 28x28 by the least-squares inverse of the bilinear upsampling and compared
with the Fashion-MNIST test split in difflab's Fashion-MNIST LeNet features (fd-lenet-fashion:
a Frechet distance, not FID). The floor beside it: real train images, as they are and
upsampled to 64x64 and mapped back.
The configs differ only in their schedule (docs/methods/recipe.md, "Resolution").

    python benchmarks/recipe_resolution.py --seeds 0             # both configs, seed 0
    python benchmarks/recipe_resolution.py --seeds 1             # a second seed
    python benchmarks/recipe_resolution.py --report results/recipe/res64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from common import (
    RAW,
    ROOT,
    command_line,
    fmt_sig,
    locked_update,
    machine,
    markdown_table,
    read_json,
    record_run,
    write_json,
    write_report,
)

CONFIGS = ("configs/recipe_res64_cosine.yaml", "configs/recipe_res64_shifted.yaml")
DATASET = "fashion_mnist"
SCORED_SIZE = 28
"""Samples are resized to the LeNet's 28x28 before scoring."""


def row_name(config: str) -> str:
    """`configs/recipe_res64_shifted.yaml` -> `shifted`."""
    return Path(config).stem.removeprefix("recipe_res64_")


def to_scored_size(images):
    """`[N, 1, 64, 64]` -> `[N, 1, 28, 28]`: the least-squares inverse of the dataset's bilinear
    upsampling `U` (`x28 = P x64 P^T`, `P = pinv(U)`, `U` the 1-d 28 -> 64 map): a real image
    upsampled by the dataset comes back exactly, and what a sample adds outside the range of
    `U` (detail finer than the 28x28 content) is projected out rather than blurred in."""
    import torch

    p = inverse_upsampling(images.shape[-1]).to(images)
    return torch.einsum("ih,nchw,jw->ncij", p, images, p)


def inverse_upsampling(size: int):
    """`pinv(U)` `[28, size]` for the 1-d bilinear map `U` 28 -> `size` of
    `difflab.data.datasets.upsample_image`, in float64."""
    import torch

    from difflab.data.datasets import upsample_image

    eye = torch.eye(SCORED_SIZE, dtype=torch.float64)
    # upsampling a one-pixel-high image of the unit rows gives U^T row by row (separable map)
    rows = upsample_image(eye[:, None, :].expand(-1, SCORED_SIZE, -1), size)[:, 0, :]
    return torch.linalg.pinv(rows.T)


def lenet_scorer(device: str):
    """`fd(images [N, 1, 28, 28]) -> float`: fd-lenet-fashion against the test split."""
    from difflab.eval.features import LENET_METRICS, get_feature_extractor
    from difflab.eval.metrics import frechet_distance
    from difflab.eval.reference import cached_reference_stats

    lenet = get_feature_extractor(LENET_METRICS[DATASET], device)
    stats = cached_reference_stats(DATASET, "test", lenet)
    return lambda images: frechet_distance(lenet(images.clamp(-1, 1)), stats)


def train(config: str, seed: int, args) -> dict:
    """Train (resume; skip when finished) one config and seed; its compute record."""
    import torch

    from difflab.config import load_config
    from difflab.nets import build_net
    from difflab.nets.cost import count_parameters, flops_per_forward
    from difflab.train import run_training

    out_dir = Path(args.runs) / f"{row_name(config)}_s{seed}"
    cfg = load_config(config, [f"train.seed={seed}", f"train.out_dir={out_dir}", *args.set])
    wall_file = out_dir / "recipe_wall.json"
    spent = float(read_json(wall_file, {"seconds": 0.0})["seconds"])
    start = time.perf_counter()
    run_training(cfg, resume=True)
    spent += time.perf_counter() - start
    write_json(wall_file, {"seconds": spent})
    net = build_net(cfg.model.name, **cfg.model.kwargs)
    images = cfg.train.steps * cfg.data.batch_size
    with torch.no_grad():
        forward = flops_per_forward(net, (1, *net_shape(net)))
    return {
        "schedule": cfg.diffusion.schedule,
        "schedule_kwargs": dict(cfg.diffusion.schedule_kwargs),
        "params": count_parameters(net),
        "train_images": images,
        "train_pflops": 3 * forward * images / 1e15,  # forward + backward ~ 3 forwards
        "train_seconds": round(spent, 1),
        "run_dir": str(out_dir),
    }


def net_shape(net) -> tuple[int, int, int]:
    c = net.config
    return (c.in_channels, c.resolution, c.resolution)


def score(run_dir: str, fd, args) -> dict:
    """fd-lenet-fashion of `--num` samples per sampler (resized to 28x28)."""
    from difflab.api import load, sample

    model = load(run_dir, device=args.device)
    fds, nfe = {}, {}
    for name in args.samplers:
        gen = sample(model, num=args.num, sampler=name, steps=args.steps, seed=args.sample_seed,
                     batch_size=args.batch, progress=False)  # fmt: skip
        fds[name], nfe[name] = fd(to_scored_size(gen.samples.float())), gen.nfe
    best = min(fds, key=fds.get)
    return {"fd_by_sampler": fds, "nfe": nfe, "best_sampler": best, "fd": fds[best],
            "num": args.num}  # fmt: skip


def real_floor(fd, num: int) -> dict:
    """The first `num` train images: as they are, and upsampled to 64x64 by the dataset and
    resized back (the resampling's own cost)."""
    import torch

    from difflab.data import make_dataset

    raw = make_dataset(DATASET, "train")
    up = make_dataset(DATASET, "train", resolution=64)
    n = min(num, len(raw))
    native = torch.stack([raw[i][0] for i in range(n)])
    round_trip = to_scored_size(torch.stack([up[i][0] for i in range(n)]))
    return {"num": n, "fd_native": fd(native), "fd_round_trip": fd(round_trip)}


def save_row(folder: Path, key: str, rec: dict) -> None:
    def merge(mine: dict, stored: dict) -> dict:
        return {**stored, "rows": {**stored.get("rows", {}), **mine}}

    locked_update(folder / RAW, {key: rec}, merge)


def update_key(folder: Path, key: str, value) -> None:
    locked_update(folder / RAW, {key: value}, lambda mine, stored: {**stored, **mine})


# --------------------------------------------------------------------------- report
def report_text(folder: str | Path) -> str:
    data = read_json(Path(folder) / RAW, {})
    setup, rows, real = data.get("setup", {}), data.get("rows", {}), data.get("real", {})
    samplers = setup.get("samplers", [])
    lines = [
        "# Resolution: cosine vs shifted cosine schedule at 64x64 (Fashion-MNIST upsampled)",
        "",
        f"Configs {', '.join(f'`{c}`' for c in setup.get('configs', []))}: the same net, data "
        "and steps (equal compute), only the schedule differs. Samples: "
        f"{setup.get('num')} per sampler at {setup.get('steps')} steps (same noise seed), "
        "mapped to 28x28 by the least-squares inverse of the bilinear upsampling; "
        "fd-lenet-fashion: Frechet distance in difflab's Fashion-MNIST LeNet features against "
        "the 10k test images, not FID. "
        "`a ± b`: mean ± half-range over seeds.",
        "",
    ]
    by_row: dict[str, list[dict]] = {}
    for rec in rows.values():
        if "fd" in rec:
            by_row.setdefault(rec["row"], []).append(rec)
    if not by_row:
        return "\n".join([*lines, "No row scored yet.", ""])

    def cell(values: list[float]) -> str:
        mean = statistics.fmean(values)
        half = (max(values) - min(values)) / 2
        return fmt_sig(mean) + (f" ± {fmt_sig(half, 2)}" if len(values) > 1 else "")

    head = ["schedule", "seeds", *(f"fd `{s}`" for s in samplers), "train PFLOPs", "train s"]
    table = []
    for row, recs in by_row.items():
        table.append([f"`{row}`", str(len(recs)),
                      *(cell([r["fd_by_sampler"][s] for r in recs]) for s in samplers),
                      fmt_sig(recs[0]["train_pflops"]),
                      cell([r["train_seconds"] for r in recs])])  # fmt: skip
    if real:
        table.append([f"real train images ({real['num']}), 64x64 and back", "-",
                      *[fmt_sig(real["fd_round_trip"])] * len(samplers), "-", "-"])  # fmt: skip
        table.append([f"real train images ({real['num']}), 28x28", "-",
                      *[fmt_sig(real["fd_native"])] * len(samplers), "-", "-"])  # fmt: skip
    lines += markdown_table(head, table)
    lines += ["", "Schedules:", ""]
    for row, recs in by_row.items():
        lines.append(f"- `{row}`: `{recs[0]['schedule']}` {recs[0]['schedule_kwargs']}")
    machines = [f"`{k}`: {v.get('gpu') or v.get('cpu')}, {v.get('cores')} cores, "
                f"{v.get('torch_threads')} torch threads, torch {v.get('torch')}"
                for k, v in setup.get("machines", {}).items()]  # fmt: skip
    lines += ["", "Machines: " + "; ".join(machines) + ".", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--set", action="append", default=[], help="extra override for every run")
    p.add_argument("--runs", default=str(ROOT / "runs" / "recipe" / "res64"))
    p.add_argument("--out", default="results/recipe/res64")
    p.add_argument("--num", type=int, default=1000, help="samples per sampler")
    p.add_argument("--samplers", default="ddpm,dpmpp_2m")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=250, help="sampling batch size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--machine-name", default=None)
    p.add_argument("--train-only", action="store_true", help="train, do not score")
    p.add_argument("--report", metavar="FOLDER", help="only re-render FOLDER's README.md")
    args = p.parse_args(argv)
    if args.report:
        write_report(args.report, report_text(args.report))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    folder = Path(args.out)
    configs = [c for c in args.configs.split(",") if c]
    args.samplers = [s for s in args.samplers.split(",") if s]
    label = args.machine_name or ("gpu" if args.device.startswith("cuda") else "cpu")
    stored = read_json(folder / RAW, {}).get("setup", {})
    update_key(folder, "setup", {
        "configs": list(dict.fromkeys([*stored.get("configs", []), *configs])),
        "num": args.num, "steps": args.steps, "samplers": args.samplers,
        "machines": {**stored.get("machines", {}), label: machine(args.device)},
    })  # fmt: skip
    fd = None if args.train_only else lenet_scorer(args.device)
    if fd is not None and "real" not in read_json(folder / RAW, {}):
        update_key(folder, "real", real_floor(fd, args.num))
    for seed in (int(s) for s in args.seeds.split(",")):
        for config in configs:
            key = f"{row_name(config)}/s{seed}"
            done = read_json(folder / RAW, {}).get("rows", {}).get(key, {})
            if "fd" in done or (args.train_only and done):
                print(f"{key}: done, skipped", flush=True)
                continue
            rec = {"row": row_name(config), "config": config, "seed": seed, "machine": label,
                   **train(config, seed, args)}  # fmt: skip
            if fd is not None:
                rec.update(score(rec["run_dir"], fd, args))
            save_row(folder, key, rec)
            print(f"{key}: fd={rec.get('fd')} ({rec.get('best_sampler')}), "
                  f"train {rec['train_seconds']} s", flush=True)  # fmt: skip
    record_run(folder, command_line(argv, "benchmarks/recipe_resolution.py"), args.device)
    write_report(folder, report_text(folder))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
