"""Argument types and groups shared by the `difflab` commands."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

VALUE_WITH_DASH = ("--interval",)
"""Options whose value may start with `-` (`--interval -2,6`): `normalize_argv` attaches it."""
DUAL_RATE_SAMPLER = "dual_rate_ddpm"
"""The sampler `--refresh-every` / `--refresh` configure."""
EVAL_COMMANDS = ("checkpoint", "refstats", "real", "plot")
"""`difflab eval` sub-commands; any other first argument is a checkpoint (`eval checkpoint`)."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def elbo_level(text: str) -> float | str:
    """argparse type: a decoder logsnr (a number) or `best`."""
    if text == "best":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or 'best', got {text!r}") from None


def interval(text: str) -> tuple[float, float]:
    """argparse type: `LO,HI` in logsnr, `LO <= HI` (`-inf`/`inf` allowed)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be LO,HI in logsnr (e.g. -2,6), got {text!r}"
        ) from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise argparse.ArgumentTypeError(f"must be LO,HI with LO <= HI, got {text!r}")
    return lo, hi


def step_indices(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated step indices `0,2,5` (checked further by the sampler)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated step indices (e.g. 0,4,6), got {text!r}"
        ) from None


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Attach a value that starts with `-` to its option (`--interval -2,6` ->
    `--interval=-2,6`; argparse would take `-2,6` for an option), make `difflab eval CKPT`
    the shorthand of `difflab eval checkpoint CKPT`, and read `difflab train CONFIG --resume
    key=value ...` as the flag `--resume` plus overrides. Idempotent."""
    out: list[str] = []
    for i, token in enumerate(argv):
        if token == "--":
            return out + list(argv[i:])
        if out and out[-1] in VALUE_WITH_DASH and token.startswith("-"):
            try:
                interval(token)
            except argparse.ArgumentTypeError:
                pass
            else:
                out[-1] = f"{out[-1]}={token}"
                continue
        out.append(token)
    if len(out) >= 2 and out[0] == "eval" and not out[1].startswith("-"):
        if out[1] not in EVAL_COMMANDS:
            out.insert(1, "checkpoint")
    if out and out[0] == "train" and "--resume" in out:
        i = out.index("--resume")
        if i + 1 < len(out) and "=" in out[i + 1]:  # `CONFIG --resume key=value ...`: a flag
            out.append(out.pop(i))
    return out


class Parser(argparse.ArgumentParser):
    """`ArgumentParser` that reads its arguments through `normalize_argv` (so does every
    sub-command parser made from it)."""

    def parse_known_args(self, args=None, namespace=None):
        import sys

        argv = sys.argv[1:] if args is None else args
        return super().parse_known_args(normalize_argv(argv), namespace)


def parse_options(items: Sequence[str], flag: str = "--opt") -> dict[str, Any]:
    """`["order=3", "eta=0.5", "x=null"]` -> `{"order": 3, "eta": 0.5, "x": None}` (YAML
    values, as in the config overrides)."""
    from omegaconf import OmegaConf

    for item in items:
        if "=" not in item or not item.split("=", 1)[0]:
            raise ValueError(f"{flag} {item!r} must have the form key=value")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(items)))
    except Exception as err:
        raise ValueError(f"{flag} values could not be parsed: {err}") from None


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """`--sampler`, `--steps`, `--grid`, `--opt`, `--guidance`, `--interval`, `--device`,
    `--batch-size` (None: `api.sampling_settings`' defaults, a student's own schedule, else
    DDIM with 32 steps)."""
    from ..devices import DEVICE_HELP
    from ..sampling import SAMPLERS
    from ..sampling.generate import GRID_CHOICES

    parser.add_argument(
        "--sampler",
        default=None,
        choices=sorted(SAMPLERS),
        help="default: a student's own sampler, else ddim",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=None, help="default: a student's own, else 32"
    )
    parser.add_argument(
        "--grid",
        default=None,
        choices=GRID_CHOICES,
        help="sampling grid (default: a student's own levels, else the sampler's measured own)",
    )
    parser.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="sampler option, e.g. --opt eta=0.5 (repeatable; unknown names are an error)",
    )
    parser.add_argument("--guidance", type=float, default=0.0, help="CFG weight w (0 = off)")
    parser.add_argument(
        "--interval",
        type=interval,
        default=None,
        metavar="LO,HI",
        help="apply guidance only for logsnr in [LO, HI] (e.g. --interval -2,6); needs --guidance",
    )
    parser.add_argument(
        "--refresh-every",
        type=positive_int,
        default=None,
        metavar="K",
        help="dual_rate_ddpm: run the heavy encoder every K steps (default 1)",
    )
    parser.add_argument(
        "--refresh",
        type=step_indices,
        default=None,
        metavar="I,J,...",
        help="dual_rate_ddpm: the steps at which the encoder runs (starting at 0)",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        help="samples per sampler call (larger on a GPU)",
    )


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The `api.sample` arguments of `add_sampling_arguments` (checked: `--interval` needs
    `--guidance`)."""
    if args.interval is not None and args.guidance == 0:
        raise ValueError("--interval needs --guidance W (it limits where guidance applies)")
    options = parse_options(args.opt)
    refresh = {"refresh_every": getattr(args, "refresh_every", None),
               "refresh": getattr(args, "refresh", None)}  # fmt: skip
    for key, value in refresh.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if args.sampler != DUAL_RATE_SAMPLER:
            raise ValueError(
                f"{flag} needs --sampler {DUAL_RATE_SAMPLER} (the only sampler that reuses "
                "encoder features; other samplers run a dual-rate model at every step)"
            )
        options[key] = list(value) if key == "refresh" else value
    return {
        "sampler": args.sampler,
        "steps": args.steps,
        "grid": args.grid,
        "options": options,
        "guidance": args.guidance,
        "interval": args.interval,
        "batch_size": args.batch_size,
    }
