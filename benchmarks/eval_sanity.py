"""Sanity check of feature distances: small for MNIST-train vs -test, growing with corruption.

Every row compares a set of MNIST images with one fixed reference set (a seeded random subset of
MNIST-train) under Inception FID (`fid`, needs `difflab[fid]`) and `fd-lenet`:

- `test (clean)`: the first `num` MNIST-test images: the noise floor of the metric at this `num`.
- `noise s`: the same test images plus Gaussian noise of std `s` (in units of the [0, 1] range).
- `blur s`: the same test images blurred with a Gaussian kernel of std `s` pixels.

Each corruption family must give a distance that increases with its level. Writes
`results/eval_sanity/README.md` and `results.json` (machine, sample counts, seeds, timings).

    python benchmarks/eval_sanity.py --num-fid 1000 --num-lenet 10000

With `--throughput N`, first measures Inception feature extraction of N MNIST images under each
speed setting (fp32 baseline, channels-last, TorchScript freeze, threads, batch size, glibc malloc
fix, the onnxruntime runtime of `difflab[fid-onnx]`), interleaved in rounds so that load from
other processes affects all settings alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.ndimage
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

from difflab.allocator import apply_malloc_fix, malloc_fix_applied
from difflab.data.mnist import load_mnist
from difflab.eval.features import InceptionFeatures, get_feature_extractor
from difflab.eval.metrics import feature_stats, frechet_distance, kernel_inception_distance

NOISE_LEVELS = (0.05, 0.1, 0.2)
BLUR_LEVELS = (0.5, 1.0, 1.5)


def add_noise(images: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    noisy = images / 255.0 + std * rng.standard_normal(images.shape)
    return np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)


def blur(images: np.ndarray, std: float) -> np.ndarray:
    # Blur H and W only (sigma 0 along N and C).
    out = scipy.ndimage.gaussian_filter(images.astype(np.float64), (0, 0, std, std))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def image_sets(num: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The reference (train subset) and the compared sets, uint8 `[num, 1, 28, 28]`."""
    train, _ = load_mnist("train")
    test, _ = load_mnist("test")
    rng = np.random.default_rng(seed)
    reference = train[rng.choice(len(train), num, replace=False)][:, None]
    clean = test[:num][:, None]
    sets = {"test (clean)": clean}
    sets |= {f"noise {s}": add_noise(clean, s, rng) for s in NOISE_LEVELS}
    sets |= {f"blur {s}": blur(clean, s) for s in BLUR_LEVELS}
    return reference, sets


def evaluate(feature: str, num: int, seed: int, batch_size: int | None) -> dict:
    extractor = get_feature_extractor(feature)
    reference, sets = image_sets(num, seed)
    timings = {}

    def extract(name: str, images: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = extractor(images, batch_size=batch_size)
        timings[name] = time.perf_counter() - start
        return out

    ref = extract("reference", reference)
    ref_stats = feature_stats(ref)
    rows = {}
    for name, images in sets.items():
        feats = extract(name, images)
        kid = kernel_inception_distance(ref, feats, subset_size=min(1000, num), seed=seed)
        rows[name] = {"fd": frechet_distance(ref_stats, feats), "kid": kid.mean, "kid_std": kid.std}
    seconds = sum(timings.values())
    return {
        "feature": extractor.name,
        "sha256": extractor.sha256,
        "num": num,
        "rows": rows,
        "extract_seconds": timings,
        "images_per_second": (len(sets) + 1) * num / seconds,
        "monotone": {
            family: bool(
                np.all(
                    np.diff(
                        [rows["test (clean)"]["fd"]] + [rows[f"{family} {s}"]["fd"] for s in levels]
                    )
                    > 0
                )
            )
            for family, levels in (("noise", NOISE_LEVELS), ("blur", BLUR_LEVELS))
        },
    }


SPEED_SETTINGS = {
    # name: (InceptionFeatures kwargs, batch size, torch threads). One thread except the last:
    # on a shared machine the CPU time of one thread is the contention-robust measure of work.
    "fp32 baseline": ({"channels_last": False, "freeze": False}, 16, 1),
    "+ channels_last": ({"channels_last": True, "freeze": False}, 16, 1),
    "+ channels_last + freeze": ({"channels_last": True, "freeze": True}, 16, 1),
    "+ channels_last + freeze, batch 4": ({"channels_last": True, "freeze": True}, 4, 1),
    "+ channels_last + freeze, 2 threads": ({"channels_last": True, "freeze": True}, 16, 2),
    "onnxruntime (same network, ONNX export)": ({"runtime": "onnxruntime"}, 16, 1),
    "onnxruntime, 2 threads": ({"runtime": "onnxruntime"}, 16, 2),
}
ONNX_SETTING, TORCH_SETTING = "onnxruntime (same network, ONNX export)", "+ channels_last + freeze"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def throughput_worker(num: int, rounds: int) -> dict:
    """Wall images/s and CPU seconds per image (medians over rounds) of each speed setting."""
    images = load_mnist("test")[0][:num, None]
    nets = {}
    for name, (kwargs, _, threads) in SPEED_SETTINGS.items():
        torch.set_num_threads(threads)  # onnxruntime fixes its thread count when it is built
        nets[name] = InceptionFeatures(**kwargs)
    wall = {name: [] for name in SPEED_SETTINGS}
    cpu = {name: [] for name in SPEED_SETTINGS}
    feats = {}
    for _ in range(rounds):
        for name, (_, batch_size, threads) in SPEED_SETTINGS.items():
            torch.set_num_threads(threads)
            start, start_cpu = time.perf_counter(), cpu_seconds()
            feats[name] = nets[name](images, batch_size=batch_size, progress=False)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(cpu_seconds() - start_cpu)
    return {
        "malloc_fix": malloc_fix_applied(),
        "onnx_max_abs_diff": float(np.abs(feats[ONNX_SETTING] - feats[TORCH_SETTING]).max()),
        "images_per_second": {k: num / float(np.median(v)) for k, v in wall.items()},
        "cpu_seconds_per_image": {k: float(np.median(v)) / num for k, v in cpu.items()},
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "load_average_at_end": os.getloadavg()[0],
    }


def throughput(num: int, rounds: int) -> list[dict]:
    """Run `throughput_worker` with glibc's default allocator and with difflab's malloc fix."""
    results = []
    for opt_out in ("1", "0"):
        env = dict(os.environ, DIFFLAB_NO_MALLOC_FIX=opt_out)
        cmd = [sys.executable, __file__, "--throughput-worker", str(num), "--rounds", str(rounds)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    return results


def machine_record() -> dict:
    """The machine (`common.machine`) with the allocator fix and the load average at start."""
    return machine() | {
        "malloc_fix": malloc_fix_applied(),
        "load_average_at_start": os.getloadavg()[0],
    }


def markdown(report: dict) -> str:
    lines = [
        "# Feature-distance sanity check (`benchmarks/eval_sanity.py`)",
        "",
        "Reference: a seeded random subset of MNIST-train. Rows: the first `num` MNIST-test",
        "images, clean and corrupted (Gaussian noise std in [0, 1] units; blur std in pixels).",
        "FD must be small for clean test images and increase with each corruption level; with",
        "few samples (Inception: 250 per set, for time on 2 shared cores) FD carries a large",
        "positive bias (the clean row), similar across rows, so the ordering is what counts.",
        "KID uses the cubic kernel on raw features, so its scale depends on the feature net.",
        "`fd-lenet` is a Frechet distance in the features of difflab's MNIST LeNet: not FID.",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"torch {report['machine']['torch']} "
        f"(torch threads: {report['machine']['torch_threads']}), "
        f"load average at start {report['machine']['load_average_at_start']:.1f} "
        "(the machine is shared).",
        f"Seed {report['seed']}. Last command: `{report['command']}`",
        "",
    ]
    if report.get("throughput"):
        num = report["throughput_images"]
        default, fixed = report["throughput"]
        lines += [
            f"## Inception throughput ({num} MNIST images per setting, median of "
            f"{report['throughput_rounds']} interleaved rounds; "
            f"`{report.get('throughput_command', report['command'])}`)",
            "",
            "CPU s/image (user + sys of the process) measures the work; wall images/s is what",
            "this shared machine gave (load averages at the end: "
            f"{default['load_average_at_end']:.1f}, {fixed['load_average_at_end']:.1f}).",
            "",
        ]
        header = ["setting", "CPU s/img, default malloc", "CPU s/img, malloc fix",
                  "wall img/s, default", "wall img/s, fix"]  # fmt: skip
        cells = [[name, f"{default['cpu_seconds_per_image'][name]:.3f}",
                  f"{fixed['cpu_seconds_per_image'][name]:.3f}",
                  f"{default['images_per_second'][name]:.2f}",
                  f"{fixed['images_per_second'][name]:.2f}"]
                 for name in default["images_per_second"]]  # fmt: skip
        lines += markdown_table(header, cells, "lrrrr")
        if "onnx_max_abs_diff" in fixed:
            gap = fixed["onnx_max_abs_diff"]
            lines += ["", f"Largest |feature difference| between `{ONNX_SETTING}` and "
                      f"`{TORCH_SETTING}` on these images: {gap:.2g}."]  # fmt: skip
        lines.append("")
    for result in report["results"]:
        lines += [
            f"## {result['feature']} (num = {result['num']} per set, "
            f"sha256 {result['sha256'][:16]})",
            "",
        ]
        whole = result["num"] <= 1000  # KID subsets of min(1000, num): each is the whole set
        cells = []
        for name, row in result["rows"].items():
            spread = "(whole sets, no spread)" if whole else f"+- {row['kid_std']:.2g}"
            cells.append([name, f"{row['fd']:.4g}", f"{row['kid']:.3g} {spread}"])
        lines += markdown_table(["set", "FD", "KID (mean +- std over subsets)"], cells, "lrr")
        lines += [
            "",
            f"Monotone in corruption: {result['monotone']}. Feature extraction: "
            f"{result['images_per_second']:.1f} images/s "
            f"({sum(result['extract_seconds'].values()):.0f} s for "
            f"{(len(result['rows']) + 1) * result['num']} images"
            + (
                f", torch threads: {result['machine']['torch_threads']}, load average at start "
                f"{result['machine']['load_average_at_start']:.1f}; `{result['command']}`"
                if "machine" in result
                else ""
            )
            + ").",
            "",
        ]
    return "\n".join(lines)


def write(report: dict, folder: Path) -> None:
    write_json(folder / RAW, report, indent=2)
    write_report(folder, markdown(report) + "\n")


def report_text(folder: Path) -> str:
    return markdown(read_json(Path(folder) / RAW)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-fid", type=int, default=1000, help="images per set for Inception")
    parser.add_argument("--num-lenet", type=int, default=10000, help="images per set for fd-lenet")
    parser.add_argument("--features", default="fd-lenet,fid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/eval_sanity", help="the study folder")
    parser.add_argument(
        "--throughput", type=int, default=0, help="measure speed settings on N images"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--throughput-worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--render", action="store_true", help="only re-render <out>/README.md from its JSON"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--update", action="store_true", help="keep the other results in <out>/results.json"
    )
    args = parser.parse_args()
    folder = study_folder(args.out)
    if args.render:
        write_report(folder, report_text(folder))
        return
    apply_malloc_fix()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.throughput_worker:
        print(json.dumps(throughput_worker(args.throughput_worker, args.rounds)))
        return
    nums = {"fid": args.num_fid, "fd-lenet": args.num_lenet}
    report = {
        "command": "python benchmarks/eval_sanity.py "
        f"--num-fid {args.num_fid} --num-lenet {args.num_lenet} "
        f"--features {shlex.quote(args.features)} --seed {args.seed} "
        f"--throughput {args.throughput} --rounds {args.rounds}"
        + (f" --threads {args.threads}" if args.threads else ""),
        "seed": args.seed,
        "machine": machine_record(),
        "throughput_images": args.throughput,
        "throughput_rounds": args.rounds,
        "throughput": throughput(args.throughput, args.rounds) if args.throughput else [],
        "results": [],
    }
    features = [f for f in args.features.split(",") if f]
    if args.update and (folder / RAW).exists():
        # Keep what this run does not redo; each result and the throughput record their command.
        old = read_json(folder / RAW)
        kept = [r for r in old["results"] if r["feature"] not in features]
        if not args.throughput:
            report |= {k: old[k] for k in ("throughput", "throughput_images", "throughput_rounds")}
            report["throughput_command"] = old.get("throughput_command", old["command"])
        report["results"] = kept
    report.setdefault("throughput_command", report["command"])
    write(report, folder)
    for feature in features:
        result = evaluate(feature, nums[feature], args.seed, None)
        record = {"command": report["command"], "machine": machine_record()}
        report["results"].append(result | record)
        print(markdown(report))
        write(report, folder)  # after each net: a stopped Inception run keeps the rest
    record_run(folder, report["command"])


if __name__ == "__main__":
    main()
