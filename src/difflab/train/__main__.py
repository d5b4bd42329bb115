"""`python -m difflab.train CONFIG [key=value ...] [--resume]` or
`python -m difflab.train --resume RUN_DIR [key=value ...]`: the training entry point that
`difflab train` wraps; run it under `torchrun --nproc_per_node N` for DDP.

`--resume` alone continues the config's `train.out_dir`; `--resume RUN_DIR` continues that run
directory with the config stored in it (see `difflab.train.runs`)."""

from __future__ import annotations

import argparse
import sys

from ..allocator import apply_malloc_fix

PROG = "python -m difflab.train"


def main(argv: list[str] | None = None) -> int:
    apply_malloc_fix()  # before the first large allocation (see difflab.allocator)
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument(
        "args", nargs="*", metavar="CONFIG [key=value ...]", help="YAML recipe and overrides"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_DIR",
        help="continue the newest checkpoint (of RUN_DIR, with its stored config)",
    )
    args = parser.parse_intermixed_args(argv)
    resume, rest = args.resume, list(args.args)
    if isinstance(resume, str) and "=" in resume:  # `CONFIG --resume key=value`
        resume, rest = True, [*rest, resume]
    config = rest.pop(0) if rest and "=" not in rest[0] else None

    from .runs import launch_training

    try:
        run_dir = launch_training(config, rest, resume)
    except (ValueError, RuntimeError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
