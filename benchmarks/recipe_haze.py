"""Does more x-space loss weight at high logsnr remove the shipped model's grey haze? (issue 15)

`docs/methods/recipe.md` traces the haze to the net passing part of the remaining noise through
at high logsnr, where the sigmoid weighting's x-space weight is flat (`e^b`). This study
fine-tunes one trained model (`--model`, default the shipped MNIST U-ViT) for the same number
of steps under each row's weighting (`ROWS`; `control` keeps the model's own recipe, so it
separates "more training" from "another weighting"), then measures per row:

- the haze share and fd-lenet of `--num` samples with `dpmpp_2m` (16 NFE) and `ddpm` (32 NFE),
  same noise seed and class-balanced labels for every row;
- the denoiser on noised test images at fixed logsnr levels, on the border pixels that are
  black in the data: the bias of `x_hat` and the share of those pixels that `x_hat` lights
  (> 0 as 8-bit), the mechanism the docs name.

Row `start` is the model itself (no fine-tuning). Runs live in `runs/recipe/haze/<row>/` and
resume; finished rows in results.json are skipped.

    python benchmarks/recipe_haze.py --rows start,control,sig+2 --steps 800
    python benchmarks/recipe_haze.py --trajectory start,eps_mse     # the haze along a run
    python benchmarks/recipe_haze.py --hybrid start,eps_mse   # which levels make the haze
    python benchmarks/recipe_haze.py --grid-top start         # grids that stop lower
    python benchmarks/recipe_haze.py --haze-fid start         # what the haze costs in FID
    python benchmarks/recipe_haze.py --render --finding "..." --finding "..."

`--hybrid` runs `dpmpp_2m` (16 steps) with the exact denoiser of the training set
(`difflab.diffusion.EmpiricalDenoiser`, class by class, `ORACLE_IMAGES` images) below a switch
level and the row's net above it, and the other way round: a perfect denoiser makes no haze
(it ends on training images), so the first column says how much haze the net's calls above the
switch make from a perfect start, the second how much the calls below it leave that a perfect
finish cannot remove (none: the oracle snaps to a training image even at the last calls).
`--haze-fid` scores `HAZE_FID_NUM` samples by Inception FID as drawn and with every pixel at or
below `FAINT_LEVEL` (8-bit) set to black, beside as many real test images treated both ways, so
the FID that the faint grey costs is read off directly (a diagnostic, not a sampler option).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from functools import partial
from pathlib import Path

from common import (
    RAW,
    RESULTS,
    ROOT,
    command_line,
    fmt_sig,
    locked_update,
    markdown_table,
    read_json,
    record_run,
    write_report,
)

FOLDER = RESULTS / "recipe" / "haze"
RUNS = ROOT / "runs" / "recipe" / "haze"
ROWS: dict[str, list[str]] = {
    "start": [],  # the model as shipped: no fine-tuning
    "control": [],  # the model's own weighting
    "sig+2": ["diffusion.weighting=sigmoid", "diffusion.weighting_kwargs={bias: 2.0}"],
    "eps_mse": ["diffusion.weighting=eps_mse", "diffusion.weighting_kwargs={}"],
}
"""Row -> weighting overrides on top of the model's own config and `FINETUNE`."""
SAMPLERS = (("dpmpp_2m", 16), ("ddpm", 32))
LEVELS = (2.0, 4.0, 6.0, 8.0, 10.0)
"""logsnr levels of the border diagnostic."""
SWITCHES = (-math.inf, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0, math.inf)
"""Switch levels of `--hybrid` (the 16-step `dpmpp_2m` grid spans logsnr -8.8 to 12.4)."""
ORACLE_IMAGES = 20000
"""Training images (the first ones) of the empirical-data denoiser."""
HYBRID_NUM = 500
HAZE_FID_NUM = 2000
GRID_TOPS = (12.43, 10.0, 8.0, 6.0, 4.0)
"""`--grid-top`: the last finite level of a uniform-logsnr `dpmpp_2m` grid from `GRID_LOW` (the
default grid spans -8.76 to 12.43); the step after it goes to the data (logsnr = +inf)."""
GRID_LOW = -8.76
"""First level of the `--grid-top` grids: the default `dpmpp_2m` grid's (-8.764), rounded."""
FAINT_LEVEL = 15
"""`--haze-fid`: 8-bit levels 1..FAINT_LEVEL count as faint grey and are set to 0."""


def finetune_overrides(args, row: str) -> list[str]:
    """The fine-tuning run of `row`: from `--model`'s weights, `--steps` steps, a short warm-up
    and a cosine decay from `--lr`, one EMA (with warm-up), checkpoints every 200 steps."""
    from difflab.shipped import resolve_model_path

    return [
        f"train.init_from={resolve_model_path(args.model)}",
        f"train.steps={args.steps}",
        f"train.out_dir={RUNS / row}",
        f"optim.lr={args.lr}",
        "optim.warmup_steps=50",
        "optim.decay=cosine",
        "optim.min_lr=1e-5",
        "optim.ema_decays=[0.999]",
        "train.ckpt_every=200",
        "train.sample_every=0",
        "train.progress=false",
        "train.tensorboard=false",
        *ROWS[row],
    ]


def train(args, row: str) -> tuple[str, float]:
    """Fine-tune `row` (resuming); returns the run directory and this call's wall seconds."""
    from difflab.config import config_from_dict, config_to_dict
    from difflab.train import run_training
    from difflab.train.checkpoint import read_weights

    _, base, _ = read_weights(args.model)  # the model's own recipe
    cfg = config_from_dict(config_to_dict(base), finetune_overrides(args, row))
    start = time.perf_counter()
    run = run_training(cfg, resume=True)
    return str(run), round(time.perf_counter() - start, 1)


def border_diagnostic(model, num: int = 256, seed: int = 0, probes: int = 4) -> dict:
    """On the first `num` test images noised at each of `LEVELS` (one draw each), over the border
    pixels black in `x`: the mean of `x_hat - x`, the lit share of `x_hat` (> 0 as 8-bit), and
    the pass-through gain `alpha d x_hat_i / d z_i` of the unclipped denoiser (Hutchinson's
    diagonal estimate with `probes` Rademacher probes, one `torch.func.jvp` each): 0 for a net
    that snaps a black pixel to black whatever the noise, 1 for one that passes the noise
    through (`x_hat = z / alpha`). By Tweedie, `sigma^2 / alpha` times that derivative is the
    posterior variance the net implies, which the covariance-aware samplers draw from."""
    import torch

    from difflab.data import make_dataset
    from difflab.diffusion.parameterization import (
        alpha_sigma,
        as_denoiser,
        broadcast_logsnr,
        diffuse,
    )
    from difflab.eval.reference import reference_images
    from difflab.images import to_uint8_pixels
    from difflab.nets import math_attention

    dataset = model.config.data.name
    data = make_dataset(dataset, "test")
    labels = torch.tensor([int(data[i][1]) for i in range(num)])
    x = reference_images(dataset, "test", num).float() / 127.5 - 1
    black = x <= -1.0
    black[..., 4:-4, 4:-4] = False  # the border frame only
    gen = torch.Generator().manual_seed(seed)
    raw = as_denoiser(model.net, model.prediction, None, labels=labels)  # no clipping
    out = {}
    for level in LEVELS:
        logsnr = torch.full((num,), level)
        z = diffuse(x, torch.randn(x.shape, generator=gen), logsnr)
        alpha, _ = alpha_sigma(broadcast_logsnr(logsnr, x))
        with torch.no_grad():
            x_hat = model.denoiser(labels)(z, logsnr)
        lit = to_uint8_pixels(x_hat) > 0
        diagonal = torch.zeros_like(x)
        for _ in range(probes):
            v = torch.randint(0, 2, x.shape, generator=gen).float() * 2 - 1
            with torch.no_grad(), math_attention():
                _, jv = torch.func.jvp(partial(raw, logsnr=logsnr), (z,), (v,))
            diagonal += v * jv / probes
        gain = alpha * diagonal
        out[f"{level:g}"] = {
            "bias": float((x_hat - x)[black].mean()),
            "lit": float(lit.view_as(black)[black].double().mean()),
            "gain": float(gain[black].mean()),
        }
    return out


def trajectory(model, sampler: str = "dpmpp_2m", steps: int = 16, num: int = 200) -> list:
    """Along one sampler run (`num` samples, seed 0, class-balanced labels): at each network
    call `[logsnr, haze of x_hat, haze of z / alpha]`, where the haze is made."""
    from difflab.api import class_labels
    from difflab.diffusion.parameterization import alpha_sigma, broadcast_logsnr
    from difflab.eval.image_stats import haze_share
    from difflab.sampling.generate import generate

    calls = []

    def make_denoise(labels=None):
        denoise = model.make_denoise(labels=labels)

        def logged(z, logsnr):
            x_hat = denoise(z, logsnr)
            alpha, _ = alpha_sigma(broadcast_logsnr(logsnr, z))
            level = float(logsnr.flatten()[0])
            calls.append([round(level, 2), haze_share(x_hat), haze_share(z / alpha)])
            return x_hat

        return logged

    labels = class_labels(model, num, None)
    generate(make_denoise, model.shape, model.schedule, num=num, sampler=sampler, steps=steps,
             labels=labels, batch_size=num, progress=False)  # fmt: skip
    return calls


def add_to_rows(rows: list[str], key: str, measure) -> None:
    """Store `measure(model, stored_row)` of each stored row's model under `key` in
    results.json (the `--trajectory`, `--hybrid`, `--grid-top` and `--haze-fid` options)."""
    from difflab.api import load

    stored = read_json(FOLDER / RAW, {}).get("rows", {})
    for row in rows:
        print(f"{row}: {key}", flush=True)
        record = measure(load(stored[row]["run"]), stored[row])
        locked_update(FOLDER / RAW, {"rows": {row: {key: record}}})


@functools.cache
def class_oracle(dataset: str, num: int = ORACLE_IMAGES):
    """`make_denoise(labels)` of the exact denoiser of the first `num` training images, one
    `EmpiricalDenoiser` per class (the labels select the class of each sample)."""
    import torch

    from difflab.data import make_dataset
    from difflab.diffusion import EmpiricalDenoiser
    from difflab.diffusion.parameterization import level_for

    data = make_dataset(dataset, "train")
    pairs = [data[i] for i in range(num)]
    images = torch.stack([x for x, _ in pairs])
    targets = torch.tensor([int(y) for _, y in pairs])
    per_class = {int(c): EmpiricalDenoiser(images[targets == c]) for c in targets.unique()}

    def make_denoise(labels):
        def denoise(z, logsnr):
            level = level_for(logsnr, z)
            out = torch.empty_like(z)
            for c, oracle in per_class.items():
                rows = labels == c
                if rows.any():
                    out[rows] = oracle(z[rows], level if level.ndim == 0 else level[rows])
            return out

        return denoise

    return make_denoise


def hybrid(model, num: int = HYBRID_NUM) -> dict:
    """`{switch: [haze oracle-then-net, haze net-then-oracle]}` over `SWITCHES` (`dpmpp_2m`, 16
    steps, `num` class-balanced samples, noise seed 0 for every cell)."""
    from difflab.api import class_labels
    from difflab.eval.image_stats import haze_share
    from difflab.sampling.generate import generate

    labels = class_labels(model, num, None)
    oracle = class_oracle(model.config.data.name)

    def switched(first, then, switch):
        def make_denoise(labels=None):
            below, above = first(labels), then(labels)

            def denoise(z, logsnr):
                return below(z, logsnr) if float(logsnr.max()) < switch else above(z, logsnr)

            return denoise

        return make_denoise

    out = {}
    for switch in SWITCHES:
        hazes = []
        for first, then in ((oracle, model.make_denoise), (model.make_denoise, oracle)):
            gen = generate(switched(first, then, switch), model.shape, model.schedule, num=num,
                           sampler="dpmpp_2m", steps=16, labels=labels, progress=False)  # fmt: skip
            hazes.append(haze_share(gen.samples))
        out[f"{switch:g}"] = hazes
        print(f"  switch {switch:g}: oracle-then-net {hazes[0]:.3f}, then oracle {hazes[1]:.3f}")
    return out


def grid_top(model, num: int = 1000) -> dict:
    """`{"dpmpp_2m/<steps>": {top: [haze, fd-lenet]}}` over `GRID_TOPS` at 8 and 16 steps (`num`
    class-balanced samples, seed 0): does stopping the grid below the levels where the net
    passes the noise through remove the haze?"""
    import torch
    from recipe import lenet_scorer

    from difflab.api import sample
    from difflab.eval.image_stats import haze_share

    fd = lenet_scorer(model.config.data.name, "cpu")
    out = {}
    for steps in (8, 16):
        cells = out[f"dpmpp_2m/{steps}"] = {}
        for top in GRID_TOPS:
            grid = torch.cat([torch.linspace(GRID_LOW, top, steps), torch.tensor([math.inf])])
            gen = sample(model, num=num, sampler="dpmpp_2m", steps=steps, grid=grid, seed=0,
                         progress=False)  # fmt: skip
            cells[f"{top:g}"] = [haze_share(gen.samples), fd(gen.samples)]
            print(f"  {steps} steps, top {top:g}: haze, fd-lenet {cells[f'{top:g}']}", flush=True)
    return out


def faint_to_black(images):
    """uint8 images with the levels 1..FAINT_LEVEL set to 0."""
    return images.masked_fill((images > 0) & (images <= FAINT_LEVEL), 0)


def haze_fid(model, num: int = HAZE_FID_NUM, done: dict | None = None) -> dict:
    """Inception FID against the test split of `num` `dpmpp_2m` (16 NFE) samples and of the
    first `num` real test images, each as they are and with faint pixels blackened; the sets
    already in `done` (a stored record of the same `num`) are kept, not recomputed."""
    from difflab.api import sample
    from difflab.eval.features import get_feature_extractor
    from difflab.eval.image_stats import haze_share
    from difflab.eval.metrics import feature_stats, frechet_distance_from_stats
    from difflab.eval.reference import cached_reference_stats, reference_images
    from difflab.images import to_uint8_pixels

    dataset = model.config.data.name
    inception = get_feature_extractor("fid")
    ref = cached_reference_stats(dataset, "test", inception)
    drawn = to_uint8_pixels(sample(model, num=num, sampler="dpmpp_2m", steps=16, seed=0,
                                   progress=False).samples)  # fmt: skip
    real = reference_images(dataset, "test", num)
    sets = {"samples": drawn, "samples, faint blackened": faint_to_black(drawn),
            "real test": real, "real test, faint blackened": faint_to_black(real)}  # fmt: skip
    out = {"num": num, "faint_level": FAINT_LEVEL}
    done = done if done and done.get("num") == num else {}
    for name, images in sets.items():
        if name in done:
            out[name] = done[name]
            continue
        stats = feature_stats(inception(images, progress=False), name)
        fid = frechet_distance_from_stats(stats.mu, stats.cov, ref.mu, ref.cov)
        out[name] = {"fid": fid, "haze": haze_share(images)}
        print(f"  {name}: {out[name]}", flush=True)
    return out


def score(args, run: str | Path) -> dict:
    """Samples (haze, fd-lenet) and the border diagnostic of the EMA weights in `run`."""
    from recipe import lenet_scorer

    from difflab.api import load, sample
    from difflab.eval.image_stats import haze_share

    model = load(run)
    fd = lenet_scorer(model.config.data.name, "cpu")
    rows = {}
    for name, steps in SAMPLERS:
        gen = sample(model, num=args.num, sampler=name, steps=steps, seed=0, progress=False)
        rows[f"{name}/{steps}"] = {"fd_lenet": fd(gen.samples), "haze": haze_share(gen.samples)}
        print(f"  {name} {steps}: {rows[f'{name}/{steps}']}", flush=True)
    return {"samples": rows, "border": border_diagnostic(model), "model": model.source}


def run_rows(args) -> None:
    done = read_json(FOLDER / "results.json", {}).get("rows", {})
    for row in args.rows:
        if row in done:
            print(f"{row}: in results.json, skipped")
            continue
        print(f"{row}: fine-tuning {args.steps} steps" if row != "start" else "start: scoring")
        run, seconds = (args.model, 0.0) if row == "start" else train(args, row)
        record = {
            "run": run, "train_seconds": seconds, "steps": 0 if row == "start" else args.steps,
            "lr": args.lr, "overrides": ROWS[row], "num": args.num, **score(args, run),
        }  # fmt: skip
        locked_update(FOLDER / RAW, {"rows": {row: record}, "model": str(args.model)})
        record_run(FOLDER, command_line())
        write_report(FOLDER, report_text(FOLDER))


def report_text(folder: str | Path) -> str:
    """README.md of the study from its results.json alone."""
    data = read_json(Path(folder) / "results.json", {})
    stored = data.get("rows", {})
    rows = {name: stored[name] for name in [*ROWS, *stored] if name in stored}  # ROWS' order
    real = "0.0152 (MNIST test)"
    lines = [
        "# Haze: fine-tuning the shipped model under more x-space weight at high logsnr",
        "",
        f"Starting model `{data.get('model')}`; each row fine-tunes it for the same number of "
        "steps (batch of the model's recipe, warm-up 50, cosine decay from the row's lr to 1e-5, "
        "EMA 0.999 with warm-up) under the row's weighting; `control` keeps the model's own. "
        "Samples: class-balanced labels, noise seed 0, the same for every row; fd-lenet is a "
        "Frechet distance in difflab's LeNet features (not FID), biased upwards at this sample "
        f"size. Haze: share of the 4-pixel border frame lit in 8 bits; real digits {real}. "
        "How made: `benchmarks/recipe_haze.py` (manifest.json).",
        "",
    ]
    samplers = [f"{s}/{n}" for s, n in SAMPLERS]
    head = ["row", "weighting", "steps", "train s"]
    head += [f"{s} {m}" for s in samplers for m in ("fd-lenet", "haze")]
    table = []
    for name, r in rows.items():
        line = [f"`{name}`", " ".join(r["overrides"]) or "(model's own)", r["steps"],
                r["train_seconds"]]  # fmt: skip
        for s in samplers:
            line += [fmt_sig(r["samples"][s]["fd_lenet"]), fmt_sig(r["samples"][s]["haze"], 2)]
        table.append(line)
    lines += [f"Samples ({next(iter(rows.values()))['num'] if rows else 0} per sampler):", ""]
    lines += markdown_table(head, table, "lllr" + "r" * 2 * len(samplers))
    levels = list(next(iter(rows.values()))["border"]) if rows else []
    lines += ["", "Denoiser on 256 noised MNIST-test images, border pixels that are black in the "
              "data: lit share of `x_hat` (in brackets: the bias of `x_hat - x` and the "
              "pass-through gain `alpha d x_hat_i / d z_i`, 0 = snaps to black, 1 = keeps the "
              "noise):", ""]  # fmt: skip

    def cell(stats: dict) -> str:
        return f"{fmt_sig(stats['lit'], 2)} ({stats['bias']:+.4f}, {stats['gain']:.2f})"

    table = [[f"`{name}`", *[cell(r["border"][k]) for k in levels]] for name, r in rows.items()]
    head = ["row", *[f"logsnr {k}" for k in levels]]
    lines += markdown_table(head, table, "l" + "r" * len(levels))
    traced = {name: r["trajectory"] for name, r in rows.items() if "trajectory" in r}
    if traced:
        lines += ["", "Along a `dpmpp_2m` 16-step run (200 samples, seed 0), at each network "
                  "call: haze of `x_hat` / haze of `z / alpha` (`--trajectory`):", ""]  # fmt: skip
        first = next(iter(traced.values()))
        head = ["row", *[f"{level:g}" for level, _, _ in first]]
        table = [[f"`{name}`", *[f"{fmt_sig(x, 2)} / {fmt_sig(z, 2)}" for _, x, z in calls]]
                 for name, calls in traced.items()]  # fmt: skip
        lines += markdown_table(head, table, "l" + "r" * len(first))
    lines += hybrid_section(rows) + grid_top_section(rows) + haze_fid_section(rows)
    for note in data.get("findings", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def hybrid_section(rows: dict) -> list[str]:
    mixed = {name: r["hybrid"] for name, r in rows.items() if "hybrid" in r}
    if not mixed:
        return []
    lines = ["", f"Haze of `dpmpp_2m` 16-step samples ({HYBRID_NUM}, seed 0) when the exact "
             f"denoiser of the first {ORACLE_IMAGES} training images (class by class) replaces "
             "the net below / above a switch level (`--hybrid`): oracle then net / net then "
             "oracle. The oracle alone ends on training images.", ""]  # fmt: skip
    switches = list(next(iter(mixed.values())))
    head = ["row", *[f"switch {k}" for k in switches]]
    table = [[f"`{name}`", *[f"{fmt_sig(a, 2)} / {fmt_sig(b, 2)}" for a, b in cells.values()]]
             for name, cells in mixed.items()]  # fmt: skip
    return lines + markdown_table(head, table, "l" + "r" * len(switches))


def grid_top_section(rows: dict) -> list[str]:
    tops = {name: r["grid_top"] for name, r in rows.items() if "grid_top" in r}
    if not tops:
        return []
    lines = ["", f"`dpmpp_2m` on a uniform-logsnr grid from {GRID_LOW} to a lower last "
             "level, then to the data (1000 samples, seed 0; `--grid-top`): haze / fd-lenet.",
             ""]  # fmt: skip
    head = ["row", "sampler", *[f"top {t:g}" for t in GRID_TOPS]]
    table = [
        [f"`{name}`", sampler, *[f"{fmt_sig(h, 2)} / {fmt_sig(f)}" for h, f in by_top.values()]]
        for name, record in tops.items()
        for sampler, by_top in record.items()
    ]
    return lines + markdown_table(head, table, "ll" + "r" * len(GRID_TOPS))


def haze_fid_section(rows: dict) -> list[str]:
    scored = {name: r["haze_fid"] for name, r in rows.items() if "haze_fid" in r}
    if not scored:
        return []
    first = next(iter(scored.values()))
    lines = ["", f"Inception FID against the 10k test images of {first['num']} images "
             f"(`dpmpp_2m`, 16 NFE, seed 0; real: the first {first['num']} test images), as "
             f"drawn and with the 8-bit levels 1-{first['faint_level']} set to black "
             "(`--haze-fid`):", ""]  # fmt: skip
    head, table = ["row", "set", "FID", "haze"], []
    for name, record in scored.items():
        for key, cell in record.items():
            if isinstance(cell, dict):
                table.append([f"`{name}`", key, fmt_sig(cell["fid"]), fmt_sig(cell["haze"], 2)])
    return lines + markdown_table(head, table, "llrr")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist_uvit", help="model to fine-tune (path or name)")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--num", type=int, default=1000, help="samples per sampler")
    p.add_argument("--render", action="store_true", help="only re-render README.md")
    p.add_argument(
        "--trajectory", default=None, metavar="ROWS",
        help="add the haze along a dpmpp_2m 16-step run of these stored rows' models",
    )  # fmt: skip
    p.add_argument(
        "--hybrid",
        default=None,
        metavar="ROWS",
        help="add oracle/net hybrid sampling of these stored rows' models",
    )
    p.add_argument(
        "--grid-top",
        default=None,
        metavar="ROWS",
        help="add the haze of grids that end at lower levels, for these stored rows' models",
    )
    p.add_argument(
        "--haze-fid",
        default=None,
        metavar="ROWS",
        help="add the Inception FID with and without the faint grey of these rows",
    )
    p.add_argument(
        "--finding", action="append", default=None,
        help="with --render: replace the report's findings with these paragraphs",
    )  # fmt: skip
    args = p.parse_args(argv)
    added = (
        (args.trajectory, "trajectory", lambda model, _: trajectory(model)),
        (args.hybrid, "hybrid", lambda model, _: hybrid(model)),
        (args.grid_top, "grid_top", lambda model, _: grid_top(model)),
        (args.haze_fid, "haze_fid", lambda model, row: haze_fid(model, done=row.get("haze_fid"))),
    )
    for option, key, measure in added:
        if option:
            add_to_rows([r.strip() for r in option.split(",") if r.strip()], key, measure)
            record_run(FOLDER, command_line())
    if args.finding:
        locked_update(FOLDER / RAW, {"findings": args.finding}, lambda new, old: {**old, **new})
    if args.render:
        write_report(FOLDER, report_text(FOLDER))
        return 0
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"--rows: unknown {unknown}; rows: {list(ROWS)}")
    run_rows(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
