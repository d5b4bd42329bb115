"""The sampling phase of the MNIST-at-10k study: 10k samples per row from the shipped model,
kept as uint8 in `--samples-dir`, scored with the cheap features while sampling (`--features`,
default fd-lenet; `mnist_10k_score.py` adds Inception FID later, e.g. on another machine).

Rows, in order of priority (a `--deadline` skips what does not fit and says so):

1. samplers: every method of the sampler study (`sampler_bench.py`: ours and diffusers'
   schedulers, the same initial noise and random labels for all) at each NFE of `--nfe`;
2. teacher: the shipped model with `--teacher-rows` (class-balanced labels);
3. students: distilled students (`--students`, exported `.safetensors` or run directories), each
   with its own recorded sampler; `--train-minutes M` also distils an 8-step MMD and a 4-step
   MCM-CD student from the teacher on this device for M minutes each (`train.max_minutes`);
4. real: `--num` MNIST training images (the floor of each metric at this sample size);
5. samplers at the NFE of `--extra-nfe`.

    python benchmarks/mnist_10k_sample.py --device cuda --samples-dir runs/m10k
    python benchmarks/mnist_10k_sample.py --device cuda --samples-dir runs/m10k \\
        --features fd-lenet fid                         # also FID: sample and score at once
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from mnist_10k_store import (
    TEACHER_ROWS,
    Clock,
    Scorer,
    Store,
    fmt_row,
    phase_arguments,
    run_phase,
    student_fields,
)

METHODS = (
    "ddim", "ddpm", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m", "unipc", "addim",
    "addim_measured", "cov_ddim", "cov_ddim_det", "cov_ddim_mean_last", "cov_ddim_table",
    "cov_ddim_table_mean_last", "cov_dpmpp_2m", "cov_dpmpp_2m_table", "cov_dpmpp_2m_table_w1",
    "cov_dpmpp_2m_table_eta1", "sde_dpmpp_2m", "diffusers_ddim", "diffusers_dpmpp_2m",
    "diffusers_dpmpp_2m_karras", "diffusers_unipc", "diffusers_heun",
)  # fmt: skip
"""The sampler rows (`sampler_bench.difflab_methods` and the diffusers peers), in table order."""
GPU_STUDENTS = (("mmd", "alternating", 8), ("mcm", "cd", 4))


# --------------------------------------------------------------------------- sampling phase
def sampler_rows(args, store: Store, scorer: Scorer, clock: Clock, nfes, bench) -> None:
    setup, runner, methods = bench
    for nfe in nfes:
        for method in methods:
            name = f"sampler:{method.name}@{nfe}"
            if "nfe" in store.rows.get(name, {}):
                continue
            if clock.out():
                store.rows[name] = {"skipped": "deadline"}
                continue
            steps = method.steps(nfe)
            paper_nfe, jvps = method.counts(steps)
            row = {"group": "samplers", "method": method.name, "family": method.family,
                   "nfe_target": nfe, "steps": steps, "nfe": paper_nfe, "jvps": jvps}  # fmt: skip
            try:
                x, seconds = runner.samples(method, steps)
            except FloatingPointError as err:  # a registered sampler that diverged says so
                store.rows[name] = row | {"nonfinite_samples": str(err)}
                store.save(args.out_dir)
                print(f"{name}: {err}", flush=True)
                continue
            row["sampling_seconds"] = round(seconds, 2)
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            if bad:  # a diffusers peer returns what it computed
                row["nonfinite_samples"] = bad
                x = torch.nan_to_num(x)
            row |= scorer(store.put_samples(name, x))
            store.rows[name] = row
            store.save(args.out_dir)
            print(f"{name}: {fmt_row(row)}", flush=True)


def generated_row(args, store, scorer, clock, name: str, group: str, path, sampler, steps, grid):
    from difflab import api

    if "nfe" in store.rows.get(name, {}):
        return
    if clock.out():
        store.rows[name] = {"skipped": "deadline"}
        return
    model = api.load(path, device=args.device)
    result = api.sample(model, num=args.num, sampler=sampler, steps=steps, grid=grid,
                        seed=args.seed, batch_size=args.batch, progress=False)  # fmt: skip
    row = {"group": group, "model": str(path), "sampler": result.sampler, "steps": result.steps,
           "grid": result.grid, "nfe": result.nfe,
           "sampling_seconds": round(result.seconds, 2)}  # fmt: skip
    row |= scorer(store.put_samples(name, result.samples))
    store.rows[name] = row
    store.save(args.out_dir)
    print(f"{name}: {fmt_row(row)}", flush=True)


def train_students(args, store, scorer, clock) -> None:
    """Distil the GPU students from the teacher for `--train-minutes` each, export, score."""
    from difflab.methods.distill import export_student, run_distillation, student_sampling
    from difflab.train import read_metrics

    for method, variant, k in GPU_STUDENTS:
        name = f"student:{method}-{variant}@{k} ({args.device}, {args.train_minutes:g} min)"
        if "nfe" in store.rows.get(name, {}) or clock.out(60 * args.train_minutes + 30):
            store.rows.setdefault(name, {"skipped": "deadline"})
            continue
        run = Path(args.samples_dir) / f"train_{method}_{variant}_k{k}"
        start = time.perf_counter()
        run_distillation(method, args.teacher, k, variant=variant, out_dir=run, resume=True,
                         overrides=[f"train.steps={args.train_max_steps}",
                                    f"train.max_minutes={args.train_minutes}",
                                    f"data.batch_size={args.train_batch}",
                                    f"optim.lr={args.train_lr}", "train.compile=false",
                                    "train.ckpt_every=0", "train.log_every=100",
                                    "train.progress=false", "train.tensorboard=false"])  # fmt: skip
        seconds = time.perf_counter() - start
        records = read_metrics(run / "metrics.jsonl")
        steps_done = max(r["step"] for r in records if "step" in r)
        exported = Path(args.out_dir or args.samples_dir) / f"{run.name}.safetensors"
        export_student(run, exported)
        spec = student_sampling(exported)
        generated_row(args, store, scorer, clock, name, "students", exported, spec["sampler"],
                      spec["steps"], spec["logsnrs"])  # fmt: skip
        store.rows[name] |= {"method": f"{method}-{variant}", "student_steps": k,
                             "device": args.device, "train_steps": steps_done,
                             "train_seconds": round(seconds, 1),
                             "train_batch": args.train_batch, "train_lr": args.train_lr,
                             "images_per_s": [r["images_per_s"] for r in records
                                              if "images_per_s" in r][-1:]}  # fmt: skip
        store.save(args.out_dir)


def phase_sample(args, store: Store, clock: Clock) -> None:
    from difflab.eval.reference import DATASETS

    scorer = Scorer(args.features, args.device)
    bench = None  # the samplers' setup (it measures their tables), only if sampler rows run

    def samplers_at(nfes) -> None:
        nonlocal bench
        if args.methods and nfes:
            bench = bench or sampler_setup(args, store)
            sampler_rows(args, store, scorer, clock, nfes, bench)

    samplers_at(args.nfe)
    for row in args.teacher_rows:
        sampler, steps = row.split("@")
        generated_row(args, store, scorer, clock, f"teacher:{row}", "teacher", args.teacher,
                      sampler, int(steps), "default")  # fmt: skip
    for path in args.students:
        student_row(args, store, scorer, clock, path)
    if "nfe" not in store.rows.get("real:train", {}):
        images = DATASETS["mnist"]("train")[: args.num]
        store.rows["real:train"] = {"group": "real", "nfe": 0, **scorer(images)}
        np.savez(store.samples_file("real:train"), images=images)
        store.save(args.out_dir)
    if args.train_minutes > 0:
        train_students(args, store, scorer, clock)
    samplers_at(args.extra_nfe)


def student_row(args, store: Store, scorer: Scorer, clock: Clock, path: str) -> None:
    """A distilled student (exported file or run directory) with its own recorded sampler; the
    row names the method, its steps and its training, so reports can lay out the grid."""
    from difflab.methods.distill import student_sampling

    spec = student_sampling(path)
    if spec is None:
        raise SystemExit(f"--students: {path} is not a distilled student")
    name = f"student:{Path(path).stem if Path(path).is_file() else Path(path).name}"
    generated_row(args, store, scorer, clock, name, "students", path, spec["sampler"],
                  spec["steps"], spec["logsnrs"])  # fmt: skip
    row = store.rows[name]
    if "nfe" in row and "student_steps" not in row:
        row |= {"device": args.device, **student_fields(Path(path))}
        store.save(args.out_dir)


def sampler_setup(args, store: Store):
    """The sampler study's setup, runner and the methods of `--methods` on the teacher (and
    the JVP cost on this device, once per store)."""
    import sampler_bench as bench

    ns = argparse.Namespace(denoiser=["checkpoint", args.teacher], guidance=0.0,
                            interval=[-math.inf, math.inf], features=["fd-lenet"], ref_split="test",
                            table_num=args.table_num, device=args.device)  # fmt: skip
    setup = bench.checkpoint_setup(ns)
    runner = bench.Runner(setup, args.num, args.batch, args.seed)
    methods = bench.difflab_methods(setup, args.table_levels)
    try:
        methods += bench.diffusers_methods()
    except ImportError as err:  # the peers need `difflab[bench]`
        print(f"diffusers rows skipped: {err}")
        args.methods = [m for m in args.methods if not m.startswith("diffusers_")]
    known = {m.name for m in methods}
    if unknown := set(args.methods) - known:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; known: {sorted(known)}")
    methods = [m for name in args.methods for m in methods if m.name == name]
    if "jvp_cost" not in store.data:
        store.data["jvp_cost"] = bench.jvp_costs(setup, reps=7)
        print(f"jvp cost: {store.data['jvp_cost']}", flush=True)
    return setup, runner, methods


def main(argv=None) -> int:
    p = phase_arguments(__doc__.split("\n\n")[0])
    p.add_argument("--extra-nfe", type=int, nargs="*", default=[4, 6, 16, 32])
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--teacher-rows", nargs="*", default=list(TEACHER_ROWS))
    p.add_argument("--students", nargs="*", default=[])
    p.add_argument("--features", nargs="+", default=None, help="default: fd-lenet")
    p.add_argument("--table-levels", type=int, default=121)
    p.add_argument("--table-num", type=int, default=2000)
    p.add_argument("--train-minutes", type=float, default=0.0)
    p.add_argument("--train-max-steps", type=int, default=100_000)
    p.add_argument("--train-batch", type=int, default=256)
    p.add_argument("--train-lr", type=float, default=1e-4)
    return run_phase(p, argv, "sample", ["fd-lenet"], phase_sample)


if __name__ == "__main__":
    raise SystemExit(main())
