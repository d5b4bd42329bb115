"""What each option of the covariance-aware DDIM (`cov_ddim`) buys: its default against
pooling, band counts, probes, the deterministic variant, the last-step rule, a data prior and
the unshifted grid, at each NFE of `--ablation-nfe`. Stores `cov_ablation` in
`<out>/results.json`.

    python benchmarks/samplers_cov_ablation.py                 # the oracle, NFE 4 and 8
"""

from __future__ import annotations

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
from difflab.sampling import GridChoice


def cov_ablation_configs(setup) -> list[tuple[str, dict]]:
    x = setup.data.double()
    data_var = dct2(x).var(0).mean(0, keepdim=True)  # per coefficient, channels pooled
    return [
        ("default: stochastic, batch pooling per coefficient", {}),
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


def main(argv=None) -> int:
    p = setup_arguments(__doc__.split("\n\n")[0])
    p.add_argument("--ablation-nfe", type=int, nargs="+", default=[4, 8])
    args = parse(p, argv)
    setup = open_setup(args)
    runner = Runner(setup, args.num, args.batch, args.seed)
    store(args, {"cov_ablation": cov_ablation(setup, runner, args.ablation_nfe)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
