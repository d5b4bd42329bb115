"""8-step Moment Matching students of the dual-rate model and of the single-rate baseline: fd-lenet
and GFLOPs per sample.

    python benchmarks/dual_rate_students.py --baseline runs/dual_rate/mnist_baseline \
        --dual runs/dual_rate/mnist --distill-steps 400 --freeze-encoder-steps 200 \
        --refresh 1 2 4 8 --num 1000 --out results/dual_rate

Both students are distilled by `difflab distill mmd` (alternating, the same recipe and steps).
The dual-rate student starts as a copy of the dual-rate teacher; its rollouts run its light net
on its own encoder's features, and its encoder gets no gradient for the first
`--freeze-encoder-steps` updates. It is sampled with `dual_rate_ddpm` at each refresh rate K on
the student's 8-step grid; the baseline student with `ddpm`. Writes the `students` key of
`<out>/results.json` and re-renders the report (`dual_rate_frontier.report_text`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import (
    RAW,
    command_line,
    read_json,
    record_run,
    study_folder,
    update_results,
    write_report,
)
from dual_rate_frontier import report_text


def distil(teacher: str, out: Path, steps: int, batch: int, options: dict) -> Path:
    from difflab.methods import run_distillation

    overrides = [f"train.steps={steps}", f"data.batch_size={batch}", "train.ckpt_every=100",
                 "train.log_every=50", "train.progress=false", "train.tensorboard=false",
                 "train.keep_last=1"]  # fmt: skip
    return run_distillation("mmd", teacher, 8, variant="alternating", out_dir=out,
                            overrides=overrides, options=options, resume=True)  # fmt: skip


def score(run: Path, sampler: str, options: dict, num: int, seed: int) -> dict:
    from difflab import api
    from difflab.eval.scores import feature_metrics

    model = api.load(run)
    gen = api.sample(model, num=num, sampler=sampler, steps=8, grid="uniform_t", options=options,
                     seed=seed, progress=False)  # fmt: skip
    row = {"sampler": sampler, **options, **api.sample_cost(model, gen), "num": num, "seed": seed}
    row.update(feature_metrics(gen.samples, ["fd-lenet"], ref_num=10_000))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True)
    p.add_argument("--dual", required=True)
    p.add_argument("--distill-steps", type=int, default=400)
    p.add_argument("--freeze-encoder-steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--refresh", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default="runs/dual_rate/students")
    p.add_argument("--out", default="results/dual_rate")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    folder, work = study_folder(a.out), Path(a.work_dir)
    students = dict((read_json(folder / RAW, {}) or {}).get("students", {}))
    plan = [("baseline_mmd8", a.baseline, {}, [("ddpm", {})])]
    plan += [("dual_rate_mmd8", a.dual, {"freeze_encoder_steps": a.freeze_encoder_steps},
              [("dual_rate_ddpm", {"refresh_every": k}) for k in a.refresh])]  # fmt: skip
    for name, teacher, options, samplers in plan:
        run = distil(teacher, work / name, a.distill_steps, a.batch, options)
        for sampler, opts in samplers:
            key = f"{name}|{sampler}|{opts.get('refresh_every', '-')}"
            if key in students:
                continue
            row = {"teacher": teacher, "train_steps": a.distill_steps, **options,
                   **score(run, sampler, opts, a.num, a.seed)}  # fmt: skip
            students[key] = row
            update_results(folder, {"students": students})
            print(json.dumps(row), flush=True)
    write_report(folder, report_text(folder))
    record_run(folder, command_line())


if __name__ == "__main__":
    main()
