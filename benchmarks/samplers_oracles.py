"""Do the covariance-aware sampler's defaults transfer? `cov_ddim` (its defaults, and the
earlier shifted grid and batch pooling) and `cov_ddim_table` with a model-only calibrated table
against DPM-Solver++(2M), UniPC, aDDIM and Heun, each of those on every studied grid (its best
grid decides), on the named oracles of `GaussianMixtureOracle.named` (`held_out` was looked at
only after the defaults were chosen), at each NFE of `--nfe`. Stores `oracles` in
`<out>/results.json`.

    python benchmarks/samplers_oracles.py --nfe 4 8            # 2000 samples
"""

from __future__ import annotations

import torch
from sampler_bench import (
    MixtureDenoiser,
    log,
    parse,
    setup_arguments,
    store,
)

from difflab.diffusion.oracle import ORACLES, GaussianMixtureOracle
from difflab.diffusion.schedules import CosineSchedule
from difflab.eval.oracle_metrics import ExactReference, oracle_report
from difflab.sampling import GridChoice, default_grid, get_sampler
from difflab.sampling.cov_ddim import calibrate_posterior_spectrum

GRIDS = {
    "uniform_t": GridChoice("uniform_t"),
    "uniform_t-1": GridChoice("uniform_t", shift=-1.0),
    "uniform_t-2": GridChoice("uniform_t", shift=-2.0),
    "uniform_t+1": GridChoice("uniform_t", shift=1.0),
    "edm": GridChoice("edm", edm_range=True),
    "uniform_logsnr": GridChoice("uniform_logsnr", edm_range=True),
}
PEERS = ("dpmpp_2m", "unipc", "addim", "heun")


def one_oracle(name: str, args) -> dict:
    oracle = GaussianMixtureOracle.named(name)
    den, sched = MixtureDenoiser(oracle), CosineSchedule()
    ref = ExactReference.of(oracle, n=args.num, seed=args.seed + 11)
    z = torch.randn(
        args.num,
        *oracle.shape,
        generator=torch.Generator().manual_seed(args.seed),
        dtype=torch.float64,
    )
    exact = oracle_report(
        oracle.sample(args.num, torch.Generator().manual_seed(args.seed + 5))[0], oracle,
        reference=ref,
    )  # fmt: skip
    table = calibrate_posterior_spectrum(
        den, oracle.shape, torch.linspace(-15, 15, 31), num=256,
        generator=torch.Generator().manual_seed(9), dtype=torch.float64,
    )  # fmt: skip
    rows = []

    def run(label, sampler, grid, steps, **options):
        gen = torch.Generator().manual_seed(args.seed + 1000)
        out = get_sampler(sampler).fn(den, z, grid, generator=gen, **options)
        metrics = oracle_report(out, oracle, reference=ref)
        metrics.pop("band_variance_ratio")
        rows.append({"method": label, "sampler": sampler, "steps": steps, **metrics})
        log(f"  {name} {label:32s} steps {steps:2d} FD {metrics['frechet_exact']:.4g} "
            f"TV {metrics['mode_weight_tv']:.3f}")  # fmt: skip

    for nfe in args.nfe:
        run("cov_ddim (default grid)", "cov_ddim", default_grid("cov_ddim", sched, nfe), nfe)
        run("cov_ddim (uniform_t-2)", "cov_ddim", GRIDS["uniform_t-2"].build(sched, nfe), nfe)
        earlier = {"pooling": "batch", "num_bands": None}
        run("cov_ddim (batch pooling, earlier)", "cov_ddim",
            default_grid("cov_ddim", sched, nfe), nfe, **earlier)  # fmt: skip
        run("cov_ddim (earlier grid and pooling)", "cov_ddim",
            GRIDS["uniform_t-2"].build(sched, nfe), nfe, **earlier)  # fmt: skip
        run("cov_ddim_table (calibrated)", "cov_ddim_table",
            default_grid("cov_ddim_table", sched, nfe), nfe, table=table)  # fmt: skip
        run("cov_ddim_table (no table)", "cov_ddim_table",
            default_grid("cov_ddim_table", sched, nfe), nfe)  # fmt: skip
        run("ddim (default grid)", "ddim", default_grid("ddim", sched, nfe), nfe)
        for peer in PEERS:
            steps = (nfe + 1) // 2 if peer == "heun" else nfe
            for label, grid in GRIDS.items():
                run(f"{peer} ({label})", peer, grid.build(sched, steps), steps)
    return {"shape": list(oracle.shape), "components": len(oracle.weights), "exact": exact,
            "rows": rows, "options": ORACLES[name][1]}  # fmt: skip


def main(argv=None) -> int:
    p = setup_arguments(__doc__.split("\n\n")[0])
    p.set_defaults(num=2000)
    p.add_argument("--nfe", type=int, nargs="+", default=[8])
    p.add_argument("--oracles", nargs="+", default=list(ORACLES))
    args = parse(p, argv)
    store(args, {"oracles": {name: one_oracle(name, args) for name in args.oracles}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
