"""Does the covariance-aware DDIM's oracle-tuned configuration transfer to a trained model?

On the exact oracle the best `cov_ddim` uses a uniform-t grid shifted by -2 logsnr and samples
around the mean at the last step (`docs/samplers.md`); on the shipped MNIST model that default
loses to DDIM (`results/samplers_mnist.md`). This sweeps the choices that the oracle fixed
(grid, stochastic or deterministic steps, last-step rule) on the MNIST model with the JVP-free
`cov_ddim_table` (the same variance model, its expectation over data; one forward per step, so
a sweep is affordable on a CPU), with
DDIM and DPM-Solver++(2M) on the same noise for reference, and the JVP `cov_ddim` for the best
setting. Metric: fd-lenet against the MNIST test statistics (our LeNet features, not FID).

    python benchmarks/cov_ddim_mnist.py --num 500 --nfe 8   # -> results/cov_ddim_mnist.md|json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from difflab.data.mnist import load_mnist
from difflab.eval.features import get_feature_extractor
from difflab.eval.metrics import frechet_distance
from difflab.eval.reference import load_reference_stats
from difflab.sampling import GridChoice, get_sampler, measure_posterior_spectrum
from difflab.train import load_denoiser
from difflab.train.allocator import apply_malloc_fix

GRIDS = {
    "uniform_t": GridChoice("uniform_t"),
    "uniform_t-2": GridChoice("uniform_t", shift=-2.0),
    "uniform_t+2": GridChoice("uniform_t", shift=2.0),
    "uniform_logsnr (EDM range)": GridChoice("uniform_logsnr", edm_range=True),
}


def main(argv=None) -> int:
    apply_malloc_fix()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="src/difflab/assets/mnist_uvit.safetensors")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--nfe", type=int, default=8)
    p.add_argument("--table-num", type=int, default=300)
    p.add_argument("--table-levels", type=int, default=41)
    p.add_argument("--jvp", action="store_true", help="also run cov_ddim (JVP) at the best setting")
    p.add_argument("--out", default="results/cov_ddim_mnist")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    make, cfg = load_denoiser(args.checkpoint)
    schedule = cfg.diffusion.build_schedule()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(args.num, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (args.num,), generator=gen)
    denoise = make(labels=labels)
    lenet = get_feature_extractor("fd-lenet")
    ref = load_reference_stats("mnist", "test", lenet)

    images, _ = load_mnist("train")
    data = torch.from_numpy(images[: args.table_num]).float()[:, None] / 127.5 - 1
    levels = torch.linspace(schedule.logsnr_min, schedule.logsnr_max, args.table_levels)
    table = measure_posterior_spectrum(
        make(), data, levels, generator=torch.Generator().manual_seed(3)
    )

    def score(sampler: str, grid: GridChoice, **options) -> dict:
        start = time.perf_counter()
        logsnrs = grid.build(schedule, args.nfe)
        spec = get_sampler(sampler)
        with torch.inference_mode(mode=not spec.jvps(args.nfe, **options)):
            x = spec.fn(denoise, z, logsnrs, generator=torch.Generator().manual_seed(1), **options)
        fd = frechet_distance(lenet(x.clamp(-1, 1), progress=False), ref)
        shown = {k: v for k, v in options.items() if k != "table"}
        row = {"sampler": sampler, "grid": grid.label, "options": shown, "fd_lenet": fd}
        row["seconds"] = time.perf_counter() - start
        print(json.dumps(row), flush=True)
        return row

    rows = [
        score("ddim", GRIDS["uniform_t"]),
        score("dpmpp_2m", GRIDS["uniform_logsnr (EDM range)"]),
    ]
    for grid in GRIDS.values():
        for variant in ("stochastic", "deterministic"):
            for final in (variant, "mean"):
                rows.append(
                    score("cov_ddim_table", grid, table=table, variant=variant, final=final)
                )
    best = min((r for r in rows if r["sampler"] == "cov_ddim_table"), key=lambda r: r["fd_lenet"])
    if args.jvp:
        options = {k: best["options"][k] for k in ("variant", "final")}
        rows.append(score("cov_ddim", GRIDS[best["grid"]], **options))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/cov_ddim_mnist.py " + " ".join(argv or __import__("sys").argv[1:])
    out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    lines = [
        "# Covariance-aware DDIM on the shipped MNIST model: grid and last-step rule",
        "",
        f"`{command}`: {args.num} samples, NFE {args.nfe}, the same noise and random labels for "
        f"every row (seed 0); fd-lenet vs MNIST test statistics (LeNet features, not FID; small "
        f"sample, so compare rows, not against other tables). Variance table measured on "
        f"{args.table_num} training images at {args.table_levels} levels. Machine: "
        f"{platform.machine()}, 2 shared CPU cores, 1 torch thread, torch {torch.__version__}.",
        "",
        "| sampler | grid | options | fd-lenet | seconds |",
        "|---|---|---|---:|---:|",
    ]
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        lines.append(
            f"| {r['sampler']} | {r['grid']} | {opts} | {r['fd_lenet']:.1f} | {r['seconds']:.0f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
