"""`python -m difflab.train CONFIG [key=value ...] [--resume]`: the training entry point that
`difflab train` wraps; run it under `torchrun --nproc_per_node N` for DDP."""

from __future__ import annotations

import argparse
import sys

from .allocator import apply_malloc_fix


def main(argv: list[str] | None = None) -> int:
    apply_malloc_fix()  # before the first large allocation (see allocator.py)
    parser = argparse.ArgumentParser(prog="python -m difflab.train", description=__doc__)
    parser.add_argument("config", help="YAML recipe, e.g. configs/mnist_uvit.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    args = parser.parse_args(argv)

    from ..config import load_config
    from .trainer import run_training

    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = run_training(cfg, resume=args.resume)
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
