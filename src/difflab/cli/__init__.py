"""`difflab` command line: train | sample | demo | data | eval | distill.

Run `difflab <command> --help` for the options of each command. Each command is a thin parser
over the library (`difflab.api`, `difflab.train`, `difflab.methods`); bad input ends in one line
`difflab <command>: error: ...` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from . import data, distill, eval, sample, train
from .args import Parser

ERRORS = (ValueError, TypeError, OSError, RuntimeError, ImportError, FloatingPointError)
"""What a command reports as one line (a missing optional extra, a NaN model, a bad file...)."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="difflab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for module in (train, sample, data, eval, distill):
        module.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (2 with a one-line message on bad input)."""
    from ..allocator import apply_malloc_fix

    apply_malloc_fix()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or argparse's own usage error (status 2)
        return stop.code if isinstance(stop.code, int) else 1
    try:
        return args.func(args)
    except ERRORS as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"difflab {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
