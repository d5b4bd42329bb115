"""`difflab eval`: evaluate a checkpoint, cache reference statistics, score real images, plot.

    difflab eval checkpoint CKPT --metric fid,kid,pr,fd-lenet --num 10000 --sampler ddim --steps 50
    difflab eval CKPT ...                  # shorthand of `difflab eval checkpoint CKPT ...`
    difflab eval refstats mnist --split test --feature fd-lenet
    difflab eval real mnist --split train --num 2000 --metric fid,fd-lenet   # the metric's floor
    difflab eval plot results/x.json --out results/x.png

Metrics: `fid`, `kid`, `pr` use the Inception network (`pip install 'difflab[fid]'`);
`fd-lenet`, `kid-lenet`, `pr-lenet` use difflab's own MNIST LeNet (a Frechet distance in *its*
features, not FID); `elbo` is the model's ELBO in bits/dim on reference images. Reference
statistics are taken from the cache and computed on first use (`refstats`); KID and
precision/recall compare against the features of the first `--ref-num` reference images.
Dataset, split, metrics, optional extras, image shapes and `--out` are checked before any
sampling; `--out` appends the record to a JSON list, atomically and under a file lock (runs in
parallel may share one file).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .args import (
    EVAL_COMMANDS,
    add_sampling_arguments,
    elbo_level,
    positive_int,
    sampling_kwargs,
)
from .sample import CHECKPOINT_HELP

FEATURES = ("fid", "fd-lenet")


def add_fid_runtime_argument(p: argparse.ArgumentParser) -> None:
    from ..eval.features import FID_RUNTIMES

    help = (
        "runtime of the Inception network (default: $DIFFLAB_FID_RUNTIME, else torch); "
        "onnxruntime is ~1.5x faster on a CPU, needs difflab[fid-onnx]"
    )
    p.add_argument("--fid-runtime", choices=FID_RUNTIMES, default=None, help=help)


def use_fid_runtime(a: argparse.Namespace) -> None:
    """`--fid-runtime` reaches `get_feature_extractor` through `$DIFFLAB_FID_RUNTIME`."""
    from ..eval.features import FID_RUNTIME_ENV

    if a.fid_runtime:
        os.environ[FID_RUNTIME_ENV] = a.fid_runtime


def report(record: dict, out: str | None) -> None:
    """Print `record` as a table (and where it was appended)."""
    width = max(len(k) for k in record)
    for key, value in record.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    if out:
        print(f"appended to {out}")


def cmd_checkpoint(a: argparse.Namespace) -> int:
    from .. import api
    from ..eval.scores import parse_metrics

    use_fid_runtime(a)
    kwargs = sampling_kwargs(a)
    metrics = parse_metrics(a.metric)
    if a.out:
        api.check_results_file(a.out)
    model = api.load(a.checkpoint, device=a.device)
    record = api.evaluate(
        model, metrics=metrics, num=a.num, dataset=a.dataset, split=a.split, ref_num=a.ref_num,
        elbo_logsnr_max=a.elbo_logsnr_max, out=a.out, seed=a.seed, **kwargs,
    )  # fmt: skip
    report(record, a.out)
    if "elbo" in metrics and a.elbo_logsnr_max is None and model.prediction == "x":
        print(
            "note: an x-prediction model's ELBO with the decoder at the schedule's end is loose "
            "(its x_hat does not reproduce an almost clean input); --elbo-logsnr-max best "
            "chooses the level on held-out training images",
            file=sys.stderr,
        )
    return 0


def cmd_refstats(a: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..eval.reference import compute_reference_stats

    use_fid_runtime(a)
    device = str(resolve_device(a.device))
    print(compute_reference_stats(a.dataset, a.split, a.feature, num=a.num, device=device))
    return 0


def cmd_real(a: argparse.Namespace) -> int:
    from .. import api

    use_fid_runtime(a)
    record = api.evaluate_real(
        a.dataset, split=a.split, ref_split=a.ref_split, num=a.num, metrics=a.metric,
        ref_num=a.ref_num, device=a.device, out=a.out,
    )  # fmt: skip
    report(record, a.out)
    return 0


def cmd_plot(a: argparse.Namespace) -> int:
    from ..eval.plots import plot_quality_vs_nfe, read_records

    out = a.out or str(Path(a.results).with_suffix(".png"))
    print(plot_quality_vs_nfe(read_records(a.results), out))
    return 0


def add_parsers(sub) -> None:
    from ..devices import DEVICE_HELP
    from ..eval.scores import FEATURE_OF, METRICS

    e = sub.add_parser(
        "eval",
        help="evaluate a checkpoint (FID/KID/PR/fd-lenet/ELBO), cache refstats, plot results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = "{" + ",".join(EVAL_COMMANDS) + "}"
    commands = e.add_subparsers(dest="eval_command", required=True, metavar=names)

    c = commands.add_parser("checkpoint", help="sample a model and score the samples")
    c.add_argument("checkpoint", help=CHECKPOINT_HELP)
    c.add_argument("--metric", default="fd-lenet", help=f"comma list of {list(METRICS)}")
    c.add_argument("--num", type=positive_int, default=10_000)
    add_sampling_arguments(c)
    c.add_argument(
        "--dataset", default=None,
        help="reference data (default: the model's training data, else mnist)",
    )  # fmt: skip
    c.add_argument("--split", default="test")
    c.add_argument("--ref-num", type=positive_int, default=10_000)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument(
        "--elbo-logsnr-max",
        type=elbo_level,
        default=None,
        help="logsnr of the ELBO's discretized decoder (default: the schedule's maximum); "
        "'best': the level of 6..15 with the lowest bound on training images other than the "
        "reported ones (the scan goes into the record)",
    )
    c.add_argument("--out", default=None, help="JSON file to append the record to")
    add_fid_runtime_argument(c)
    c.set_defaults(func=cmd_checkpoint)

    r = commands.add_parser("refstats", help="compute and cache reference statistics")
    r.add_argument("dataset")
    r.add_argument("--split", default="test")
    r.add_argument("--feature", default="fd-lenet", choices=FEATURES)
    r.add_argument("--num", type=positive_int, default=None)
    r.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_fid_runtime_argument(r)
    r.set_defaults(func=cmd_refstats)

    real = commands.add_parser(
        "real",
        help="score real images of a split: the floor of each metric",
        description="score real images of a split against the reference statistics: the "
        "floor of each metric at that sample size",
    )
    real.add_argument("dataset")
    real.add_argument("--split", default="train", help="the images scored")
    real.add_argument("--ref-split", default="test", help="the reference statistics")
    real.add_argument("--num", type=positive_int, default=10_000)
    real.add_argument("--metric", default="fd-lenet", help=f"comma list of {list(FEATURE_OF)}")
    real.add_argument("--ref-num", type=positive_int, default=10_000)
    real.add_argument("--device", default="auto", help=DEVICE_HELP)
    real.add_argument("--out", default=None, help="JSON file to append the record to")
    add_fid_runtime_argument(real)
    real.set_defaults(func=cmd_real)

    p = commands.add_parser("plot", help="plot quality against NFE from a results JSON")
    p.add_argument("results")
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_plot)
