"""Unified Latents on MNIST (and Fashion-MNIST): bits, PSNR and fd-lenet against the loss factor.

How do bits per pixel (the bound), reconstruction PSNR and stage-2 generation (fd-lenet) move
with the loss factor `c`, and how do the baselines compare at matched bits (an MSE decoder, a
plain Gaussian prior, a KL-autoencoder)?

Each row trains stage 1 (`configs/ul_mnist.yaml` plus the row's overrides) and stage 2
(`configs/ul_mnist_base.yaml` on the frozen stage-1 latents) for fixed step counts, then measures
on the MNIST test split: PSNR of decoder reconstructions and the bitrate bound (first
`--eval-num` images), and fd-lenet of `--gen-num` stage-2 samples (base -> z_0 -> decoder, DDIM
with `--steps` steps in each stage). Rows already in results.json are skipped, so the sweep runs
in chunks (`--rows`); runs live in `runs/unified_latents/<row>/`.

    python benchmarks/unified_latents_curve.py --rows c1.0,c1.5,c2.5
    python benchmarks/unified_latents_curve.py --render     # README.md from results.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import (
    RESULTS,
    ROOT,
    command_line,
    fmt_sig,
    markdown_table,
    read_json,
    record_run,
    update_results,
    write_report,
)

FOLDER = RESULTS / "unified_latents"
RUNS = ROOT / "runs" / "unified_latents"
ROWS: dict[str, list[str]] = {
    "c1.0": ["method.kwargs.loss_factor=1.0"],
    "c1.5": ["method.kwargs.loss_factor=1.5"],
    "c2.5": ["method.kwargs.loss_factor=2.5"],
    "c4.0": ["method.kwargs.loss_factor=4.0"],
    "mse_c1.5": [
        "method.kwargs.decoder=mse",
        "method.kwargs.loss_factor=1.5",
        "method.kwargs.mse_logsnr=0.0",
    ],  # fmt: skip
    "mse_c6.0": [
        "method.kwargs.decoder=mse",
        "method.kwargs.loss_factor=6.0",
        "method.kwargs.mse_logsnr=0.0",
    ],  # fmt: skip
    "mse_c2.5": [
        "method.kwargs.decoder=mse",
        "method.kwargs.loss_factor=2.5",
        "method.kwargs.mse_logsnr=0.0",
    ],
    "l10_c2.5": ["method.kwargs.loss_factor=2.5", "method.kwargs.latent_logsnr=10.0"],
    "gauss_c4.0": ["method.kwargs.loss_factor=4.0"],
    "klae_c2.5_b1": ["method.kwargs.loss_factor=2.5", "method.kwargs.rate_weight=1.0"],
    "lvar_c4.0": ["model.kwargs.encoder_variance=learned", "method.kwargs.loss_factor=4.0"],
}
"""Row name -> stage-1 overrides of its config (`ROW_CONFIGS`, else configs/ul_<dataset>.yaml)."""
ROW_CONFIGS: dict[str, str] = {
    "gauss_c4.0": "ul_{dataset}_gaussian_prior",
    "klae_c2.5_b1": "ul_{dataset}_klae",
}
"""Rows on another stage-1 recipe: baseline (c), a plain Gaussian prior; baseline (a), the
KL-autoencoder (their priors replace the recipe's prior dict, which an override cannot)."""
KLAE_BASE_TOP = 10.0
"""The KL-autoencoder's base schedule ends at logsnr 10: it models the drawn `z_0` itself."""


def prior_kind(arch: str) -> str:
    return arch if arch in ("gaussian", "standard_normal") else "diffusion"


def latent_label(r: dict) -> str:
    """`<encoder noise> + <prior>` (and beta when not 1) of a row; old rows are UL's."""
    prior = {"standard_normal": "N(0, I)"}.get(r.get("prior", ""), r.get("prior", "diffusion"))
    beta = r.get("rate_weight", 1.0)
    return f"{r.get('encoder_variance', 'fixed')} + {prior}" + (
        f", β {beta:g}" if beta != 1 else ""
    )


def uses_l0(r: dict) -> bool:
    """`l_0` is the fixed noise level, or a diffusion prior's top level; a KL-autoencoder has
    neither."""
    return r.get("encoder_variance", "fixed") == "fixed" or r.get("prior") == "diffusion"


def stage1_config(name: str, dataset: str) -> Path:
    stem = ROW_CONFIGS.get(name, "ul_{dataset}").format(dataset=dataset)
    return ROOT / "configs" / f"{stem}.yaml"


def stage2_overrides(row: list[str], learned_variance: bool = False) -> list[str]:
    """A row that moves the latent's level moves the end of the base schedule with it; a
    learned-variance encoder's base ends at `KLAE_BASE_TOP`."""
    level = [o.split("=")[1] for o in row if o.startswith("method.kwargs.latent_logsnr=")]
    if learned_variance:
        level = [str(KLAE_BASE_TOP)]
    return (
        [f"diffusion.schedule_kwargs={{logsnr_min: -15.0, logsnr_max: {level[0]}}}"]
        if level
        else []
    )


def row_key(name: str, dataset: str, seed: int = 0) -> str:
    """Results key and run folder of a row: the row name on MNIST, else `<dataset>_<row>`;
    `_s<seed>` appended for a seed other than 0."""
    key = name if dataset == "mnist" else f"{dataset}_{name}"
    return key if seed == 0 else f"{key}_s{seed}"


def train_seconds(run_dir: Path, batch_size: int) -> float:
    """Training time of a run from its log: each logged interval's images over its measured
    images/s (startup, checkpoints and evaluation excluded; the same across resumes)."""
    from difflab.train import read_metrics

    total, last = 0.0, 0
    for r in read_metrics(run_dir / "metrics.jsonl"):
        if "images_per_s" in r and r["step"] > last:
            total += (r["step"] - last) * batch_size / r["images_per_s"]
            last = r["step"]
    return total


def run_stage1_row(name: str, a: argparse.Namespace) -> dict:
    """Stage 1 only (no base model, no fd-lenet): bits and PSNR as in `run_row`, and for a
    learned-variance encoder the spread of its standard deviations on the same test images
    (the paper's collapse case: do they go to zero?)."""
    import math

    import torch

    import difflab.methods  # noqa: F401  (registers the training methods)
    from difflab import api
    from difflab.config import load_config
    from difflab.eval.reference import reference_images
    from difflab.methods.unified_latents import stage1_metrics, ul_model
    from difflab.train.methods import run_training

    torch.set_num_threads(a.threads)
    s1 = RUNS / row_key(name, a.dataset, a.seed) / "stage1"
    common = [f"train.max_minutes={a.max_minutes}", "train.progress=false", f"train.seed={a.seed}"]
    cfg1 = load_config(stage1_config(name, a.dataset),
                       [*ROWS[name], f"train.out_dir={s1}", f"train.steps={a.stage1_steps}",
                        *common])  # fmt: skip
    run_training(cfg1, resume=True)
    ul = ul_model(api.load(s1).net, cfg1)
    x = reference_images(a.dataset, "test", a.eval_num).float() / 127.5 - 1
    record = stage1_metrics(ul.stage1, ul.options, x, image_schedule=ul.image_schedule,
                            prediction=ul.prediction, steps=a.steps, seed=a.seed)  # fmt: skip
    row = {
        "dataset": a.dataset, "row": name, "overrides": ROWS[name],
        "config": stage1_config(name, a.dataset).relative_to(ROOT).as_posix(),
        "encoder_variance": cfg1.model.kwargs.get("encoder_variance", "fixed"),
        "prior": prior_kind(cfg1.model.kwargs["prior"]["arch"]),
        "decoder": cfg1.method.kwargs.get("decoder", "diffusion"),
        "loss_factor": float(cfg1.method.kwargs["loss_factor"]),
        "latent_logsnr": cfg1.method.kwargs.get("latent_logsnr", 5.0),
        "stage1_steps": a.stage1_steps,
        "stage1_seconds": round(train_seconds(s1, cfg1.data.batch_size), 1),
        "bits_per_pixel": record["bits_per_pixel"],
        "bits_per_pixel_sem": record["bits_per_pixel_sem"],
        "psnr": record["psnr"], "eval_num": record["num_images"], "seed": a.seed,
    }  # fmt: skip
    with torch.inference_mode():
        _, logvar = ul.stage1.encode_stats(x)
    if logvar is not None:  # per-dimension mean standard deviation over the test images
        std = (0.5 * logvar).exp().mean(0).flatten()
        row["encoder_std"] = {
            "min": float(std.min()), "median": float(std.median()), "max": float(std.max()),
            "below_fixed_level": float((std < math.sqrt(1 / (1 + math.exp(5.0)))).float().mean()),
        }  # fmt: skip
    return row


def run_row(name: str, a: argparse.Namespace) -> dict:
    import torch

    import difflab.methods  # noqa: F401  (registers the training methods)
    from difflab import api
    from difflab.config import load_config
    from difflab.train.methods import run_training

    torch.set_num_threads(a.threads)
    key = row_key(name, a.dataset, a.seed)
    s1, s2 = RUNS / key / "stage1", RUNS / key / "stage2"
    common = [f"train.max_minutes={a.max_minutes}", "train.progress=false", f"train.seed={a.seed}"]
    cfg1 = load_config(stage1_config(name, a.dataset),
                       [*ROWS[name], f"train.out_dir={s1}", f"train.steps={a.stage1_steps}",
                        *common])  # fmt: skip
    run_training(cfg1, resume=True)
    learned = cfg1.model.kwargs.get("encoder_variance", "fixed") == "learned"
    cfg2 = load_config(ROOT / "configs" / f"ul_{a.dataset}_base.yaml",
                       [f"method.kwargs.stage1={s1}", f"train.out_dir={s2}",
                        f"train.steps={a.stage2_steps}", *stage2_overrides(ROWS[name], learned),
                        *common])  # fmt: skip
    run_training(cfg2, resume=True)
    from difflab.train import newest_valid_checkpoint

    steps1, steps2 = newest_valid_checkpoint(s1).step, newest_valid_checkpoint(s2).step
    start = time.perf_counter()
    model = api.load(s2)
    record = api.evaluate(
        model, metrics=["fd-lenet"], num=a.gen_num, ref_num=a.eval_num, steps=a.steps,
        seed=a.seed, dataset=a.dataset,
    )  # fmt: skip
    eval_seconds = time.perf_counter() - start
    return {
        "dataset": a.dataset,
        "row": name,
        "overrides": ROWS[name],
        "config": stage1_config(name, a.dataset).relative_to(ROOT).as_posix(),
        "decoder": cfg1.method.kwargs.get("decoder", "diffusion"),
        "prior": prior_kind(cfg1.model.kwargs["prior"]["arch"]),
        "encoder_variance": "learned" if learned else "fixed",
        "rate_weight": float(cfg1.method.kwargs.get("rate_weight", 1.0)),
        "latent_logsnr": cfg1.method.kwargs.get("latent_logsnr", 5.0),
        "loss_factor": float(cfg1.method.kwargs["loss_factor"]),
        "stage1_steps": steps1,
        "stage2_steps": steps2,
        "batch_size": cfg1.data.batch_size,
        "stage1_seconds": round(train_seconds(s1, cfg1.data.batch_size), 1),
        "stage2_seconds": round(train_seconds(s2, cfg2.data.batch_size), 1),
        "eval_seconds": round(eval_seconds, 1),
        "bits_per_pixel": record["bits_per_pixel"],
        "bits_per_pixel_sem": record["bits_per_pixel_sem"],
        "latent_nats_per_dim": record["latent_nats_per_dim"],
        "psnr": record["psnr"],
        "fd_lenet": record["fd-lenet"],
        "eval_num": record["num_images"],
        "gen_num": a.gen_num,
        "sampling_steps": a.steps,
        "seed": a.seed,
        "threads": a.threads,
    }


def save_grid(name: str, a: argparse.Namespace) -> Path:
    """`<row>_grid.png`: 16 test images, their reconstructions, 16 stage-2 samples (rows)."""
    import torch

    from difflab import api
    from difflab.eval.reference import reference_images
    from difflab.images import save_image_grid
    from difflab.methods.unified_latents import reconstruct, ul_generate, ul_model

    torch.set_num_threads(a.threads)
    model = api.load(RUNS / row_key(name, a.dataset, a.seed) / "stage2")
    ul = ul_model(model.net, model.config)
    x = reference_images(a.dataset, "test", 16).float() / 127.5 - 1
    gen = torch.Generator().manual_seed(a.seed)
    with torch.inference_mode():
        rec = reconstruct(
            ul.stage1, x, ul.options, image_schedule=ul.image_schedule,
            prediction=ul.prediction, steps=a.steps, generator=gen,
        )  # fmt: skip
    samples = ul_generate(ul, num=16, steps=a.steps, seed=a.seed)
    path = FOLDER / f"{row_key(name, a.dataset, a.seed)}_grid.png"
    return save_image_grid(torch.cat([x, rec, samples]), path, nrow=16, scale=2)


def report_text(folder: Path = FOLDER) -> str:
    data = read_json(folder / "results.json", {})
    rows = data.get("rows", {})
    table = markdown_table(
        ["row", "seed", "data", "latent noise + prior", "decoder", "c", "l_0",
         "bits/pixel (bound)", "PSNR dB",
         "fd-lenet (stage 2)", "stage-1 steps", "stage-2 steps", "train s (1 + 2)"],
        [
            [r.get("row", name), r.get("seed", 0), r.get("dataset", "mnist"), latent_label(r),
             r["decoder"],
             r["loss_factor"],
             uses_l0(r) and r.get("latent_logsnr", 5.0) or "-",
             f"{r['bits_per_pixel']:.4f} ± {r['bits_per_pixel_sem']:.4f}",
             f"{r['psnr']:.2f}", fmt_sig(r["fd_lenet"]), r["stage1_steps"], r["stage2_steps"],
             f"{r['stage1_seconds']:.0f} + {r['stage2_seconds']:.0f}"]
            for name, r in rows.items()
        ],
        "lllllllrrrrrr",
    )  # fmt: skip
    any_row = next(iter(rows.values()), {})
    lines = [
        "# Unified Latents on MNIST and Fashion-MNIST: the loss-factor curve",
        "",
        "Question: how do the latent bitrate (the prior's ELBO bound, bits per pixel), the",
        "reconstruction PSNR and stage-2 generation (fd-lenet: a Frechet distance in difflab's",
        "LeNet features, not FID) move with the decoder's loss factor `c`, and what do the",
        "baselines give at matched bits: an MSE decoder instead of the diffusion decoder, a plain",
        "Gaussian prior instead of the diffusion prior (`fixed + gaussian`,",
        "configs/ul_mnist_gaussian_prior.yaml) and a KL-autoencoder with an MSE decoder",
        "(`learned + N(0, I)`, configs/ul_mnist_klae.yaml)? Column `latent noise + prior`: the",
        "encoder's noise (fixed at `l_0`, or learned) and the prior. CPU-sized: tiny nets",
        "(configs/ul_mnist.yaml, configs/ul_mnist_base.yaml) and a few hundred steps of batch",
        f"{any_row.get('batch_size', '?')} per stage, so these are small-scale numbers; seeds "
        f"{sorted({r.get('seed', 0) for r in rows.values()})} (training and sampling).",
        "",
        *table,
        "",
        f"Bits and PSNR on the first {any_row.get('eval_num', '?')} MNIST test images (PSNR of "
        f"one DDIM reconstruction with {any_row.get('sampling_steps', '?')} steps from a fresh "
        "latent noise draw; bits: the bound with 16 stratified logsnr draws per image, or the "
        "exact KL of a Gaussian prior, ± the standard error of the mean over images); "
        f"fd-lenet of {any_row.get('gen_num', '?')} stage-2 samples (DDIM, "
        f"{any_row.get('sampling_steps', '?')} steps for the latents and as many for the "
        "pixels) against the test split. Training seconds: images over the logged images/s on "
        f"the shared CPU ({any_row.get('threads', '?')} thread), startup and checkpoints excluded.",
        "",
    ]
    stage1_rows = data.get("stage1_rows", {})
    if stage1_rows:
        lines += [
            "## Stage 1 only",
            "",
            "Rows trained and measured without a base model (bits and PSNR as above); for a",
            "learned-variance encoder, the per-dimension mean of its standard deviation over the",
            "same test images (min / median / max) and the share of dimensions below the fixed",
            "level's `sigma_0 = 0.082`.",
            "",
            *markdown_table(
                ["row", "seed", "latent noise + prior", "decoder", "c", "bits/pixel (bound)",
                 "PSNR dB", "encoder std min / median / max", "below sigma_0", "stage-1 s"],
                [
                    [r["row"], r["seed"], latent_label(r), r["decoder"], r["loss_factor"],
                     f"{r['bits_per_pixel']:.4f} ± {r['bits_per_pixel_sem']:.4f}",
                     f"{r['psnr']:.2f}",
                     " / ".join(f"{r['encoder_std'][k]:.3g}" for k in ("min", "median", "max"))
                     if "encoder_std" in r else "-",
                     f"{r['encoder_std']['below_fixed_level']:.0%}" if "encoder_std" in r else "-",
                     f"{r['stage1_seconds']:.0f}"]
                    for r in stage1_rows.values()
                ],
                "lllllrrrrr",
            ),
            "",
        ]  # fmt: skip
    oracle = data.get("oracle")
    if oracle:
        lines += [
            "## The bound on exact latents",
            "",
            "Latents with an exact denoiser (`benchmarks/unified_latents_oracle.py`): the true",
            "rate `KL(q(z_0 | y) || p(z_0))` in nats per latent, the unweighted-ELBO bound",
            "(`latent_bits`), and the same prior loss with the sigmoid weighting (bias 0), which",
            f"is not a bound; mean ± standard error over {oracle['rows'][0]['num']} latents.",
            "",
            *markdown_table(
                [
                    "latent",
                    "dims",
                    "l_0",
                    "true nats",
                    "bound nats",
                    "bound - true",
                    "sigmoid-weighted nats",
                ],
                [
                    [
                        r["latent"],
                        r["latent_dims"],
                        r["latent_logsnr"],
                        f"{r['true_nats']:.2f} ± {r['true_nats_se']:.2f}",
                        f"{r['bound_nats']:.2f} ± {r['bound_nats_se']:.2f}",
                        f"{r['bound_nats'] - r['true_nats']:+.2f}",
                        f"{r['sigmoid_weighted_nats']:.2f} ± {r['sigmoid_weighted_nats_se']:.2f}",
                    ]
                    for r in oracle["rows"]
                ],
                "lrrrrrr",
            ),  # fmt: skip
            "",
        ]
    for grid in data.get("grids", []):
        lines += [
            f"![{grid['file']}]({grid['file']})",
            "",
            f"`{grid['file']}`: 16 MNIST test images (top), their reconstructions (middle) and "
            f"16 stage-2 samples (bottom); `{grid['command']}`.",
            "",
        ]
    findings = data.get("findings")
    if findings:
        lines += ["## Findings", "", *findings, ""]
    lines += [
        "## Commands",
        "",
        "```",
        *data.get("commands", []),
        *([oracle["command"]] if oracle else []),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="c1.0,c1.5,c2.5", help=f"comma list of {list(ROWS)}")
    p.add_argument("--stage1-steps", type=int, default=300)
    p.add_argument("--stage2-steps", type=int, default=300)
    p.add_argument("--max-minutes", type=float, default=20.0)
    p.add_argument("--eval-num", type=int, default=500)
    p.add_argument("--gen-num", type=int, default=1000)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--render", action="store_true", help="only re-render README.md")
    p.add_argument("--grid", default=None, help="write <row>_grid.png for this trained row")
    p.add_argument("--stage1-only", action="store_true",
                   help="train and measure stage 1 only (bits, PSNR, encoder std)")  # fmt: skip
    a = p.parse_args(argv)
    if a.grid:
        print(save_grid(a.grid, a))
        grids = read_json(FOLDER / "results.json", {}).get("grids", [])
        command = command_line(argv)
        entry = {"file": f"{row_key(a.grid, a.dataset, a.seed)}_grid.png", "command": command}
        grids = [g for g in grids if g["file"] != entry["file"]] + [entry]
        update_results(FOLDER, {"grids": grids})
        record_run(FOLDER, command)
        a.render = True  # the grid only: no training
    if not a.render:
        names = [n for n in a.rows.split(",") if n]
        unknown = [n for n in names if n not in ROWS]
        if unknown:
            p.error(f"--rows: unknown {unknown}; known: {list(ROWS)}")
        command = command_line(argv)
        section = "stage1_rows" if a.stage1_only else "rows"
        for name in names:
            stored = read_json(FOLDER / "results.json", {}).get(section, {})
            if row_key(name, a.dataset, a.seed) in stored:
                print(f"{name}: stored, skipped")
                continue
            row = run_stage1_row(name, a) if a.stage1_only else run_row(name, a)
            print(name, row, flush=True)
            data = read_json(FOLDER / "results.json", {})
            rows = {**data.get(section, {}), row_key(name, a.dataset, a.seed): row}
            commands = data.get("commands", [])
            commands = commands if command in commands else [*commands, command]
            update_results(FOLDER, {section: rows, "commands": commands})
            record_run(FOLDER, command)
    write_report(FOLDER, report_text(FOLDER))
    return 0


if __name__ == "__main__":
    sys.exit(main())
