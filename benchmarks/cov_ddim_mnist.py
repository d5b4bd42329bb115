"""Does the covariance-aware DDIM's oracle-tuned configuration transfer to a trained model?
And does the covariance correction help on a second-order (DPM-Solver++(2M)) mean path?

On the exact oracle the best `cov_ddim` uses a uniform-t grid shifted by -2 logsnr and samples
around the mean at the last step (`docs/methods/cov_ddim.md`); on the shipped MNIST model that
default loses to DDIM (`results/samplers_mnist/`). This sweeps the choices that the oracle fixed
(grid, stochastic or deterministic steps, last-step rule) on the MNIST model with the JVP-free
`cov_ddim_table` (the same variance model, its expectation over data; one forward per step, so
a sweep is affordable on a CPU), with DDIM and DPM-Solver++(2M) on the same noise for
reference, and the JVP `cov_ddim` for the best setting. Metric: fd-lenet against the MNIST
test statistics (our LeNet features, not FID).

Two studies, each stored under its name in `<out>/results.json` (a run replaces its own study
and keeps the other; the report `<out>/README.md` shows both):

- `cov_ddim`: the `cov_ddim_table` sweep over grids and rules (one NFE);
- `cov_dpmpp`: `cov_dpmpp_2m_table` (2M mean path + tabulated covariance) over the rules,
  `order2_weight` and `eta`, on the 2M grid and uniform-t, and `cov_dpmpp_2m` (JVP) at the best
  table settings, at every `--nfe`, with DDIM, DPM-Solver++(2M) and the best `cov_ddim_table`
  setting on the same noise.

    python benchmarks/cov_ddim_mnist.py --num 500 --nfe 8 --jvp
    python benchmarks/cov_ddim_mnist.py --study cov_dpmpp --num 500 --nfe 8 10 --jvp
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from common import (
    RAW,
    command_line,
    machine,
    markdown_table,
    read_json,
    record_run,
    study_folder,
    write_json,
    write_report,
)

from difflab.sampling import GridChoice

GRIDS = {
    "uniform_t": GridChoice("uniform_t"),
    "uniform_t-2": GridChoice("uniform_t", shift=-2.0),
    "uniform_t+2": GridChoice("uniform_t", shift=2.0),
    "uniform_logsnr (EDM range)": GridChoice("uniform_logsnr", edm_range=True),
}


TITLES = {
    "cov_ddim": "Covariance-aware DDIM (`cov_ddim_table`): grid and last-step rule",
    "cov_dpmpp": "Covariance-aware DPM-Solver++(2M) (`cov_dpmpp_2m[_table]`)",
}
RULES = [
    ("deterministic", "mean"),
    ("deterministic", "deterministic"),
    ("stochastic", "mean"),
    ("stochastic", "stochastic"),
]


def cov_ddim_study(score, table, nfes: list[int], jvp: bool) -> list[dict]:
    """The `cov_ddim_table` sweep over grids and rules, DDIM and 2M for reference."""
    nfe = nfes[0]
    rows = [
        score("ddim", GRIDS["uniform_t"], nfe),
        score("dpmpp_2m", GRIDS["uniform_logsnr (EDM range)"], nfe),
    ]
    for grid in GRIDS.values():
        for variant, final in RULES:
            rows.append(
                score("cov_ddim_table", grid, nfe, table=table, variant=variant, final=final)
            )
    best = min((r for r in rows if r["sampler"] == "cov_ddim_table"), key=lambda r: r["fd_lenet"])
    if jvp:
        options = {k: best["options"][k] for k in ("variant", "final")}
        rows.append(score("cov_ddim", GRIDS[best["grid"]], nfe, **options))
    return rows


def cov_dpmpp_study(score, table, nfes: list[int], jvp: bool) -> list[dict]:
    """2M mean path + covariance: rules x `order2_weight` (and `eta = 1`) on the 2M grid, the
    best on uniform-t, then the JVP sampler at the best two table settings."""
    two_m = GRIDS["uniform_logsnr (EDM range)"]
    rows = []
    for nfe in nfes:
        rows += [
            score("ddim", GRIDS["uniform_t"], nfe),
            score("dpmpp_2m", two_m, nfe),
            score(
                "cov_ddim_table",
                GRIDS["uniform_t"],
                nfe,
                table=table,
                variant="deterministic",
                final="mean",
            ),
        ]
        sweep = []
        for weight in (0.0, 1.0):
            for variant, final in RULES:
                options = {"variant": variant, "final": final, "order2_weight": weight}
                sweep.append(score("cov_dpmpp_2m_table", two_m, nfe, table=table, **options))
            options = {"variant": "stochastic", "final": "mean", "order2_weight": weight}
            sweep.append(score("cov_dpmpp_2m_table", two_m, nfe, table=table, eta=1.0, **options))
        ranked = sorted(sweep, key=lambda r: r["fd_lenet"])
        for r in ranked[:1]:
            sweep.append(
                score("cov_dpmpp_2m_table", GRIDS["uniform_t"], nfe, table=table, **r["options"])
            )
        rows += sweep
        if jvp:
            for r in ranked[:2]:
                rows.append(score("cov_dpmpp_2m", two_m, nfe, **r["options"]))
    return rows


def render(title: str, study: dict) -> list[str]:
    cells = []
    for r in study["rows"]:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        cells.append([r["nfe"], r["sampler"], r["grid"], opts, r.get("jvps", "-"),
                      f"{r['fd_lenet']:.1f}", f"{r['seconds']:.0f}"])  # fmt: skip
    header = ["NFE", "sampler", "grid", "options", "JVPs", "fd-lenet", "seconds"]
    table = markdown_table(header, cells, "rlllrrr")
    return [f"## {title}", "", f"`{study['command']}`", "", *table, ""]


def main(argv=None) -> int:
    import torch

    from difflab.allocator import apply_malloc_fix
    from difflab.data.mnist import load_mnist
    from difflab.eval.features import get_feature_extractor
    from difflab.eval.metrics import frechet_distance
    from difflab.eval.reference import load_reference_stats
    from difflab.sampling import get_sampler, measure_posterior_spectrum
    from difflab.train import load_denoiser

    apply_malloc_fix()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="src/difflab/assets/mnist_uvit.safetensors")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--study", choices=("cov_ddim", "cov_dpmpp"), default="cov_ddim")
    p.add_argument("--nfe", type=int, nargs="+", default=[8])
    p.add_argument("--table-num", type=int, default=300)
    p.add_argument("--table-levels", type=int, default=41)
    p.add_argument(
        "--jvp", action="store_true", help="also run the JVP sampler at the best setting"
    )
    p.add_argument("--out", default="results/cov_ddim_mnist")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    make, cfg = load_denoiser(args.checkpoint)
    schedule = cfg.diffusion.build_schedule()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(args.num, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (args.num,), generator=gen)
    denoise = make(labels=labels)
    lenet = get_feature_extractor("fd-lenet")
    ref = load_reference_stats("mnist", "test", lenet)

    images, _ = load_mnist("train")
    data = torch.from_numpy(images[: args.table_num]).float()[:, None] / 127.5 - 1
    levels = torch.linspace(schedule.logsnr_min, schedule.logsnr_max, args.table_levels)
    table = measure_posterior_spectrum(
        make(), data, levels, generator=torch.Generator().manual_seed(3)
    )

    def score(sampler: str, grid, nfe: int, **options) -> dict:
        start = time.perf_counter()
        logsnrs = grid.build(schedule, nfe)
        spec = get_sampler(sampler)
        with torch.inference_mode(mode=not spec.jvps(nfe, **options)):
            x = spec.fn(denoise, z, logsnrs, generator=torch.Generator().manual_seed(1), **options)
        fd = frechet_distance(lenet(x.clamp(-1, 1), progress=False), ref)
        shown = {k: v for k, v in options.items() if k != "table"}
        row = {"sampler": sampler, "grid": grid.label, "nfe": nfe, "options": shown}
        row |= {"jvps": spec.jvps(nfe, **options), "fd_lenet": fd}
        row["seconds"] = time.perf_counter() - start
        print(json.dumps(row), flush=True)
        return row

    study = cov_ddim_study if args.study == "cov_ddim" else cov_dpmpp_study
    rows = study(score, table, args.nfe, args.jvp)

    folder = study_folder(args.out)
    command = command_line(argv)
    stored = read_json(folder / RAW, {"studies": {}})
    stored["studies"][args.study] = {"command": command, "rows": rows}
    stored["setup"] = {
        "num": args.num,
        "table_num": args.table_num,
        "table_levels": args.table_levels,
        "machine": {**machine(), "arch": platform.machine()},
    }
    write_json(folder / RAW, stored)
    write_report(folder, report(stored))
    record_run(folder, command)
    return 0


def report(stored: dict) -> str:
    """The report of the stored studies (`results.json`)."""
    setup, m = stored["setup"], stored["setup"]["machine"]
    text = (
        f"{setup['num']} samples, the same noise and random labels for every row (seed 0); "
        "fd-lenet vs MNIST test statistics (LeNet features, not FID; small sample, so compare "
        "rows, not against other tables). Variance table measured on "
        f"{setup['table_num']} training images at {setup['table_levels']} levels. Machine: "
        f"{m['arch']}, {m['cores']} shared CPU cores, {m['torch_threads']} torch thread, "
        f"torch {m['torch']}."
    )
    lines = ["# Covariance-aware samplers on the shipped MNIST model", "", text, ""]
    for name, title in TITLES.items():
        if name in stored["studies"]:
            lines += render(title, stored["studies"][name])
    return "\n".join(lines)


def report_text(folder: Path) -> str:
    return report(read_json(Path(folder) / RAW))


if __name__ == "__main__":
    raise SystemExit(main())
