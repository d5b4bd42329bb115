"""How much time does a sampler spend outside the denoiser? Seconds per step of each sampler
around a free denoiser, against one forward of a 32x32 U-ViT (cifar config, batch 16, SDPA
attention) on this CPU. Stores `overhead` in `<out>/results.json`.

    python benchmarks/samplers_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from sampler_bench import parse, store

from difflab.diffusion.schedules import CosineSchedule
from difflab.sampling import get_sampler

SAMPLERS = ("ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "addim", "cov_ddim")


def median_seconds(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sampler_overhead(reps: int = 5) -> dict:
    """Seconds per step of each sampler around a free denoiser, vs one forward of a 32x32 U-ViT
    (cifar config, batch 16, SDPA attention), on this CPU."""
    from difflab.diffusion.parameterization import as_denoiser
    from difflab.nets import build_net, cifar_uvit_config
    from difflab.sampling.grids import uniform_t_grid

    torch.manual_seed(0)
    net = build_net("uvit", **cifar_uvit_config().__dict__).eval()
    den = as_denoiser(net, "v")
    z = torch.randn(16, 3, 32, 32)
    level = torch.full((16,), 0.5)
    with torch.no_grad():
        den(z, level)
        forward = median_seconds(lambda: den(z, level), reps)
    x0 = torch.zeros_like(z)

    def free(zz, lv):
        return x0 + 0.5 * zz  # a denoiser that costs (almost) nothing

    steps = 32
    grid = uniform_t_grid(CosineSchedule(), steps)
    out = {"uvit32_forward_s": forward, "batch": 16, "per_step": {}}
    for name in SAMPLERS:
        fn = get_sampler(name).fn

        def run(fn=fn, name=name):
            with torch.inference_mode(mode=name != "cov_ddim"):
                fn(free, z, grid, generator=torch.Generator().manual_seed(0))

        per_step = median_seconds(run, reps) / get_sampler(name).nfe(steps)
        out["per_step"][name] = {"seconds": per_step, "fraction_of_forward": per_step / forward}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (the median counts)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default="results/samplers", help="the study folder")
    args = parse(p, argv)
    store(args, {"overhead": sampler_overhead(args.reps)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
