"""Unified Latents on MNIST (and Fashion-MNIST): bits, PSNR and fd-lenet against the loss factor.

How do bits per pixel (the bound), reconstruction PSNR and stage-2 generation (fd-lenet) move
with the loss factor `c`, and how does an MSE decoder compare?

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
}
"""Row name -> stage-1 overrides of configs/ul_mnist.yaml."""


def stage2_overrides(row: list[str]) -> list[str]:
    """A row that moves the latent's level moves the end of the base schedule with it."""
    level = [o.split("=")[1] for o in row if o.startswith("method.kwargs.latent_logsnr=")]
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
    cfg1 = load_config(ROOT / "configs" / f"ul_{a.dataset}.yaml",
                       [*ROWS[name], f"train.out_dir={s1}", f"train.steps={a.stage1_steps}",
                        *common])  # fmt: skip
    run_training(cfg1, resume=True)
    cfg2 = load_config(ROOT / "configs" / f"ul_{a.dataset}_base.yaml",
                       [f"method.kwargs.stage1={s1}", f"train.out_dir={s2}",
                        f"train.steps={a.stage2_steps}", *stage2_overrides(ROWS[name]),
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
        "decoder": "mse" if "method.kwargs.decoder=mse" in ROWS[name] else "diffusion",
        "latent_logsnr": cfg1.method.kwargs.get("latent_logsnr", 5.0),
        "loss_factor": float(next(o for o in ROWS[name] if "loss_factor" in o).split("=")[1]),
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
        ["row", "seed", "data", "decoder", "c", "l_0", "bits/pixel (bound)", "PSNR dB",
         "fd-lenet (stage 2)", "stage-1 steps", "stage-2 steps", "train s (1 + 2)"],
        [
            [r.get("row", name), r.get("seed", 0), r.get("dataset", "mnist"), r["decoder"],
             r["loss_factor"],
             r.get("latent_logsnr", 5.0),
             f"{r['bits_per_pixel']:.4f} ± {r['bits_per_pixel_sem']:.4f}",
             f"{r['psnr']:.2f}", fmt_sig(r["fd_lenet"]), r["stage1_steps"], r["stage2_steps"],
             f"{r['stage1_seconds']:.0f} + {r['stage2_seconds']:.0f}"]
            for name, r in rows.items()
        ],
        "llllllrrrrrr",
    )  # fmt: skip
    any_row = next(iter(rows.values()), {})
    lines = [
        "# Unified Latents on MNIST and Fashion-MNIST: the loss-factor curve",
        "",
        "Question: how do the latent bitrate (the prior's ELBO bound, bits per pixel), the",
        "reconstruction PSNR and stage-2 generation (fd-lenet: a Frechet distance in difflab's",
        "LeNet features, not FID) move with the decoder's loss factor `c`, and what does an MSE",
        "decoder give instead of the diffusion decoder? CPU-sized: tiny nets",
        "(configs/ul_mnist.yaml, configs/ul_mnist_base.yaml) and a few hundred steps of batch",
        f"{any_row.get('batch_size', '?')} per stage, so these are small-scale numbers; seeds "
        f"{sorted({r.get('seed', 0) for r in rows.values()})} (training and sampling).",
        "",
        *table,
        "",
        f"Bits and PSNR on the first {any_row.get('eval_num', '?')} MNIST test images (PSNR of "
        f"one DDIM reconstruction with {any_row.get('sampling_steps', '?')} steps from a fresh "
        "latent noise draw; bits: the bound with 16 stratified logsnr draws per image, ± its "
        f"standard error); fd-lenet of {any_row.get('gen_num', '?')} stage-2 samples (DDIM, "
        f"{any_row.get('sampling_steps', '?')} steps for the latents and as many for the "
        "pixels) against the test split. Training seconds: images over the logged images/s on "
        f"the shared CPU ({any_row.get('threads', '?')} thread), startup and checkpoints excluded.",
        "",
    ]
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
        for name in names:
            stored = read_json(FOLDER / "results.json", {}).get("rows", {})
            if row_key(name, a.dataset, a.seed) in stored:
                print(f"{name}: stored, skipped")
                continue
            row = run_row(name, a)
            print(name, row, flush=True)
            data = read_json(FOLDER / "results.json", {})
            rows = {**data.get("rows", {}), row_key(name, a.dataset, a.seed): row}
            commands = data.get("commands", [])
            commands = commands if command in commands else [*commands, command]
            update_results(FOLDER, {"rows": rows, "commands": commands})
            record_run(FOLDER, command)
    write_report(FOLDER, report_text(FOLDER))
    return 0


if __name__ == "__main__":
    sys.exit(main())
