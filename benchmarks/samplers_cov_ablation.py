"""What each option of the covariance-aware DDIM (`cov_ddim`) buys: its default against
pooling, band counts, probes, the deterministic variant, the last-step rule, a data prior and
the unshifted grid, at each NFE of `--ablation-nfe`. Stores `cov_ablation` in
`<out>/results.json`. `--modes`: where the mode weights go wrong instead (stored as
`mode_ablation`, per oracle): the JVP estimate against the oracle's exact per-example covariance
and its within-component part, and the covariance only on steps at `l_t >= threshold` (plain
DDIM steps above the noise level, the last step always with it), on each grid.

    python benchmarks/samplers_cov_ablation.py                 # the oracle, NFE 4 and 8
    python benchmarks/samplers_cov_ablation.py --modes --oracle unseen --num 2000 --batch 2000
"""

from __future__ import annotations

import math

import torch
from sampler_bench import (
    Method,
    Runner,
    log,
    open_setup,
    parse,
    setup_arguments,
    store,
)
from samplers_report import fmt

from difflab.diffusion.dct import dct2
from difflab.diffusion.parameterization import level_for
from difflab.sampling import GridChoice
from difflab.sampling.cov_ddim import run_cov, tweedie_estimator
from difflab.sampling.grids import prepare_grid

MODE_GRIDS = {
    "uniform_t-2": GridChoice("uniform_t", shift=-2.0),
    "uniform_t": GridChoice("uniform_t"),
    "edm": GridChoice("edm", edm_range=True),
}


def cov_ablation_configs(setup) -> list[tuple[str, dict]]:
    x = setup.data.double()
    data_var = dct2(x).var(0).mean(0, keepdim=True)  # per coefficient, channels pooled
    return [
        ("default: stochastic, profile pooling, 8 bands", {}),
        (
            "pooling=batch, per coefficient (default before issue 16)",
            {"pooling": "batch", "num_bands": None},
        ),  # fmt: skip
        ("pooling=example, num_bands=1", {"pooling": "example", "num_bands": 1}),
        ("pooling=example, num_bands=4", {"pooling": "example", "num_bands": 4}),
        ("pooling=example, num_bands=8", {"pooling": "example", "num_bands": 8}),
        ("pooling=example, num_bands=16", {"pooling": "example", "num_bands": 16}),
        ("pooling=example, per coefficient", {"pooling": "example", "num_bands": None}),
        ("pooling=batch, num_bands=8", {"pooling": "batch", "num_bands": 8}),
        ("pooling=profile, num_bands=1", {"pooling": "profile", "num_bands": 1}),
        ("pooling=profile, num_bands=8", {"pooling": "profile", "num_bands": 8}),
        ("gaussian probes", {"probe": "gaussian"}),
        (
            "gaussian probes, example, 8 bands",
            {"probe": "gaussian", "pooling": "example", "num_bands": 8},
        ),
        ("variant=deterministic", {"variant": "deterministic"}),
        (
            "variant=deterministic, final=stochastic",
            {"variant": "deterministic", "final": "stochastic"},
        ),
        ("final=mean", {"final": "mean"}),
        ("prior_var = data variance per coefficient", {"prior_var": data_var}),
        ("grid uniform_t (no shift)", {"_grid": GridChoice("uniform_t")}),
    ]


def cov_ablation(setup, runner, nfes) -> list[dict]:
    out = []
    for label, options in cov_ablation_configs(setup):
        opts = dict(options)
        grid = opts.pop("_grid", None)
        method = Method("cov_ddim", "difflab", "cov_ddim", opts, grid)
        rows = [runner.row(method, nfe) for nfe in nfes]
        out.append({"config": label, "rows": [r.__dict__ for r in rows]})
        log(f"  cov {label:52s} " + " ".join(f"{fmt(r.metrics[setup.headline])}" for r in rows))
    return out


def mode_ablation(setup, runner, nfes) -> list[dict]:
    """cov_ddim's step loop with the estimate replaced (exact covariance, within-component
    covariance) or switched off on the steps with `l_t < threshold`; one run per grid and NFE."""
    oracle, den, z0 = setup.oracle, setup.make_denoise(None), runner.z

    def exact(z, l_t):
        level = level_for(l_t, z).expand(z.shape[0])
        return den(z, level), oracle.posterior_covariance_diag(z, level)

    def within(z, l_t):
        level = level_for(l_t, z).expand(z.shape[0])
        resp, _, var_k = oracle.posterior(z, level)
        return den(z, level), (resp[..., None] * var_k).sum(1).view(z.shape)

    out = []
    for nfe in nfes:
        for gname, choice in MODE_GRIDS.items():
            grid = prepare_grid(z0, choice.build(setup.schedule, nfe))
            configs = [("JVP estimate, batch pooling", None, -math.inf)]
            configs += [("exact per-example covariance", exact, -math.inf)]
            configs += [("within-component covariance", within, -math.inf)]
            configs += [(f"covariance at l_t >= {t:g} only", None, t) for t in (-2.0, 0.0, 2.0)]
            for label, estimate, threshold in configs:
                gen = torch.Generator().manual_seed(runner.seed + 1000)
                basis, jvp = tweedie_estimator(
                    den, z0, grid, pooling="batch", num_bands=None, generator=gen
                )
                last = grid.shape[0] - 2
                weights = [float(i == last or grid[i] >= threshold) for i in range(last + 1)]
                x = run_cov(den, z0, grid, estimate or jvp, basis, "stochastic", "stochastic",
                            gen, None, cov_weights=weights)  # fmt: skip
                metrics = setup.evaluate(x)
                out.append({"nfe": nfe, "grid": gname, "config": label, "metrics": metrics})
                fd, tv = fmt(metrics[setup.headline]), metrics["mode_weight_tv"]
                log(f"  modes NFE {nfe} {gname:12s} {label:32s} FD {fd} TV {tv:.3f}")
    return out


def main(argv=None) -> int:
    p = setup_arguments(__doc__.split("\n\n")[0])
    p.add_argument("--ablation-nfe", type=int, nargs="+", default=[4, 8])
    p.add_argument("--modes", action="store_true", help="the mode-weight ablation instead")
    args = parse(p, argv)
    setup = open_setup(args)
    runner = Runner(setup, args.num, args.batch, args.seed)
    if args.modes:
        part = {"mode_ablation": {args.oracle: mode_ablation(setup, runner, args.ablation_nfe)}}
        store(args, part)
        return 0
    store(args, {"cov_ablation": cov_ablation(setup, runner, args.ablation_nfe)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
