"""`difflab sample CKPT [options]` and `difflab demo`: thin parsers over `difflab.api`.

`difflab sample` writes `00000.png`, ..., `grid.png` and `samples.json` (which checkpoint,
sampler, grid levels, options, guidance, seed, NFE/JVPs, versions, device and time made them)
to `--out`. The folder is checked before any sampling: it must be writable, and a folder that
holds earlier samples is refused unless `--overwrite` (which replaces exactly those files,
`api.earlier_samples`, once the new samples are drawn; other files are left alone).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..shipped import SHIPPED_MODELS
from .args import add_sampling_arguments, positive_int, sampling_kwargs

CHECKPOINT_HELP = (
    "run directory, checkpoint folder, exported .safetensors, diffusers model folder, or the "
    f"name of a shipped model ({', '.join(SHIPPED_MODELS)})"
)
DEMO_ROWS = (("dpmpp_2m", 8), ("dpmpp_2m", 16), ("ddim", 8), ("ddpm", 128))
"""The demo grid's rows: the shipped models' best few-step sampler (results/recipe/mnist_xpred)
at 8 and 16 steps, then DDIM at 8 and many-step DDPM for comparison."""


def cmd_sample(args: argparse.Namespace) -> int:
    from .. import api

    kwargs = sampling_kwargs(args)
    api.check_output_folder(args.out, overwrite=args.overwrite)  # before the expensive work
    model = api.load(args.checkpoint, ema=not args.no_ema, device=args.device)
    method_sampler = api.method_sampler(model)
    if method_sampler is not None:  # text, sequences, latents: the method writes its outputs
        if args.frames is not None:  # sequence models (rolling / block): frames per rollout
            kwargs["frames"] = args.frames
        record = method_sampler(
            model, Path(args.out), num=args.num, seed=args.seed, overwrite=args.overwrite, **kwargs
        )
        print(record["summary"])
        return 0
    gen, record = api.sample_to_folder(
        model, args.out, num=args.num, overwrite=args.overwrite, label=args.label,
        seed=args.seed, **kwargs,
    )  # fmt: skip
    out = Path(args.out)
    print(
        f"{args.num} samples with {gen.sampler} ({gen.steps} steps, {gen.grid} grid): "
        f"NFE {gen.nfe}, JVPs {gen.jvps} per sample"
        + (f", {record['gflops_per_sample']:.4g} GFLOPs per sample" if "calls" in record else "")
        + f", {gen.seconds:.1f} s wall "
        f"({args.num / max(gen.seconds, 1e-9):.1f} img/s)\n"
        f"images: {out}/  grid: {out / api.GRID_FILE}  record: {out / api.SAMPLES_RECORD}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .. import api
    from ..images import save_image_grid

    model_path = api.resolve_model_path(args.model) if args.model else api.shipped_model_path()
    if args.train and (args.model or "mnist_uvit") not in SHIPPED_MODELS:
        raise ValueError(f"--train retrains a shipped model's recipe ({', '.join(SHIPPED_MODELS)})"
                         f", not --model {args.model}")  # fmt: skip
    out = api.check_output_folder(args.out, overwrite=True)
    if args.train:
        model_path = train_demo_model(out, args.overrides, args.model or "mnist_uvit")
    if not model_path.exists():
        raise FileNotFoundError(f"model file {model_path} not found; run `difflab demo --train`")
    model = api.load(model_path)
    rows, lines = [], []
    start = time.perf_counter()
    for sampler, steps in DEMO_ROWS:
        gen = api.sample(
            model, num=args.num, sampler=sampler, steps=steps, seed=args.seed, progress=False
        )
        rows.append(gen.samples)
        lines.append(f"  {sampler:>5} {steps:4d} steps: {gen.seconds:5.1f} s")
    # one row per sampler setting, the same classes in each column
    path = save_image_grid(torch.cat(rows), out / "demo_grid.png", nrow=args.num, scale=3)
    print(f"model: {model_path}")
    rows_text = ", ".join(f"{s} {n}" for s, n in DEMO_ROWS)
    print(f"rows (top to bottom): {rows_text} steps; columns: class 0..9 (cycling)")
    print("\n".join(lines))
    print(f"wrote {path} ({time.perf_counter() - start:.1f} s)")
    return 0


def train_demo_model(out: Path, overrides: list[str], name: str = "mnist_uvit") -> Path:
    """`difflab demo --train`: retrain the shipped model `name`'s recipe (`configs/<name>.yaml`)
    into `out/run` and export it to `out/<name>.safetensors`."""
    from ..config import load_config
    from ..data import prepare_dataset
    from ..train import export_model, run_training

    recipe = Path(__file__).resolve().parents[3] / "configs" / f"{name}.yaml"
    if not recipe.exists():
        raise FileNotFoundError(f"training recipe {recipe} not found (needs a source checkout)")
    cfg = load_config(recipe, [f"train.out_dir={out}/run", *overrides])
    prepare_dataset(cfg.data.name)
    run = run_training(cfg, resume=True)
    return export_model(run, out / f"{name}.safetensors")


def add_parsers(sub) -> None:
    s = sub.add_parser(
        "sample",
        help="sample a checkpoint, run directory, exported model or diffusers model folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("checkpoint", help=CHECKPOINT_HELP)
    add_sampling_arguments(s)
    s.add_argument("--num", type=positive_int, default=64)
    s.add_argument("--label", default=None, help="class index or 'all' (default: cycle)")
    s.add_argument(
        "--frames", type=positive_int, default=None,
        help="sequence models (rolling/block): frames to generate after the context (default 32)",
    )  # fmt: skip
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    s.add_argument("--out", default="samples", help="output folder (default: samples)")
    s.add_argument(
        "--overwrite", action="store_true", help="replace earlier samples in the output folder"
    )
    s.set_defaults(func=cmd_sample)

    d = sub.add_parser("demo", help="sample a shipped model (default: MNIST) side by side")
    d.add_argument(
        "--train", action="store_true",
        help="retrain the shipped model (--model NAME, default mnist_uvit) from its recipe first",
    )  # fmt: skip
    d.add_argument(
        "--model", default=None,
        help=f"model file or shipped model ({', '.join(SHIPPED_MODELS)}; default mnist_uvit)",
    )  # fmt: skip
    d.add_argument("--num", type=positive_int, default=10, help="samples per row")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="demo_out")
    d.add_argument("overrides", nargs="*", help="with --train: recipe overrides key=value")
    d.set_defaults(func=cmd_demo)
