"""difflab's samplers on a diffusers-trained model: a `UNet2DModel` trained on MNIST with
diffusers' own recipe (`benchmarks/diffusers_model_train.py`), sampled by diffusers' schedulers in
diffusers' own loop, by difflab's samplers through `difflab.from_diffusers` and by k-diffusion's
samplers through `difflab.to_k_diffusion`, at each NFE of `--nfe`, from the same initial noise;
fd-lenet (our MNIST LeNet's Frechet distance, not FID) against MNIST `--ref-split` statistics.
The best `--spread-top` methods of each family at `--spread-nfe` (run first) are re-run on
`--spread-seeds` further noise seeds: the seed spread the target is judged against.

Each family runs as its users run it: diffusers' schedulers from the training scheduler's config
(`from_config`; DDIM with trailing timesteps and final alpha 1, sample clipping as configured;
the multistep solvers unclipped), difflab's samplers on their default grids over the model's
continuous-time schedule with `x_hat` clipped to [-1, 1] (`difflab sample`'s default), and
k-diffusion's on its Karras sigmas over the model's range. Rows are stored as they finish
(`results.json`), so a stopped run keeps what it measured; the report renders from that file.

    python benchmarks/diffusers_model_samplers.py --model runs/diffusers_mnist --num 500
    python benchmarks/diffusers_model_samplers.py --report-only
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
from common import (
    RAW,
    command_line,
    fmt_sig,
    locked_update,
    markdown_table,
    read_json,
    record_run,
    study_folder,
    update_results,
    write_report,
)

from difflab.diffusion.parameterization import as_denoiser
from difflab.sampling.diffusers_adapter import PEERS

# the diffusers peers of the sampler benchmarks, with the same scheduler settings
DIFFUSERS = {
    name: PEERS[name]
    for name in (
        "diffusers_ddim",
        "diffusers_dpmpp_2m",
        "diffusers_dpmpp_2m_karras",
        "diffusers_dpmpp_2m_sde",
        "diffusers_unipc",
    )
}
DIFFLAB = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde")
K_DIFFUSION = ("k_dpmpp_2m_karras", "k_dpmpp_2m_sde")
NOCLIP = "_noclip"
"""Suffix of a difflab or k-diffusion method run without clipping `x_hat` (diffusers' multistep
schedulers do not clip; its DDIM clips `x0` as configured but keeps the model's `eps`)."""
DIFFLAB += tuple(n + NOCLIP for n in DIFFLAB)
K_DIFFUSION += tuple(n + NOCLIP for n in K_DIFFUSION)
FAMILY = {
    **dict.fromkeys(DIFFUSERS, "diffusers"),
    **dict.fromkeys(DIFFLAB, "difflab"),
    **dict.fromkeys(K_DIFFUSION, "k-diffusion"),
}
OUT = "results/diffusers_model"


def load(folder: Path):
    """(unet, training scheduler, difflab wrapper with `x_hat` clipped to [-1, 1]) of a
    `diffusers_model_train.py` folder."""
    from difflab.interop import load_diffusers

    model = load_diffusers(folder, clip_x=1.0)
    return model.model, model.scheduler, model


def run_diffusers(name, unet, train, z, steps, gen):
    import diffusers

    cls, extra = DIFFUSERS[name]
    scheduler = getattr(diffusers, cls).from_config(train.config, **extra)
    scheduler.set_timesteps(steps)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    x = z * scheduler.init_noise_sigma
    noise = {"generator": gen} if "sde" in name else {}
    for t in scheduler.timesteps:
        out = unet(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(out, t, x, **noise).prev_sample
    return x


def run_difflab(name, denoise, schedule, z, steps, gen):
    from difflab.sampling import default_grid, get_sampler

    grid = default_grid(name, schedule, steps)
    return get_sampler(name).fn(denoise, z, grid, generator=gen)


def run_method(name, unet, train, model, z, steps, gen):
    if FAMILY[name] == "diffusers":
        return run_diffusers(name, unet, train, z, steps, gen)
    base, clip = name.removesuffix(NOCLIP), not name.endswith(NOCLIP)
    denoise = model.denoiser() if clip else as_denoiser(model.net, model.prediction)
    if FAMILY[name] == "difflab":
        return run_difflab(base, denoise, model.schedule, z, steps, gen)
    from sampler_bench import run_k_diffusion

    return run_k_diffusion(base, model.schedule, denoise, z, steps, gen)


def make_scorer(ref_split: str):
    from difflab.eval.features import get_feature_extractor
    from difflab.eval.metrics import feature_stats, frechet_distance
    from difflab.eval.reference import compute_reference_stats, load_reference_stats

    ex = get_feature_extractor("fd-lenet")
    try:
        ref = load_reference_stats("mnist", ref_split, ex)
    except FileNotFoundError:
        compute_reference_stats("mnist", ref_split, "fd-lenet")
        ref = load_reference_stats("mnist", ref_split, ex)

    def score(images: torch.Tensor) -> float:
        x = images.clamp(-1, 1).float()
        return frechet_distance(feature_stats(ex(x, progress=False), "samples"), ref)

    return score


def sample_rows(args, names, nfes, seed, unet, train, model, score, out, key):
    """Sample every (method, NFE) on the noise of `seed`; store each row as it finishes."""
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    z = torch.randn(args.num, *shape, generator=torch.Generator().manual_seed(seed))
    for nfe in nfes:
        for name in names:
            done = read_json(out / RAW, {}).get(key, [])
            if any(r["method"] == name and r["nfe"] == nfe and r["seed"] == seed for r in done):
                continue  # measured by an earlier (stopped) run
            gen = torch.Generator().manual_seed(seed + 1000)
            start, parts = time.perf_counter(), []
            with torch.inference_mode():
                for lo in range(0, args.num, args.batch):
                    zb = z[lo : lo + args.batch]
                    parts.append(run_method(name, unet, train, model, zb, nfe, gen))
            x = torch.cat(parts)
            seconds = time.perf_counter() - start
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            fd = math.inf if bad else score(x)
            row = {"method": name, "family": FAMILY[name], "nfe": nfe, "seed": seed,
                   "fd_lenet": fd, "seconds": round(seconds, 1), "nonfinite": bad}  # fmt: skip
            print(f"{name:26s} NFE {nfe:3d} seed {seed}: fd-lenet {fd:.3f} [{seconds:.0f} s]",
                  flush=True)  # fmt: skip
            stored = read_json(out / RAW, {}).get(key, [])
            update_results(out, {key: [*stored, row]})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/diffusers_mnist", help="diffusers_model_train --out")
    p.add_argument("--num", type=int, default=500, help="samples per (method, NFE, seed)")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--methods", nargs="+", default=[*DIFFUSERS, *DIFFLAB, *K_DIFFUSION])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spread-seeds", type=int, nargs="*", default=[1, 2])
    p.add_argument("--spread-nfe", type=int, default=8)
    p.add_argument("--spread-top", type=int, default=2, help="best methods per family re-run")
    p.add_argument("--spread-methods", nargs="*", default=None, help="re-run these instead")
    p.add_argument("--ref-split", default="test")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=OUT)
    p.add_argument("--report-only", action="store_true", help="re-render README.md only")
    args = p.parse_args(argv)
    out = study_folder(args.out)
    if args.report_only:
        write_report(out, report_text(out))
        return 0
    unknown = sorted(set(args.methods) - set(FAMILY))
    if unknown:
        p.error(f"unknown methods {unknown}; known: {sorted(FAMILY)}")
    torch.set_num_threads(args.threads)
    from common import machine

    from difflab.data.mnist import load_mnist

    folder = Path(args.model)
    unet, train, model = load(folder)
    state = read_json(folder / "train_state.json", {})
    score = make_scorer(args.ref_split)
    images, _ = load_mnist("train")
    real = torch.from_numpy(images[: args.num]).float()[:, None] / 127.5 - 1
    out.mkdir(parents=True, exist_ok=True)
    update_results(out, {
        "model": {"path": str(folder), "class": type(unet).__name__,
                  "parameters": sum(q.numel() for q in unet.parameters()),
                  "train_steps": state.get("step"), "train_seconds": state.get("seconds"),
                  "train_args": state.get("args"), "final_loss": (state.get("loss_per_100")
                                                                  or [None])[-1],
                  "scheduler": dict(train.config)},
        "num": args.num, "nfe": args.nfe, "seed": args.seed, "ref_split": args.ref_split,
        "spread_nfe": args.spread_nfe, "spread_seeds": args.spread_seeds,
        "real_floor": score(real), "machine": machine(),
    })  # fmt: skip
    this = command_line(argv)

    def add_command(mine: dict, stored: dict) -> dict:
        earlier = stored.get("commands", [])
        if "command" in stored:  # the one-command form of the first run
            earlier = [stored.pop("command"), *earlier]
        return {**stored, "commands": [*(c for c in earlier if c != this), this]}

    locked_update(out / RAW, {}, add_command)
    print(f"real MNIST train images ({args.num}): fd-lenet {score(real):.3f}", flush=True)
    # the spread NFE first (all methods, then the seed spread), so a stopped run has the target
    first = [n for n in args.nfe if n == args.spread_nfe]
    sample_rows(args, args.methods, first, args.seed, unet, train, model, score, out, "rows")
    rows = read_json(out / RAW)["rows"]
    spread = []
    for family in ("diffusers", "difflab", "k-diffusion"):
        pool = [r for r in rows if r["family"] == family and r["nfe"] == args.spread_nfe]
        spread += [r["method"] for r in sorted(pool, key=lambda r: r["fd_lenet"])][
            : args.spread_top
        ]
    spread = spread if args.spread_methods is None else args.spread_methods
    for seed in args.spread_seeds:
        sample_rows(args, spread, [args.spread_nfe], seed, unet, train, model, score, out,
                    "spread_rows")  # fmt: skip
    rest = [n for n in args.nfe if n != args.spread_nfe]
    sample_rows(args, args.methods, rest, args.seed, unet, train, model, score, out, "rows")
    record_run(out, command_line(argv))
    write_report(out, report_text(out))
    return 0


# ----------------------------------------------------------------------------- the report


def fmt(value: float) -> str:
    return fmt_sig(value, 4, big=1e6)


def seed_summary(data: dict) -> dict[str, tuple[float, float, int]]:
    """method -> (mean, sample std, n) of fd-lenet at the spread NFE over every seed measured."""
    nfe = data.get("spread_nfe")
    values: dict[str, list[float]] = {}
    for r in [*data.get("rows", []), *data.get("spread_rows", [])]:
        if r["nfe"] == nfe:
            values.setdefault(r["method"], []).append(r["fd_lenet"])
    return {
        m: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else math.nan, len(v))
        for m, v in values.items()
        if len(v) > 1
    }


def report_text(folder: str | Path) -> str:
    folder = Path(folder)
    data = read_json(folder / RAW)
    rows = data.get("rows", [])
    nfes = sorted({r["nfe"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    m, model = data["machine"], data["model"]
    table = []
    for name in methods:
        vals = {r["nfe"]: r["fd_lenet"] for r in rows if r["method"] == name}
        cells = [fmt(vals[n]) if n in vals else "" for n in nfes]
        table.append([f"`{name}`", FAMILY.get(name, "?"), *cells])
    best = {}
    for n in nfes:
        for family in ("diffusers", "difflab", "k-diffusion"):
            pool = [r for r in rows if r["family"] == family and r["nfe"] == n]
            if pool:
                best[(family, n)] = min(pool, key=lambda r: r["fd_lenet"])
    lines = [
        "# difflab's samplers on a diffusers-trained model",
        "",
        "Commands (`benchmarks/diffusers_model_samplers.py` renders this report from "
        "`results.json` alone):",
        "",
        "    python benchmarks/diffusers_model_train.py --minutes 23 --out runs/diffusers_mnist",
        *[f"    {c}" for c in data.get("commands", [])],
        "",
        f"- Model: diffusers `{model['class']}` ({model['parameters'] / 1e6:.2f}M parameters) "
        f"trained on MNIST with diffusers' recipe (DDPMScheduler, 1000 linear-beta steps, "
        f"epsilon, AdamW, cosine learning rate, EMA): {model['train_steps']} steps of batch "
        f"{(model.get('train_args') or {}).get('batch')} in {model['train_seconds']} s on this "
        f"shared CPU (final loss {model['final_loss']}); its folder is committed as "
        "`results/diffusers_model/model/`. A CPU-budget model: its samples are "
        "far from MNIST, so the numbers rank samplers on this model, not against other studies.",
        f"- {data['num']} samples per (method, NFE), the same initial noise for every method "
        f"(seed {data['seed']}); fd-lenet (Frechet distance in the features of difflab's MNIST "
        f"LeNet, not FID) against MNIST {data['ref_split']} statistics. Real MNIST train images "
        f"of the same count score {data['real_floor']:.2f} (the floor at this sample size).",
        "- diffusers: its schedulers from the training scheduler's config, in diffusers' own "
        "loop; difflab: `difflab.from_diffusers`, default grids on the model's continuous-time "
        "schedule, `x_hat` clipped to [-1, 1] (`*_noclip`: unclipped, as diffusers' multistep "
        "schedulers run; diffusers' DDIM clips `x0` as its config says but keeps the model's "
        "`eps`); k-diffusion: the same denoiser through `difflab.to_k_diffusion`, on Karras "
        "sigmas over the model's range.",
        f"- Machine: {m['cpu']} ({m['cores']} cores shared with other jobs, "
        f"{m['torch_threads']} torch thread); torch {m['torch']}, diffusers {m['diffusers']}.",
        "",
        "## fd-lenet by NFE",
        "",
        *markdown_table(
            ["method", "family", *[f"NFE {n}" for n in nfes]], table, "ll" + "r" * len(nfes)
        ),  # fmt: skip
        "",
        "## Best of each family",
        "",
    ]
    for n in nfes:
        parts = [
            f"{fam} `{best[(fam, n)]['method']}` {fmt(best[(fam, n)]['fd_lenet'])}"
            for fam in ("difflab", "diffusers", "k-diffusion")
            if (fam, n) in best
        ]
        lines.append(f"- NFE {n}: " + "; ".join(parts))
    summary = seed_summary(data)
    if summary:
        lines += [
            "",
            f"## Seed spread at NFE {data['spread_nfe']}",
            "",
            f"The best methods of each family re-run on further noise seeds "
            f"({', '.join(map(str, data['spread_seeds']))}): mean and sample standard deviation "
            "of fd-lenet over the seeds.",
            "",
            *markdown_table(
                ["method", "family", "seeds", "mean", "std"],
                [
                    [f"`{k}`", FAMILY.get(k, "?"), n, fmt(mu), fmt(sd)]
                    for k, (mu, sd, n) in sorted(summary.items(), key=lambda kv: kv[1][0])
                ],
                "llrrr",
            ),  # fmt: skip
        ]
        theirs = [(k, v) for k, v in summary.items() if FAMILY.get(k) == "diffusers"]
        ours_all = [(k, v) for k, v in summary.items() if FAMILY.get(k) == "difflab"]
        ours_noclip = [(k, v) for k, v in ours_all if k.endswith(NOCLIP)]
        for label, ours in (("", ours_all), (" unclipped", ours_noclip)):
            if not ours or not theirs:
                continue
            ko, (mo, so, _) = min(ours, key=lambda kv: kv[1][0])
            kt, (mt, st, _) = min(theirs, key=lambda kv: kv[1][0])
            gap, spread = mt - mo, max(so, st)
            verdict = "beats" if gap > 2 * spread else "does not beat"
            lines += [
                "",
                f"At NFE {data['spread_nfe']} difflab's best{label} sampler (`{ko}`, {mo:.1f} "
                f"± {so:.1f}) {verdict} diffusers' best (`{kt}`, {mt:.1f} ± {st:.1f}) beyond the "
                f"seed spread (gap {gap:.1f}; the rule: gap > 2 x the larger std).",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
