"""`difflab eval`: evaluate a checkpoint, cache reference statistics, plot results.

    difflab eval CKPT --metric fid,kid,pr,fd-lenet --num 10000 --sampler ddim --steps 50
    difflab eval refstats mnist --split test --feature fd-lenet
    difflab eval real mnist --split train --num 2000 --metric fid,fd-lenet   # the metric's floor
    difflab eval plot results/x.json --out results/x.png

Metrics: `fid`, `kid`, `pr` use the Inception network (`difflab[fid]`); `fd-lenet`,
`kid-lenet`, `pr-lenet` use difflab's own MNIST LeNet (a Frechet distance in *its* features,
not FID); `elbo` is the model's ELBO in bits/dim on reference images. Reference statistics are
taken from the cache and computed on first use (`refstats`); KID and precision/recall compare
against the features of the first `--ref-num` reference images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

FEATURE_OF = {
    "fid": "fid",
    "kid": "fid",
    "pr": "fid",
    "fd-lenet": "fd-lenet",
    "kid-lenet": "fd-lenet",
    "pr-lenet": "fd-lenet",
}
METRICS = (*FEATURE_OF, "elbo")


def parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metric: unknown {unknown or text!r}; known metrics: {list(METRICS)}")
    return names


def _reference_images(dataset: str, split: str, num: int) -> torch.Tensor:
    from .reference import DATASETS

    if dataset not in DATASETS:
        raise ValueError(f"unknown reference dataset {dataset!r}; known: {sorted(DATASETS)}")
    return torch.from_numpy(DATASETS[dataset](split)[:num])


def _reference_stats(dataset: str, split: str, extractor):
    from .reference import compute_reference_stats, load_reference_stats

    try:
        return load_reference_stats(dataset, split, extractor)
    except FileNotFoundError:
        print(f"computing {extractor.name} reference statistics of {dataset}/{split} (cached once)")
        compute_reference_stats(dataset, split, extractor.name, device=str(extractor.device))
        return load_reference_stats(dataset, split, extractor)


def feature_metrics(
    samples: torch.Tensor,
    metrics: list[str],
    *,
    dataset: str = "mnist",
    split: str = "test",
    ref_num: int = 10_000,
    device: str = "cpu",
) -> dict[str, float]:
    """Feature-based metrics of `samples` (float in [-1, 1]) against a reference dataset, the
    feature networks run on `device`."""
    from .features import get_feature_extractor
    from .metrics import frechet_distance, kernel_inception_distance, precision_recall

    out: dict[str, float] = {}
    feats: dict[str, object] = {}
    for metric in metrics:
        if metric == "elbo":
            continue
        feature = FEATURE_OF[metric]
        extractor = get_feature_extractor(feature, device)
        if feature not in feats:
            feats[feature] = extractor(samples.clamp(-1, 1))
        fake = feats[feature]
        if metric in ("fid", "fd-lenet"):
            out[metric] = frechet_distance(fake, _reference_stats(dataset, split, extractor))
            continue
        ref_key = f"ref:{feature}"
        if ref_key not in feats:
            feats[ref_key] = extractor(_reference_images(dataset, split, ref_num))
        real = feats[ref_key]
        if metric.startswith("kid"):
            kid = kernel_inception_distance(real, fake)
            out[metric], out[f"{metric}_std"] = kid.mean, kid.std
        else:
            pr = precision_recall(real, fake)
            out[f"{metric}_precision"], out[f"{metric}_recall"] = pr.precision, pr.recall
    return out


def evaluate_checkpoint(args: argparse.Namespace) -> dict:
    from ..cli import sample_checkpoint
    from ..devices import resolve_device
    from ..sampling.generate import describe_grid

    metrics = parse_metrics(args.metric)
    device = str(resolve_device(args.device))
    record: dict = {
        "checkpoint": str(args.checkpoint),
        "sampler": args.sampler,
        "steps": args.steps,
        "grid": describe_grid(args.grid, args.sampler),
        "guidance": args.guidance,
        "num": args.num,
        "seed": args.seed,
        "reference": f"{args.dataset}/{args.split}",
        "device": device,
    }
    sample_metrics = [m for m in metrics if m != "elbo"]
    if sample_metrics:
        result, _ = sample_checkpoint(
            args.checkpoint,
            sampler=args.sampler,
            steps=args.steps,
            num=args.num,
            grid=args.grid,
            guidance=args.guidance,
            interval=args.interval,
            seed=args.seed,
            device=device,
            batch_size=args.batch_size,
        )
        record.update(sampler=result.sampler, steps=result.steps, grid=result.grid)
        record.update(nfe=result.nfe, sampling_seconds=round(result.seconds, 2))
        start = time.perf_counter()
        record.update(
            feature_metrics(
                result.samples,
                sample_metrics,
                dataset=args.dataset,
                split=args.split,
                ref_num=args.ref_num,
                device=device,
            )
        )
        record["feature_seconds"] = round(time.perf_counter() - start, 2)
    if "elbo" in metrics:
        record.update(
            checkpoint_elbo(
                args.checkpoint,
                args.dataset,
                args.split,
                min(args.num, args.ref_num),
                args.seed,
                logsnr_max=args.elbo_logsnr_max,
                device=device,
            )
        )
    return record


def checkpoint_elbo(
    ckpt,
    dataset: str,
    split: str,
    num: int,
    seed: int,
    logsnr_max: float | None = None,
    device: str = "cpu",
) -> dict:
    """`{"elbo_bits_per_dim", "elbo_logsnr_max"}`: the mean ELBO in bits/dim of the first `num`
    reference images (8-bit, discretized decoder at `logsnr_max`, default the schedule's end),
    evaluated without class labels (the unconditional model of a CFG-trained net). `x_hat` is
    clipped to the data range [-1, 1]: the bound holds
    for any function `x_hat(z)`, and clipping only moves it towards the data (docs/decisions.md
    has the measured effect on the shipped model)."""
    from ..train import load_denoiser
    from .likelihood import elbo

    make_denoise, cfg = load_denoiser(ckpt, clip_x=1.0, device=device)
    schedule = cfg.diffusion.build_schedule()
    top = schedule.logsnr_max if logsnr_max is None else logsnr_max
    if not schedule.logsnr_min < top <= schedule.logsnr_max:
        raise ValueError(
            f"--elbo-logsnr-max must lie in ({schedule.logsnr_min}, {schedule.logsnr_max}], "
            f"got {top}"
        )
    images = _reference_images(dataset, split, num).float().to(device) / 127.5 - 1
    gen = torch.Generator(device).manual_seed(seed)
    denoise = make_denoise()
    values = []
    with torch.inference_mode():
        for batch in images.split(250):
            bound = elbo(
                denoise,
                batch,
                logsnr_min=schedule.logsnr_min,
                logsnr_max=top,
                num_t=4,
                generator=gen,
            )
            values.append(bound.bits_per_dim)
    return {"elbo_bits_per_dim": float(torch.cat(values).mean()), "elbo_logsnr_max": top}


def add_fid_runtime_argument(p: argparse.ArgumentParser) -> None:
    from .features import FID_RUNTIMES

    help = (
        "runtime of the Inception network (default: $DIFFLAB_FID_RUNTIME, else torch); "
        "onnxruntime is ~1.5x faster on a CPU, needs difflab[fid-onnx]"
    )
    p.add_argument("--fid-runtime", choices=FID_RUNTIMES, default=None, help=help)


def use_fid_runtime(a: argparse.Namespace) -> None:
    """`--fid-runtime` reaches `get_feature_extractor` through `$DIFFLAB_FID_RUNTIME`."""
    from .features import FID_RUNTIME_ENV

    if a.fid_runtime:
        os.environ[FID_RUNTIME_ENV] = a.fid_runtime


def cmd_eval(args: argparse.Namespace) -> int:
    from ..devices import DEVICE_HELP, resolve_device

    rest = args.rest
    if not rest:
        raise ValueError("difflab eval needs a checkpoint, or `refstats` / `real` / `plot`")
    if rest[0] == "refstats":
        p = argparse.ArgumentParser(prog="difflab eval refstats")
        p.add_argument("dataset")
        p.add_argument("--split", default="test")
        p.add_argument("--feature", default="fd-lenet", choices=["fid", "fd-lenet"])
        p.add_argument("--num", type=int, default=None)
        p.add_argument("--device", default="auto", help=DEVICE_HELP)
        add_fid_runtime_argument(p)
        a = p.parse_args(rest[1:])
        use_fid_runtime(a)
        from .reference import compute_reference_stats

        device = str(resolve_device(a.device))
        print(compute_reference_stats(a.dataset, a.split, a.feature, num=a.num, device=device))
        return 0
    if rest[0] == "plot":
        p = argparse.ArgumentParser(prog="difflab eval plot")
        p.add_argument("results")
        p.add_argument("--out", default=None)
        a = p.parse_args(rest[1:])
        from .plots import plot_quality_vs_nfe, read_records

        out = a.out or str(Path(a.results).with_suffix(".png"))
        print(plot_quality_vs_nfe(read_records(a.results), out))
        return 0
    if rest[0] == "real":
        p = argparse.ArgumentParser(
            prog="difflab eval real",
            description="score real images of a split against the reference statistics: the "
            "floor of each metric at that sample size",
        )
        p.add_argument("dataset")
        p.add_argument("--split", default="train", help="the images scored")
        p.add_argument("--ref-split", default="test", help="the reference statistics")
        p.add_argument("--num", type=int, default=10_000)
        p.add_argument("--metric", default="fd-lenet", help=f"comma list of {list(FEATURE_OF)}")
        p.add_argument("--ref-num", type=int, default=10_000)
        p.add_argument("--device", default="auto", help=DEVICE_HELP)
        p.add_argument("--out", default=None, help="JSON file to append the record to")
        add_fid_runtime_argument(p)
        a = p.parse_args(rest[1:])
        use_fid_runtime(a)
        metrics = [m for m in parse_metrics(a.metric) if m != "elbo"]
        device = str(resolve_device(a.device))
        images = _reference_images(a.dataset, a.split, a.num).float() / 127.5 - 1
        record = {"real": f"{a.dataset}/{a.split}", "num": len(images),
                  "reference": f"{a.dataset}/{a.ref_split}", "device": device}  # fmt: skip
        start = time.perf_counter()
        scores = feature_metrics(
            images, metrics, dataset=a.dataset, split=a.ref_split, ref_num=a.ref_num, device=device
        )
        record.update(scores)
        record["feature_seconds"] = round(time.perf_counter() - start, 2)
        _report(record, a.out)
        return 0
    from ..cli import _interval, add_sampling_arguments

    p = argparse.ArgumentParser(prog="difflab eval", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--metric", default="fd-lenet", help=f"comma list of {list(METRICS)}")
    p.add_argument("--num", type=int, default=10_000)
    add_sampling_arguments(p)
    p.add_argument("--guidance", type=float, default=0.0)
    p.add_argument("--interval", type=_interval, default=(-math.inf, math.inf))
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--ref-num", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--elbo-logsnr-max",
        type=float,
        default=None,
        help="logsnr of the ELBO's discretized decoder (default: the schedule's maximum)",
    )
    p.add_argument("--out", default=None, help="JSON file to append the record to")
    add_fid_runtime_argument(p)
    a = p.parse_args(rest)
    use_fid_runtime(a)
    parse_metrics(a.metric)
    _report(evaluate_checkpoint(a), a.out)
    return 0


def _report(record: dict, out: str | None) -> None:
    """Print `record` as a table and append it to the JSON list in `out` (if given)."""
    width = max(len(k) for k in record)
    for key, value in record.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    if out:
        path = Path(out)
        records = json.loads(path.read_text()) if path.exists() else []
        records.append(record)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=1))
        print(f"appended to {path}")


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint (FID/KID/PR/fd-lenet/ELBO), cache refstats, plot results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "rest", nargs=argparse.REMAINDER, help="CKPT [options] | refstats ... | plot ..."
    )
    p.set_defaults(func=cmd_eval)
    return p
