"""Quality against NFE: every sampler (ours on its default grid, diffusers' schedulers and
k-diffusion's samplers on theirs) at each NFE of `--nfe`, from the same initial noise, on one
denoiser; with the cost of a JVP in forward passes, and the comparisons at equal compute (a JVP
charged its measured cost) and at equal measured wall time.

NFE: paper convention (a forward pass with its JVP is one evaluation; Heun takes the largest
`2 steps - 1 <= NFE`). Stores `rows`, `jvp_cost`, `exact_samples` (oracle), `equal_compute`,
`equal_time` in `<out>/results.json` and re-renders `<out>/README.md` and `plot.png`.

    python benchmarks/samplers_nfe.py                                # the oracle, 4000 samples
    python benchmarks/samplers_nfe.py --num 500 --nfe 4 8 --out runs/samplers_smoke
    python benchmarks/samplers_nfe.py \\
        --denoiser checkpoint src/difflab/assets/mnist_uvit.safetensors \\
        --num 1500 --batch 500 --nfe 8 10 --ref-split test --out results/samplers_mnist
"""

from __future__ import annotations

import json
import math

import torch
from common import machine
from sampler_bench import (
    NFES,
    Method,
    Runner,
    difflab_methods,
    diffusers_methods,
    jvp_costs,
    k_diffusion_methods,
    log,
    method_names,
    open_setup,
    parse,
    setup_arguments,
    store,
)
from samplers_report import Row, fmt


def equal_compute(setup, runner, rows, peers, jvp_cost: float, max_nfe: int) -> list[dict]:
    """cov_ddim at `s` steps costs `s + (c - 1) s` forwards (c: the U-ViT's forward+JVP cost);
    every peer gets the next integer NFE at or above that, i.e. at least as much compute."""
    key, out = setup.headline, []
    method = Method("cov_ddim", "difflab", "cov_ddim")
    for steps in range(1, max_nfe + 1):
        n, jvps = method.counts(steps)
        budget = n + (jvp_cost - 1.0) * jvps
        if budget > max_nfe:
            break
        cov = runner.row(method, steps, steps=steps)
        peer_nfe = math.ceil(budget - 1e-9)
        best = None
        for peer in peers:
            cached = [r for r in rows if r.method == peer.name and r.nfe_target == peer_nfe]
            row = cached[0] if cached else runner.row(peer, peer_nfe)
            if not cached:
                rows.append(row)
            if best is None or row.metrics[key] < best.metrics[key]:
                best = row
        out.append(
            {
                "cov_steps": steps,
                "compute_nfe": budget,
                "cov": cov.metrics[key],
                "cov_seconds": cov.seconds,
                "peer_nfe": peer_nfe,
                "best_peer": best.method,
                "best_peer_value": best.metrics[key],
                "best_peer_seconds": best.seconds,
            }
        )
        log(
            f"  equal compute: cov_ddim {steps} steps (= {budget:.1f} forwards) "
            f"{fmt(cov.metrics[key])} vs {best.method} @ NFE {peer_nfe}: {fmt(best.metrics[key])}"
        )
    return out


def equal_time(rows: list[Row], key: str, method: str) -> list[dict]:
    """Measured seconds on this run's denoiser: each run of `method` against the best diffusers
    run that took no longer."""
    out = []
    for cov in sorted((r for r in rows if r.method == method), key=lambda r: r.seconds):
        pool = [r for r in rows if r.family == "diffusers" and r.seconds <= cov.seconds]
        best = min(pool, key=lambda r: r.metrics[key]) if pool else None
        out.append(
            {
                "method": method,
                "cov_nfe": cov.nfe,
                "cov_seconds": cov.seconds,
                "cov": cov.metrics[key],
                "best_peer": best and best.method,
                "best_peer_nfe": best and best.nfe,
                "best_peer_seconds": best and best.seconds,
                "best_peer_value": best and best.metrics[key],
            }
        )
    return out


def main(argv=None) -> int:
    p = setup_arguments(__doc__.split("\n\n")[0])
    p.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--methods", nargs="+", help="run only these methods (names as in the tables)")
    p.add_argument("--no-diffusers", action="store_true", help="only difflab's samplers")
    p.add_argument("--no-k-diffusion", action="store_true", help="no k-diffusion peers")
    p.add_argument("--no-equal-compute", action="store_true", help="skip the equal-compute rows")
    p.add_argument("--jvp-reps", type=int, default=7, help="timed repetitions of the JVP cost")
    args = parse(p, argv)
    setup = open_setup(args)
    key = setup.headline
    runner = Runner(setup, args.num, args.batch, args.seed)
    log("measuring the posterior spectrum table on data ...")
    methods = difflab_methods(setup, args.table_levels)
    peers = [] if args.no_diffusers else diffusers_methods()
    peers += [] if args.no_k_diffusion else k_diffusion_methods()
    methods, peers = method_names(methods, peers, args.methods)
    part: dict = {
        "setup": setup.description,
        "machine": machine(args.device),
        "num_samples": args.num,
        "seed": args.seed,
        "nfe": args.nfe,
        "headline": key,
    }
    log("cost of a JVP (forward+JVP time / forward time) ...")
    costs = jvp_costs(setup, args.jvp_reps)
    jvp_cost = costs["checkpoint" if setup.kind == "checkpoint" else "uvit16"]["vs_sdpa"]
    part["jvp_cost"] = costs
    log(f"  {json.dumps({k: round(v['vs_sdpa'], 2) for k, v in costs.items()})}")
    part["exact_samples"] = None  # the floor: oracle runs only
    if setup.oracle is not None:
        x, _ = setup.oracle.sample(args.num, torch.Generator().manual_seed(args.seed + 5))
        part["exact_samples"] = setup.evaluate(x)
        log(f"exact samples ({args.num}): {key} {fmt(part['exact_samples'][key])}")
    rows: list[Row] = []
    for method in methods + peers:
        for nfe in args.nfe:
            row = runner.row(method, nfe)
            rows.append(row)
            log(
                f"{method.name:22s} NFE {nfe:3d} (steps {row.steps:2d}, NFE {row.nfe:2d}, "
                f"JVPs {row.jvps:2d}): {key} {fmt(row.metrics[key])}  [{row.seconds:.1f} s]"
            )
    part["equal_compute"] = part["equal_time"] = None
    if peers and not args.no_equal_compute:
        log("equal compute ...")
        part["equal_compute"] = equal_compute(
            setup, runner, rows, peers, jvp_cost, max_nfe=max(args.nfe)
        )
    if peers:
        part["equal_time"] = equal_time(rows, key, "cov_ddim") + equal_time(
            rows, key, "cov_ddim_table"
        )
    part["rows"] = [r.__dict__ for r in rows]
    store(args, part, partial=bool(args.methods))  # --methods adds to the stored rows
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
