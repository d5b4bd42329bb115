"""Do the covariance-aware sampler's defaults transfer? `cov_ddim` (its defaults; the earlier
diagonal posterior draw, shifted grid and batch pooling; a deterministic last step) and
`cov_ddim_table` with a model-only calibrated table against DDIM and DPM-Solver++(2M), UniPC,
aDDIM and Heun, each of those on every studied grid (its best grid decides), on the named
oracles of `GaussianMixtureOracle.named` (`held_out` was looked at only after the defaults were
chosen): the covariance-aware rows and DDIM at each NFE of `--nfe`, the peers at each of
`--peer-nfe`. Every row has the bootstrap standard error of its mode TV; `vs_ddim` compares
each `cov_ddim` row with DDIM. Stores `oracles` in `<out>/results.json`.

    python benchmarks/samplers_oracles.py --nfe 4 8 16 --peer-nfe 4 8   # 2000 samples
"""

from __future__ import annotations

import math

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
DIAGONAL = {"draw": "diagonal"}  # the posterior draw before the JVP-response draw (issue 16)


def mode_tv_se(samples: torch.Tensor, oracle: GaussianMixtureOracle, draws: int = 400) -> float:
    """Bootstrap standard error of `mode_weight_tv`: the component frequencies of the samples
    (the metric's classification) resampled multinomially."""
    x = samples.reshape(-1, *oracle.shape)
    resp, _, _ = oracle.posterior(x, torch.tensor(40.0, dtype=torch.float64))
    freq = torch.bincount(resp.argmax(1), minlength=len(oracle.weights)).double() / x.shape[0]
    gen = torch.Generator().manual_seed(0)
    idx = torch.multinomial(freq, x.shape[0] * draws, replacement=True, generator=gen)
    counts = torch.nn.functional.one_hot(idx.view(draws, -1), len(freq)).sum(1).double()
    tv = (counts / x.shape[0] - oracle.weights).abs().sum(1) / 2
    return float(tv.std())


def versus_ddim(rows: list[dict]) -> list[dict]:
    """Each `cov_ddim` row against DDIM at the same NFE: the Frechet distance ratio and the
    mode-TV difference in standard errors (`(tv - tv_ddim) / sqrt(se^2 + se_ddim^2)`; the
    same noise drives both, so this is conservative)."""
    out = []
    for r in rows:
        if r["sampler"] != "cov_ddim":
            continue
        d = next(q for q in rows if q["sampler"] == "ddim" and q["steps"] == r["steps"])
        se = math.hypot(r["mode_weight_tv_se"], d["mode_weight_tv_se"])
        out.append({"method": r["method"], "nfe": r["steps"],
                    "fd_ratio": r["frechet_exact"] / d["frechet_exact"],
                    "tv": r["mode_weight_tv"], "tv_ddim": d["mode_weight_tv"],
                    "tv_z": (r["mode_weight_tv"] - d["mode_weight_tv"]) / se})  # fmt: skip
    return out


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
        metrics["mode_weight_tv_se"] = mode_tv_se(out, oracle)
        rows.append({"method": label, "sampler": sampler, "steps": steps, **metrics})
        log(f"  {name} {label:32s} steps {steps:2d} FD {metrics['frechet_exact']:.4g} "
            f"TV {metrics['mode_weight_tv']:.3f}")  # fmt: skip

    for nfe in args.nfe:
        run("cov_ddim (default grid)", "cov_ddim", default_grid("cov_ddim", sched, nfe), nfe)
        run("cov_ddim (diagonal draw, earlier)", "cov_ddim",
            default_grid("cov_ddim", sched, nfe), nfe, **DIAGONAL)  # fmt: skip
        run("cov_ddim (mean last step)", "cov_ddim",
            default_grid("cov_ddim", sched, nfe), nfe, final="mean")  # fmt: skip
        run("cov_ddim (uniform_t-2)", "cov_ddim", GRIDS["uniform_t-2"].build(sched, nfe), nfe)
        earlier = {"pooling": "batch", "num_bands": None, **DIAGONAL}
        run("cov_ddim (batch pooling, earlier)", "cov_ddim",
            default_grid("cov_ddim", sched, nfe), nfe, **earlier)  # fmt: skip
        run("cov_ddim (earlier grid and pooling)", "cov_ddim",
            GRIDS["uniform_t-2"].build(sched, nfe), nfe, **earlier)  # fmt: skip
        run("cov_ddim_table (calibrated)", "cov_ddim_table",
            default_grid("cov_ddim_table", sched, nfe), nfe, table=table)  # fmt: skip
        run("cov_ddim_table (no table)", "cov_ddim_table",
            default_grid("cov_ddim_table", sched, nfe), nfe)  # fmt: skip
        run("ddim (default grid)", "ddim", default_grid("ddim", sched, nfe), nfe)
        if nfe not in args.peer_nfe:
            continue
        for peer in PEERS:
            steps = (nfe + 1) // 2 if peer == "heun" else nfe
            for label, grid in GRIDS.items():
                run(f"{peer} ({label})", peer, grid.build(sched, steps), steps)
    exact["mode_weight_tv_se"] = mode_tv_se(
        oracle.sample(args.num, torch.Generator().manual_seed(args.seed + 5))[0], oracle
    )
    return {"shape": list(oracle.shape), "components": len(oracle.weights), "exact": exact,
            "rows": rows, "options": ORACLES[name][1], "vs_ddim": versus_ddim(rows)}  # fmt: skip


def main(argv=None) -> int:
    p = setup_arguments(__doc__.split("\n\n")[0])
    p.set_defaults(num=2000)
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--peer-nfe", type=int, nargs="+", default=[4, 8])
    p.add_argument("--oracles", nargs="+", default=list(ORACLES))
    args = parse(p, argv)
    store(args, {"oracles": {name: one_oracle(name, args) for name in args.oracles}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
