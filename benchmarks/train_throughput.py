"""Training-step throughput and peak memory: difflab's nets vs diffusers' UNet2DModel.

One training step = `difflab.train.train_step` with the diffusion loss (v-prediction, cosine
schedule, sigmoid weighting), AdamW, gradient clipping and one EMA: exactly what `difflab train`
runs, on random data so that data loading is not measured. Every variant runs in a fresh
subprocess, because the allocator fix (`mallopt`) is process-wide and peak RSS is per process:

    nets        uvit, residual_uvit, unet (difflab) and diffusers.UNet2DModel, ~2.5M params each
    shapes      28x28x1 (MNIST) and 32x32x3 (CIFAR-like), batch 128
    precision   fp32 and bf16 autocast
    allocator   with and without the glibc malloc fix (difflab.allocator)

    python benchmarks/train_throughput.py        # all variants -> results/train_throughput/
    python benchmarks/train_throughput.py --steps 3 --warmup 1 --only uvit

diffusers is optional (`pip install diffusers --no-deps huggingface_hub regex requests
importlib_metadata`); without it those rows are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from common import (
    RAW,
    ROOT,
    command_line,
    machine,
    markdown_table,
    package_version,
    read_json,
    record_run,
    study_folder,
    write_json,
    write_report,
)

# difflab nets at roughly equal parameter count (~2.4-2.8M on 28x28x1); the U-ViT has the shape
# of configs/mnist_uvit.yaml (Haar stem, one conv level, 4 transformer blocks at 7x7) at width 192
UVIT = dict(
    stem="haar",
    patch_size=2,
    channels=[32],
    num_blocks=1,
    transformer_width=192,
    transformer_depth=4,
    heads=4,
    emb_dim=128,
)
NETS = {
    "uvit": UVIT,
    "residual_uvit": {**UVIT, "transformer_depth": 4},
    "unet": dict(channels=[32, 64, 96], num_blocks=2, emb_dim=128, heads=4),
}
DIFFUSERS = dict(
    block_out_channels=(32, 64, 96),
    layers_per_block=2,
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)
SHAPES = {"28x28x1": (1, 28), "32x32x3": (3, 32)}


# --------------------------------------------------------------------------- one variant


def build(net_name: str, channels: int, resolution: int):
    import torch
    from torch import nn

    if net_name != "diffusers_unet":
        from difflab.nets import build_net

        return build_net(net_name, in_channels=channels, resolution=resolution, **NETS[net_name])

    from diffusers import UNet2DModel

    class DiffusersNet(nn.Module):
        """UNet2DModel behind difflab's `net(z, logsnr)` contract (timestep = 1000 * t)."""

        def __init__(self):
            super().__init__()
            self.unet = UNet2DModel(
                sample_size=resolution, in_channels=channels, out_channels=channels, **DIFFUSERS
            )

        def forward(self, z, logsnr, labels=None):
            t = torch.atan(torch.exp(-0.5 * logsnr)) * (2 / torch.pi) * 1000  # cosine t(logsnr)
            return self.unet(z, t).sample

    return DiffusersNet()


def worker(spec: dict) -> dict:
    from difflab.allocator import apply_malloc_fix

    fix = apply_malloc_fix()  # honours DIFFLAB_NO_MALLOC_FIX=1, set by the parent for "off"
    import resource

    import torch

    from difflab.config import DiffusionConfig, OptimConfig
    from difflab.train import EMA, diffusion_loss_fn, train_step
    from difflab.train.trainer import make_optimizer

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    channels, resolution = SHAPES[spec["shape"]]
    net = build(spec["net"], channels, resolution)
    params = sum(p.numel() for p in net.parameters())
    optimizer = make_optimizer([net], OptimConfig(lr=1e-4))
    ema = EMA(net, [0.999])
    loss_fn = diffusion_loss_fn(DiffusionConfig())
    batch = (torch.rand(spec["batch"], channels, resolution, resolution) * 2 - 1, None)
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(spec["warmup"] + spec["steps"]):
        start = time.perf_counter()
        train_step(
            loss_fn,
            {"net": net},
            batch,
            optimizer,
            generator=gen,
            grad_clip=1.0,
            precision=dtype,
            ema=ema,
        )
        times.append(time.perf_counter() - start)
    timed = times[spec["warmup"] :]
    return {
        **spec,
        "params": params,
        "malloc_fix_applied": fix,
        "images_per_s": spec["batch"] * len(timed) / sum(timed),
        "step_s_min": min(timed),
        "step_s_max": max(timed),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_steps_mib": rss_before,
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- the driver


def run_variant(spec: dict, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if not spec["malloc_fix"]:
        env["DIFFLAB_NO_MALLOC_FIX"] = "1"
    else:
        env.pop("DIFFLAB_NO_MALLOC_FIX", None)
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timeout after {timeout:.0f} s"}
    if done.returncode != 0:
        return {**spec, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    from difflab.train.trainer import cpu_has_native_bf16

    m = machine()
    return {
        "cpu": m["cpu"],
        "cores": m["cores"],
        "torch_threads": m["torch_threads"],
        "cpu_capability": torch_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
        "libc": " ".join(platform.libc_ver()),
        "python": m["python"],
        "torch": m["torch"],
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_average_at_start": tuple(round(x, 1) for x in os.getloadavg()),
    }


def torch_cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def render(data: dict) -> str:
    """The report of a stored `results.json` (`info`, `args`, `rows`, `seconds`)."""
    rows, info, args, elapsed = data["rows"], data["info"], data["args"], data["seconds"]
    lines = [
        "# Training-step throughput (CPU)",
        "",
        f"Written by `python benchmarks/train_throughput.py` on {info['date']} in {elapsed:.0f} s.",
        "",
        "One step = `difflab.train.train_step`: diffusion loss (v-prediction, cosine schedule, "
        "sigmoid weighting), backward, gradient clipping, AdamW, one EMA update; random data, "
        f"batch {args['batch']}, {args['warmup']} warm-up step(s) then {args['steps']} timed "
        "steps, each "
        "variant in a fresh process (the malloc fix is process-wide). Peak memory is the "
        "process's peak RSS (`ru_maxrss`, includes the ~300-400 MiB of the imported libraries).",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items() if k != "date"),
        "",
        f"Peer: diffusers {info.get('diffusers') or 'not installed'} `UNet2DModel` "
        f"(block_out_channels={DIFFUSERS['block_out_channels']}, layers_per_block="
        f"{DIFFUSERS['layers_per_block']}, attention at the lowest level) behind the same step.",
        "",
    ]
    header = ["shape", "net", "params", "precision", "malloc fix", "threads", "images/s",
              "step s (min-max)", "peak RSS MiB"]  # fmt: skip
    lines += markdown_table(header, [variant_cells(r) for r in rows], "llrllrrlr")
    lines += [
        "",
        "Notes: the 2 cores may be shared with other jobs (see the load average), so compare "
        "rows of one run, not across runs. On CPUs without native bf16 (AVX2 only) bf16 "
        "autocast is emulated and slower than fp32: `train.precision=auto` picks fp32 there, "
        "and only one bf16 reference row is run there unless `--full-matrix` is given. "
        "The allocator's slowdown is intermittent (it appears when freed memory is returned to "
        "the OS and faulted in again), so a few steps may or may not show it.",
        "",
    ]
    return "\n".join(lines)


def variant_cells(r: dict) -> list:
    """A row of the table: the measured variant, or why it was skipped."""
    if "error" in r:
        fix = "on" if r["malloc_fix"] else "off"
        return [r["shape"], r["net"], "", r["precision"], fix, "", f"skipped: {r['error'][:80]}",
                "", ""]  # fmt: skip
    return [
        r["shape"], r["net"], f"{r['params'] / 1e6:.2f}M", r["precision"],
        "on" if r["malloc_fix_applied"] else "off", r["threads"], f"{r['images_per_s']:.1f}",
        f"{r['step_s_min']:.2f}-{r['step_s_max']:.2f}", f"{r['peak_rss_mib']:.0f}",
    ]  # fmt: skip


def report_text(folder: Path) -> str:
    return render(read_json(Path(folder) / RAW))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="subset of nets", default=None)
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    parser.add_argument("--precisions", nargs="*", default=["fp32", "bf16"])
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--full-matrix",
        action="store_true",
        help="on CPUs without native bf16, run every bf16 variant (by default only one: slow)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per variant (0: torch's default). On a machine shared with other "
        "jobs, 1 avoids OpenMP's spin-waiting threads fighting for the cores",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "results" / "train_throughput", help="the study folder"
    )
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    nets = args.only or [*NETS, "diffusers_unet"]
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **machine_info(),
        "diffusers": package_version("diffusers"),
    }
    folder = study_folder(args.out)
    flags = {"batch": args.batch, "warmup": args.warmup, "steps": args.steps}
    print("setup:", json.dumps(info), flush=True)
    rows, start = [], time.perf_counter()
    for shape in args.shapes:
        for net in nets:
            for precision in args.precisions:
                fixes = (True, False)
                if precision == "bf16" and not info["native_bf16"] and not args.full_matrix:
                    # emulated bf16 takes minutes per step: one reference row (the U-ViT on the
                    # first shape, with the fix); the fix's effect is shown in fp32
                    if net != nets[0] or shape != args.shapes[0]:
                        continue
                    fixes = (True,)
                for fix in fixes:
                    spec = dict(
                        shape=shape,
                        net=net,
                        precision=precision,
                        malloc_fix=fix,
                        batch=args.batch,
                        steps=args.steps,
                        warmup=args.warmup,
                        threads=args.threads,
                    )
                    if net == "diffusers_unet" and info["diffusers"] is None:
                        rows.append({**spec, "error": "diffusers not installed"})
                        continue
                    row = run_variant(spec, args.timeout)
                    rows.append(row)
                    shown = (
                        row.get("error")
                        or f"{row['images_per_s']:.1f} img/s, "
                        f"peak RSS {row['peak_rss_mib']:.0f} MiB"
                    )
                    print(
                        f"{shape} {net:15s} {precision} fix={'on ' if fix else 'off'} {shown}",
                        flush=True,
                    )
                    data = {"info": info, "args": flags, "rows": rows}
                    data["seconds"] = time.perf_counter() - start
                    write_json(folder / RAW, data)
                    write_report(folder, render(data))
    record_run(folder, command_line(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
