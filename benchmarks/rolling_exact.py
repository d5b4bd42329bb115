"""Rolling vs block diffusion with the exact denoiser of a stationary Gaussian process over frames.

The process (`difflab.methods.rolling.GaussianFrames`): every pixel AR(1) in time (`rho`),
a power-law spatial spectrum in the DCT basis. With its exact `E[x | z]` both samplers must
reproduce the whitened per-frame variance (1) and the lag-k correlations (`rho^k`) of the
process over a long rollout as `steps_per_frame` grows; the table is the error against steps.

    python benchmarks/rolling_exact.py --frames 64 --steps 1,2,4,8,16,32
"""

from __future__ import annotations

import argparse
import time

import torch
from common import RESULTS, command_line, record_run, update_results

from difflab.diffusion.schedules import CosineSchedule
from difflab.methods.rolling import NFE, SEQUENCE_SAMPLERS, GaussianFrames

LAGS = (1, 2, 4, 8)


def measure(process, name, steps, *, frames, window, context, batch, seed) -> dict:
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    ctx = process.sample(batch, context, gen)
    out = SEQUENCE_SAMPLERS[name](process.denoise, ctx, frames, window=window,
                                  steps_per_frame=steps, schedule=CosineSchedule(),
                                  generator=gen)  # fmt: skip
    stats = process.statistics(out, max(LAGS))
    var = stats["variance"]
    row = {
        "sampler": name,
        "steps_per_frame": steps,
        "nfe": NFE[name](frames, window, steps),
        "variance_error": float(var.mean() - 1),
        "variance_error_last16": float(var[-16:].mean() - 1),
        "variance_error_first": float(var[0] - 1),
        "seconds": round(time.perf_counter() - start, 2),
    }
    for k in LAGS:
        row[f"lag{k}_error"] = float(stats["correlation"][k] - process.rho**k)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--steps", default="1,2,4,8,16,32")
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--context", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--rho", type=float, default=0.8)
    p.add_argument("--power", type=float, default=0.0, help="spatial spectrum exponent")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "rolling"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    r = args.resolution
    process = GaussianFrames((1, r, r), rho=args.rho, power=args.power)
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        for name in SEQUENCE_SAMPLERS:
            row = measure(process, name, steps, frames=args.frames, window=args.window,
                          context=args.context, batch=args.batch, seed=args.seed)  # fmt: skip
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()},
                  flush=True)  # fmt: skip
    samples = args.batch * r * r
    part = {
        "exact": {
            "process": {"shape": [1, r, r], "rho": args.rho, "power": args.power},
            "frames": args.frames, "window": args.window, "context": args.context,
            "batch": args.batch, "seed": args.seed, "samples_per_frame": samples,
            "monte_carlo_std_variance": (2 / samples) ** 0.5,
            "schedule": "cosine [-15, 15], uniform local time, DDIM (eta = 0)",
            "rows": rows,
        }
    }  # fmt: skip
    update_results(args.out, part)
    record_run(args.out, command_line(argv, "benchmarks/rolling_exact.py"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
