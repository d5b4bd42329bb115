"""k-diffusion's samplers as a second peer family, added to a sampler study's rows: each of
`sampler_bench.K_PEERS` at each NFE of the study, on the same denoiser, from the same initial
noise (`--num`, `--seed` as the study's `samplers_nfe.py` run), its rows merged into the study's
`rows` (earlier k-diffusion rows replaced, every other row kept) and the report re-rendered.

`samplers_nfe.py` runs these peers too (unless `--no-k-diffusion`); this script adds them to a
study without re-running everything else:

    python benchmarks/samplers_kdiffusion.py                       # the oracle study, 4000 samples
    python benchmarks/samplers_kdiffusion.py --nfe 4 8 --num 500 --out runs/samplers_smoke
"""

from __future__ import annotations

from common import RAW, read_json, study_folder
from sampler_bench import (
    NFES,
    Runner,
    k_diffusion_methods,
    log,
    method_names,
    open_setup,
    parse,
    setup_arguments,
    store,
)
from samplers_report import fmt


def main(argv=None) -> int:
    p = setup_arguments(__doc__.split("\n\n")[0])
    p.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--methods", nargs="+", help="run only these peers (names as in the tables)")
    args = parse(p, argv)
    peers = k_diffusion_methods()
    if not peers:
        raise SystemExit("k-diffusion is not installed (see docs/interop.md)")
    _, peers = method_names([], peers, args.methods)
    stored = read_json(study_folder(args.out) / RAW, {}) or {}
    if stored.get("rows") and (stored.get("num_samples"), stored.get("seed")) != (
        args.num,
        args.seed,
    ):
        raise SystemExit(
            f"the study in {args.out} used --num {stored.get('num_samples')} --seed "
            f"{stored.get('seed')}: run with the same to share its initial noise"
        )
    setup = open_setup(args)
    key = setup.headline
    runner = Runner(setup, args.num, args.batch, args.seed)
    rows = []
    for peer in peers:
        for nfe in args.nfe:
            row = runner.row(peer, nfe)
            rows.append(row)
            log(
                f"{peer.name:22s} NFE {nfe:3d} (steps {row.steps:2d}, NFE {row.nfe:2d}): "
                f"{key} {fmt(row.metrics[key])}  [{row.seconds:.1f} s]"
            )
    names = {p.name for p in peers}
    kept = [r for r in stored.get("rows", []) if r["method"] not in names]
    part = {"rows": kept + [r.__dict__ for r in rows]}
    if not stored.get("rows"):
        part |= {"setup": setup.description, "num_samples": args.num, "seed": args.seed,
                 "nfe": args.nfe, "headline": key}  # fmt: skip
    store(args, part)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
