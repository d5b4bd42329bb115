"""Which grid suits each sampler: the Frechet distance of every studied sampler on each
candidate grid (uniform-t, shifted uniform-t, EDM, uniform-logsnr) at each NFE; the best grid
by geometric mean over NFE. The defaults in `difflab.sampling.DEFAULT_GRIDS` come from it.

Writes `<out>/grids.json` and the `grid_study` key of `<out>/results.json`; `--from-file`
stores an earlier study instead of running one.

    python benchmarks/samplers_grids.py --grid-num 2000 --batch 2000
    python benchmarks/samplers_grids.py --from-file results/samplers/grids.json
"""

from __future__ import annotations

import json
import math

from common import read_json, study_folder, write_json
from sampler_bench import (
    GRID_CANDIDATES,
    NFES,
    STUDIED,
    Method,
    Runner,
    difflab_methods,
    log,
    open_setup,
    parse,
    setup_arguments,
    store,
)
from samplers_report import fmt

from difflab.sampling import DEFAULT_GRIDS


def grid_study(setup, runner, nfes, methods: list[Method]) -> dict:
    """FD of each sampler on each candidate grid; the best grid by geometric mean over NFE."""
    table = {}
    samplers = [m.name for m in methods]
    for method in methods:
        name, method = method.name, Method(method.name, "difflab", method.sampler, method.options)
        table[name] = {}
        for choice in GRID_CANDIDATES:
            method.grid = choice
            values = []
            for nfe in nfes:
                values.append(runner.row(method, nfe).metrics[setup.headline])
            table[name][choice.label] = values
            log(f"  grid {name:9s} {choice.label:28s} " + " ".join(fmt(v) for v in values))
    best = {
        name: min(rows, key=lambda g: sum(math.log(max(v, 1e-12)) for v in rows[g]))
        for name, rows in table.items()
    }
    return {
        "nfe": list(nfes),
        "num_samples": runner.z.shape[0],
        "fd": table,
        "best": best,
        "default": {n: DEFAULT_GRIDS[n].label for n in samplers},
    }


def main(argv=None) -> int:
    p = setup_arguments(__doc__.split("\n\n")[0])
    p.add_argument("--grid-num", type=int, default=2000, help="samples per grid-study point")
    p.add_argument("--grid-nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--from-file", help="store this earlier grids.json instead of running")
    args = parse(p, argv)
    folder = study_folder(args.out)
    if args.from_file:
        study = read_json(args.from_file)
        study["from"] = args.from_file
    else:
        setup = open_setup(args)
        small = Runner(setup, min(args.grid_num, args.num), args.batch, args.seed)
        methods = [m for m in difflab_methods(setup, args.table_levels) if m.name in STUDIED]
        study = grid_study(setup, small, args.grid_nfe, methods)
        study["command"] = args.command
        write_json(folder / "grids.json", study)
        log(json.dumps(study["best"], indent=1))
    study["default"] = {n: DEFAULT_GRIDS[n].label for n in STUDIED}
    store(args, {"grid_study": study})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
