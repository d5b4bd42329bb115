"""`difflab distill {mcm,mmd,dmmd} --teacher CKPT --student-steps K [options] [key=value ...]`, or
`difflab distill emd --teacher CKPT --mcmc-steps K ...` (a one-step student).

The trailing `key=value` overrides are `TrainConfig` keys of the student run (e.g.
`train.steps=5000 optim.lr=5e-5`; give them after the options or right after the method);
`--opt key=value` sets fields of `MCMConfig` / `MMDConfig` / `EMDConfig` / `DMMDConfig` (e.g.
`--opt anneal_steps=20000 --opt huber_c=null`). The exported student samples with its own
sampler and levels (`difflab sample STUDENT`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..methods.distill import METHODS, VARIANTS
from .args import parse_options
from .sample import CHECKPOINT_HELP

HELPS = {
    "mcm": "Multistep Consistency Models",
    "mmd": "Moment Matching distillation",
    "emd": "EM Distillation (one-step generator)",
    "dmmd": "Discrete Moment Matching (masked or uniform diffusion teacher)",
}


def cmd_distill(args: argparse.Namespace) -> int:
    from ..methods.distill import export_student, run_distillation

    options = parse_options(args.opt)
    if args.method == "emd":
        options["mcmc_steps"] = args.mcmc_steps
    run = run_distillation(
        args.method,
        args.teacher,
        args.student_steps,
        variant=args.variant,
        guidance=args.guidance,
        out_dir=args.out,
        overrides=args.overrides,
        options=options,
        resume=args.resume,
    )
    print(f"run directory: {run}")
    if args.export:
        print(f"exported student: {export_student(run, Path(args.export))}")
    return 0


def add_parsers(sub) -> None:
    """Register `distill {mcm,mmd,emd}` on the `difflab` sub-command parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--teacher", required=True, help=f"teacher: {CHECKPOINT_HELP}")
    common.add_argument("--guidance", type=float, default=0.0, help="distil CFG with weight w")
    common.add_argument("--out", default=None, help="run directory (default runs/distill_...)")
    common.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    common.add_argument("--export", default=None, help="write the EMA student to this .safetensors")
    common.add_argument("--opt", action="append", default=[], help="method option key=value")
    common.add_argument("overrides", nargs="*", help="student TrainConfig overrides key=value")
    p = sub.add_parser(
        "distill",
        help="distil a trained model into a few-step student (MCM, MMD, EMD or D-MMD)",
        description=__doc__.splitlines()[0],
    )
    methods = p.add_subparsers(dest="method", required=True)
    for method in METHODS:
        m = methods.add_parser(method, parents=[common], help=HELPS[method])
        if method == "emd":  # a one-step generator; K Langevin steps in its E-step
            m.set_defaults(student_steps=1)
            m.add_argument("--mcmc-steps", type=int, default=4, help="K, Langevin steps (>= 0)")
        else:
            m.add_argument(
                "--student-steps", type=int, required=True, help="the student's steps (>= 1)"
            )
        m.add_argument(
            "--variant",
            default=VARIANTS[method][0],
            choices=VARIANTS[method],
            help=f"default {VARIANTS[method][0]}",
        )
        m.set_defaults(func=cmd_distill)
