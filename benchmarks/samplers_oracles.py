"""Do the covariance-aware sampler's defaults transfer? `cov_ddim` (its defaults; the earlier
diagonal posterior draw, shifted grid and batch pooling; a deterministic last step) and
`cov_ddim_table` with a model-only calibrated table against DDIM and DPM-Solver++(2M), UniPC,
aDDIM and Heun, each of those on every studied grid (its best grid decides), on the named
oracles of `GaussianMixtureOracle.named` (`held_out` was looked at only after the defaults were
chosen): the covariance-aware rows and DDIM at each NFE of `--nfe`, the peers at each of
`--peer-nfe`. Every row has the bootstrap standard error of its mode TV; `vs_ddim` compares
each `cov_ddim` row with DDIM. Stores `oracles` (`--key`) in `<out>/results.json`.

`--seeds S` repeats every row (and the exact samples) with `S` independent initial noises and
sampler seeds: a row's metrics are the means over seeds, `per_seed` keeps each seed's values.
The mode-weight TV of `--num` samples has a floor that exact samples reach too (0.012 at 2000
samples on `unseen`, bootstrap standard error 0.008): a single seed of 2000 samples cannot tell
a sampler's mode error from that floor (docs/methods/cov_ddim.md, "Mode weights at 20,000
samples"). `--mmd-num` caps the samples of the kernel MMD (its cost grows with their square).

    python benchmarks/samplers_oracles.py --nfe 4 8 16 --peer-nfe 4 8   # 2000 samples
    python benchmarks/samplers_oracles.py --num 20000 --batch 20000 --seeds 3 --mmd-num 4000 \
        --nfe 8 --peer-nfe 8 --key oracles_large
    python benchmarks/samplers_oracles.py --first-steps --num 20000 --batch 20000 --nfe 8 \
        --mmd-num 4000                              # where cov_ddim's mode error is made
    python benchmarks/samplers_oracles.py --skew --num 20000 --batch 20000 --seeds 3 \
        --nfe 4 8 16 --mmd-num 4000                 # the skewed draw (skew=True)
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
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
from difflab.diffusion.transitions import ddim_step
from difflab.eval.oracle_metrics import ExactReference, cross_entropy_gap, mmd, oracle_report
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
    """Bootstrap standard error of `mode_weight_tv`: the component counts of the samples (the
    metric's classification) redrawn `draws` times from their multinomial."""
    x = samples.reshape(-1, *oracle.shape)
    level = torch.tensor(40.0, dtype=torch.float64)
    labels = torch.cat([oracle.posterior(c, level)[0].argmax(1) for c in x.split(2048)])
    freq = torch.bincount(labels, minlength=len(oracle.weights)).double() / x.shape[0]
    rng = np.random.default_rng(0)  # its own stream: no global RNG state touched
    counts = torch.from_numpy(rng.multinomial(x.shape[0], freq.numpy(), size=draws)).double()
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


SEED_STRIDE = 7919
PER_SEED = ("frechet_exact", "mode_weight_tv", "cross_entropy_gap", "mmd")


def measure(samples: torch.Tensor, oracle: GaussianMixtureOracle, ref: ExactReference,
            mmd_num: int | None) -> dict:  # fmt: skip
    """The exact metrics of `samples`; the MMD on the first `mmd_num` of them (None: all)."""
    metrics = oracle_report(samples, oracle)
    metrics.pop("band_variance_ratio")
    gap, gap_se = cross_entropy_gap(samples, oracle, ref)
    metrics |= {"cross_entropy_gap": gap, "cross_entropy_gap_se": gap_se,
                "mmd": mmd(samples[:mmd_num], oracle, ref),
                "mode_weight_tv_se": mode_tv_se(samples, oracle)}  # fmt: skip
    return metrics


def seed_mean(runs: list[dict]) -> dict:
    """One row from the same row of each seed: every number averaged, `per_seed` the values of
    `PER_SEED` seed by seed (one seed: the row itself)."""
    if len(runs) == 1:
        return runs[0]
    out = {k: (sum(r[k] for r in runs) / len(runs) if isinstance(v, float) else v)
           for k, v in runs[0].items()}  # fmt: skip
    out["per_seed"] = {k: [r[k] for r in runs] for k in PER_SEED}
    for k in ("mode_weight_tv_se", "cross_entropy_gap_se"):  # standard errors of the mean
        out[k] /= math.sqrt(len(runs))
    return out


def named_setup(name: str, args):
    """`(oracle, its fast denoiser, the cosine schedule, the MMD's exact reference)`."""
    oracle = GaussianMixtureOracle.named(name)
    return oracle, MixtureDenoiser(oracle), CosineSchedule(), exact_reference(name, args)


def initial_noise(oracle: GaussianMixtureOracle, num: int, seed: int) -> torch.Tensor:
    """The `num` starting points of seed `seed` (float64); the sampler draws from `seed + 1000`
    and the exact samples from `seed + 5`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num, *oracle.shape, generator=gen, dtype=torch.float64)


def seed_of(s: int, args) -> int:
    """Seed number `s` of a `--seeds` run: `--seed + SEED_STRIDE s`, streams that cannot overlap."""
    return args.seed + SEED_STRIDE * s


def one_seed(name: str, table, seed: int, args) -> tuple[dict, list[dict]]:
    """`(exact samples' metrics, rows)` of oracle `name` for one initial noise (`seed`) and
    sampler seed; `table`: its calibrated spectrum."""
    oracle, den, sched, ref = named_setup(name, args)
    z = initial_noise(oracle, args.num, seed)
    exact = measure(oracle.sample(args.num, torch.Generator().manual_seed(seed + 5))[0], oracle,
                    ref, args.mmd_num)  # fmt: skip
    rows = []

    def run(label, sampler, grid, steps, **options):
        gen = torch.Generator().manual_seed(seed + 1000)
        out = get_sampler(sampler).fn(den, z, grid, generator=gen, **options)
        metrics = measure(out, oracle, ref, args.mmd_num)
        rows.append({"method": label, "sampler": sampler, "steps": steps, **metrics})
        log(f"  {name} seed {seed} {label:32s} steps {steps:2d} "
            f"FD {metrics['frechet_exact']:.4g} TV {metrics['mode_weight_tv']:.3f}")  # fmt: skip

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
    return exact, rows


@functools.cache
def exact_reference_of(name: str, num: int, seed: int) -> ExactReference:
    return ExactReference.of(GaussianMixtureOracle.named(name), n=num, seed=seed)


def exact_reference(name: str, args) -> ExactReference:
    """The MMD's exact reference sample (`--mmd-num` or `--num` points), one per oracle."""
    return exact_reference_of(name, args.mmd_num or args.num, args.seed + 11)


def one_oracle(name: str, args) -> dict:
    oracle = GaussianMixtureOracle.named(name)
    table = calibrate_posterior_spectrum(
        MixtureDenoiser(oracle), oracle.shape, torch.linspace(-15, 15, 31), num=256,
        generator=torch.Generator().manual_seed(9), dtype=torch.float64,
    )  # fmt: skip
    runs = [one_seed(name, table, seed_of(s, args), args) for s in range(args.seeds)]
    exact = seed_mean([e for e, _ in runs])
    rows = [seed_mean([r[i] for _, r in runs]) for i in range(len(runs[0][1]))]
    return {"shape": list(oracle.shape), "components": len(oracle.weights), "exact": exact,
            "rows": rows, "options": ORACLES[name][1], "vs_ddim": versus_ddim(rows),
            "num": args.num, "seeds": args.seeds}  # fmt: skip


def exact_posterior_steps(oracle: GaussianMixtureOracle, z: torch.Tensor, grid: torch.Tensor,
                          generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """DDIM steps along `grid` with exact posterior draws `x ~ p(x | z_t)` (the oracle's mixture
    posterior: a component by its responsibility, then its Gaussian) instead of `x_hat`: exact at
    any step size (docs/methods/cov_ddim.md, Derivation, step 1)."""
    for l_t, l_s in zip(grid[:-1], grid[1:]):
        resp, mean_k, var_k = oracle.posterior(z, l_t.expand(z.shape[0]))
        k = torch.multinomial(resp, 1, generator=generator).squeeze(1)
        pick = torch.arange(len(k))
        noise = torch.randn(mean_k[:, 0].shape, generator=generator, dtype=mean_k.dtype)
        x = oracle.from_basis((mean_k[pick, k] + var_k[pick, k].sqrt() * noise).view(z.shape))
        z = ddim_step(z, x.to(z.dtype), l_t, l_s)
    return z


FIRST_STEPS = (("cov_ddim", 0), ("exact", 1), ("exact", 2), ("exact", 4), ("ddim", 1),
               ("ddim", 2), ("exact", None))  # fmt: skip
"""`--first-steps` rows: the first `k` steps of the default grid by exact posterior draws or by
DDIM, `cov_ddim` (its defaults) on the rest; `None`: every step exact (the check: mode TV at the
exact samples' floor)."""


def first_steps(name: str, args) -> list[dict]:
    """Where `cov_ddim`'s mode error is committed: the rows of `FIRST_STEPS` at each NFE of
    `--nfe`, one noise (`--seed`), the same sampler seed."""
    oracle, den, sched, ref = named_setup(name, args)
    z0 = initial_noise(oracle, args.num, args.seed)
    rows = []
    for nfe in args.nfe:
        grid = default_grid("cov_ddim", sched, nfe)
        for how, k in dict.fromkeys((how, nfe if k is None else k) for how, k in FIRST_STEPS):
            gen = torch.Generator().manual_seed(args.seed + 1000)
            z = z0
            if k and how == "exact":
                z = exact_posterior_steps(oracle, z, grid[: k + 1], gen)
            elif k:
                z = get_sampler(how).fn(den, z, grid[: k + 1], generator=gen)
            if k < nfe:
                z = get_sampler("cov_ddim").fn(den, z, grid[k:], generator=gen)
            metrics = measure(z, oracle, ref, args.mmd_num)
            rows.append({"nfe": nfe, "first": how, "steps": k, "last_level": float(grid[k]),
                         **metrics})  # fmt: skip
            log(f"  {name} NFE {nfe} first {k} by {how:8s} FD {metrics['frechet_exact']:.4g} "
                f"TV {metrics['mode_weight_tv']:.4f}")  # fmt: skip
    return rows


def skew_check(name: str, args) -> list[dict]:
    """`cov_ddim` with and without the skewed draw (`skew=True`) at each NFE of `--nfe`, on
    `--seeds` noises (the same seeds as the other runs): rows averaged over seeds, with the
    sampling seconds on this machine."""
    oracle, den, sched, ref = named_setup(name, args)
    rows = []
    for nfe in args.nfe:
        grid = default_grid("cov_ddim", sched, nfe)
        for skew in (False, True):
            runs = []
            for s in range(args.seeds):
                seed = seed_of(s, args)
                z = initial_noise(oracle, args.num, seed)
                gen = torch.Generator().manual_seed(seed + 1000)
                start = time.perf_counter()
                out = get_sampler("cov_ddim").fn(den, z, grid, generator=gen, skew=skew)
                seconds = time.perf_counter() - start
                runs.append({**measure(out, oracle, ref, args.mmd_num), "seconds": seconds})
                fd, tv = runs[-1]["frechet_exact"], runs[-1]["mode_weight_tv"]
                log(f"  {name} NFE {nfe} skew {skew!s:5s} seed {seed} FD {fd:.4g} TV {tv:.4f}")
            rows.append({"nfe": nfe, "skew": skew, **seed_mean(runs)})
    return rows


def main(argv=None) -> int:
    p = setup_arguments(__doc__.split("\n\n")[0])
    p.set_defaults(num=2000)
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--peer-nfe", type=int, nargs="+", default=[4, 8])
    p.add_argument("--oracles", nargs="+", default=list(ORACLES))
    p.add_argument("--seeds", type=int, default=1, help="independent noises per row (means)")
    p.add_argument("--mmd-num", type=int, default=None, help="samples for the MMD (None: all)")
    p.add_argument("--key", default="oracles", choices=("oracles", "oracles_large"),
                   help="where results.json keeps this run (its own report section)")  # fmt: skip
    p.add_argument(
        "--first-steps",
        action="store_true",
        help="where the mode error is made: FIRST_STEPS rows (stored as first_steps)",
    )
    p.add_argument(
        "--skew", action="store_true", help="cov_ddim with and without skew=True (stored as skew)"
    )
    args = parse(p, argv)
    if args.skew:
        part = {"skew": {name: skew_check(name, args) for name in args.oracles}}
        store(args, part, partial=True)
        return 0
    if args.first_steps:
        # partial: the script's other runs (other keys) keep their commands in results.json
        part = {"first_steps": {name: first_steps(name, args) for name in args.oracles}}
        store(args, part, partial=True)
        return 0
    store(args, {args.key: {name: one_oracle(name, args) for name in args.oracles}}, partial=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
