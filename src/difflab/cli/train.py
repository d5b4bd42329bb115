"""`difflab train CONFIG [key=value ...] [--resume]` and `difflab train --resume RUN_DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_train(args: argparse.Namespace) -> int:
    from .. import methods  # noqa: F401  (registers the paper-level training methods)
    from ..train.runs import launch_training

    items = list(args.items)
    resume = args.resume
    if isinstance(resume, str) and Path(resume).is_file():  # `--resume CONFIG ...`
        items, resume = [resume, *items], True
    config = items.pop(0) if items and "=" not in items[0] else None
    out = launch_training(config, items, resume)
    print(f"run directory: {out}")
    return 0


def add_parsers(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a model from a YAML recipe, or resume a run",
        description="difflab train CONFIG [key=value ...] [--resume] | "
        "difflab train --resume RUN_DIR [key=value ...]",
    )
    t.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG [key=value ...]",
        help="YAML recipe (see configs/), then overrides, e.g. train.steps=100",
    )
    t.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_DIR",
        help="continue from the newest checkpoint: of CONFIG's run, or of RUN_DIR (its config)",
    )
    t.set_defaults(func=cmd_train)
