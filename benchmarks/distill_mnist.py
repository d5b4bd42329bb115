"""Few-step students distilled from a trained MNIST teacher (the shipped model by default),
against the teacher's own samplers: students are distilled with
`difflab.methods.distill.run_distillation` and every row is scored with feature-based Frechet
distances against the MNIST test statistics and LeNet precision/recall.

Runs and numbers are cached under `--work-dir` (`<work-dir>/mnist/mnist.json`), so a re-run
resumes; writes `<out>/README.md`, `<out>/results.json` and `<out>/samples.png`.

    python benchmarks/distill_mnist.py --teacher src/difflab/assets/mnist_uvit.safetensors \
        --samples 1000 --features fd-lenet --mnist-students mmd-alternating@8 --batch 64
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from common import (
    ROOT,
    machine,
    named_value,
    read_json,
    study_folder,
    write_json,
)
from distill_reports import SAMPLES, parse, save_study, study_arguments
from torch import Tensor

from difflab.allocator import apply_malloc_fix
from difflab.sampling.generate import generate
from difflab.train import list_checkpoints

MNIST_PLAN = (("mmd", "alternating", 8), ("mmd", "alternating", 4), ("mcm", "cd", 4),
              ("mcm", "cd", 8), ("mcm", "ct", 4), ("mmd", "alternating", 1),
              ("mcm", "cd", 1))  # fmt: skip
MNIST_TEACHER = (("ddim", 8), ("ddpm", 8), ("ddim", 32), ("ddim", 256))


def mnist_scores(samples: Tensor, features: dict, real: dict) -> dict:
    """Frechet distances in each feature space against the cached MNIST test-set statistics
    (`difflab eval refstats mnist --split test`), and precision/recall (k = 3) in LeNet features
    against the test images."""
    from difflab.eval.metrics import feature_stats, frechet_distance_from_stats, precision_recall

    out = {}
    for name, extractor in features.items():
        feats = extractor(samples.clamp(-1, 1), progress=False)
        mu, cov, _ = feature_stats(feats)
        ref = real[name]
        out[name] = frechet_distance_from_stats(mu, cov, ref.mu, ref.cov)
        if name == "fd-lenet":
            pr = precision_recall(real["test-lenet"], feats)
            out["precision"], out["recall"] = pr.precision, pr.recall
    return out


def mnist_setting(args) -> dict:
    """Teacher rows and students of a trained MNIST checkpoint (`--teacher`)."""
    from difflab.eval.features import get_feature_extractor
    from difflab.eval.reference import DATASETS, load_reference_stats
    from difflab.methods.distill import run_distillation, student_sampling
    from difflab.train import load_denoiser

    work = Path(args.work_dir) / "mnist"
    store = work / "mnist.json"
    results = read_json(store, {})
    results["machine"] = machine()
    command = args.command
    if command not in results.setdefault("commands", []):
        results["commands"].append(command)
    features, real = {}, {}
    for name in args.features:
        try:
            features[name] = get_feature_extractor(name)
            real[name] = load_reference_stats("mnist", "test", features[name])
        except (FileNotFoundError, ImportError, ValueError) as err:
            print(f"skipping {name}: {err}")
            features.pop(name, None)
    if "fd-lenet" in features:
        test = torch.from_numpy(DATASETS["mnist"]("test")[: args.samples])
        real["test-lenet"] = features["fd-lenet"](test, progress=False)

    def evaluate(path, sampler, steps, grid="default") -> dict:
        make, cfg = load_denoiser(path)
        net = make.net
        labels = torch.arange(args.samples) % net.config.num_classes
        shape = (net.config.in_channels, net.config.resolution, net.config.resolution)
        gen = generate(make, shape, cfg.diffusion.build_schedule(), num=args.samples,
                       sampler=sampler, steps=steps, grid=grid, labels=labels, seed=args.seed,
                       progress=False)  # fmt: skip
        return {"nfe": gen.nfe, **mnist_scores(gen.samples, features, real)}

    def first_samples(path, sampler, steps, grid="default", num=20) -> Tensor:
        """The first `num` samples of a row (same noise and labels as `evaluate`)."""
        make, cfg = load_denoiser(path)
        net = make.net
        shape = (net.config.in_channels, net.config.resolution, net.config.resolution)
        return generate(make, shape, cfg.diffusion.build_schedule(), num=num, sampler=sampler,
                        steps=steps, grid=grid, labels=torch.arange(num) % net.config.num_classes,
                        seed=args.seed, progress=False).samples  # fmt: skip

    rows = results.setdefault("teacher", {})
    teacher_plan = [(r.split("@")[0], int(r.split("@")[1])) for r in args.mnist_teacher]
    student_plan = [(m.split("-")[0], m.split("-")[1].split("@")[0], int(m.split("@")[1]))
                    for m in args.mnist_students]  # fmt: skip
    for sampler, steps in teacher_plan:
        if f"{sampler}@{steps}" not in rows:
            rows[f"{sampler}@{steps}"] = evaluate(args.teacher, sampler, steps)
            print(f"teacher {sampler}@{steps}: {rows[f'{sampler}@{steps}']}")
            write_json(store, results, sort_keys=True)
    rows = results.setdefault("students", {})
    for method, variant, k in student_plan:
        key = f"{method}-{variant}@{k}"
        lr = float(named_value(args.method_lr, f"{method}-{variant}", args.student_lr))
        run = work / f"{method}_{variant}_k{k}_lr{lr:g}"
        options = {"aux_teacher_weight": args.aux_teacher_weight} if method == "mmd" else {}
        done = [int(c.name.split("_")[1]) for c in list_checkpoints(run)]
        trained = bool(done) and max(done) >= args.student_budget  # a resume only re-scores it
        start = time.perf_counter()
        run_distillation(
            method,
            args.teacher,
            k,
            variant=variant,
            out_dir=run,
            resume=True,
            options=options,
            overrides=[
                f"train.steps={args.student_budget}",
                f"data.batch_size={args.batch}",
                f"optim.lr={lr}",
                "train.progress=false",
                "train.tensorboard=false",
            ],
        )
        spec = student_sampling(run)
        seconds = time.perf_counter() - start
        before = rows.get(key, {})
        if trained and "train_seconds" in before:
            seconds = before["train_seconds"]  # keep the time of the run that trained it
        elif before.get("budget", math.inf) < args.student_budget:
            seconds += before.get("train_seconds", 0.0)  # resumed to a longer budget
        scores = evaluate(run, spec["sampler"], spec["steps"], spec["grid"])
        rows[key] = {"budget": args.student_budget, "train_seconds": seconds, "lr": lr,
                     "options": options, **scores}  # fmt: skip
        print(f"student {key}: {rows[key]}")
        write_json(store, results, sort_keys=True)
    folder = study_folder(args.out)
    from difflab.eval.plots import plot_sample_rows

    images = {f"teacher {s}@{k}": first_samples(args.teacher, s, k) for s, k in teacher_plan}
    for key, row in results.get("students", {}).items():  # every student trained so far
        name, k = key.split("@")[0], int(key.split("@")[1])
        method, variant = name.split("-")
        run = work / f"{method}_{variant}_k{k}_lr{row['lr']:g}"
        spec = student_sampling(run)
        images[f"{method}-{variant} student, {k} steps"] = first_samples(
            run, spec["sampler"], spec["steps"], spec["grid"]
        )
    title = "Shipped MNIST teacher vs distilled students (same noise and labels, seed 0)"
    plot_sample_rows(images, folder / SAMPLES, title=title)
    save_study(folder, "mnist", results, args)
    return results


def main(argv: list[str] | None = None) -> int:
    apply_malloc_fix()
    p = study_arguments(__doc__.splitlines()[0], ROOT / "results" / "distill_mnist")
    p.add_argument("--teacher", required=True, help="the teacher checkpoint, run or model")
    p.add_argument("--batch", type=int, default=128, help="students' training batch")
    p.add_argument("--student-budget", type=int, default=1000, help="students' training steps")
    p.add_argument("--student-lr", type=float, default=2e-4)
    p.add_argument("--method-lr", nargs="*", default=[], help="per method: name=lr")
    p.add_argument("--aux-teacher-weight", type=float, default=0.0, help="MMD students")
    p.add_argument("--features", nargs="+", default=["fd-lenet", "fid"])
    p.add_argument(
        "--mnist-teacher",
        nargs="+",
        default=[f"{s}@{k}" for s, k in MNIST_TEACHER],
        help="teacher rows as sampler@steps",
    )
    p.add_argument(
        "--mnist-students",
        nargs="+",
        default=[f"{m}-{v}@{k}" for m, v, k in MNIST_PLAN],
        help="students as method-variant@steps (mmd-alternating@8, mcm-cd@4, ...)",
    )
    mnist_setting(parse(p, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
