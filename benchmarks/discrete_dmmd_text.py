"""D-MMD students of the masked-diffusion Shakespeare teacher against the teacher's own sampler.

Teacher (`configs/discrete_text_masked.yaml`) at 8/16/32/64/256 ancestral steps against D-MMD
students at 4/8/16 steps (`difflab distill dmmd`), each judged on the same number of 128-char
samples by three numbers under the same-size autoregressive model
(`configs/discrete_text_ar.yaml`) as the reference: generative perplexity, the gradient-moment
distance to held-out text (unbiased, `difflab.eval.discrete_metrics.gradient_moment`) and the
unigram entropy of the samples (collapse check), beside the same numbers for held-out text.

    python benchmarks/discrete_dmmd_text.py --teacher runs/discrete_text_masked \
        --reference runs/discrete_text_ar
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import (
    RAW,
    RESULTS,
    command_line,
    fmt_sig,
    locked_update,
    markdown_table,
    read_json,
    record_run,
    write_report,
)

from difflab.data import make_dataset
from difflab.eval.discrete_metrics import (
    generative_perplexity,
    gradient_moment,
    unigram_entropy,
)
from difflab.methods.discrete_diffusion import discrete_parts, draw
from difflab.methods.distill import (
    export_student,
    read_student_spec,
    run_distillation,
    spec_logsnrs,
)
from difflab.train import load_model

OUT = RESULTS / "discrete" / "dmmd_text"


def held_out(split: str, num: int, seq_len: int, seed: int) -> torch.Tensor:
    """`num` random windows of `seq_len` characters of a split."""
    data = make_dataset("shakespeare_char", split, seq_len=seq_len)
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:num]
    return torch.stack([data[int(i)][0] for i in index])


def distill_stage(args) -> None:
    work = Path(args.work_dir)
    for k in args.student_steps:
        out = work / f"student_k{k}"
        overrides = [
            f"train.steps={args.distill_steps}", f"train.max_minutes={args.distill_minutes}",
            f"data.batch_size={args.batch}", f"optim.lr={args.lr}", "optim.warmup_steps=20",
            "train.ckpt_every=50", "train.log_every=10", "train.progress=false",
            "train.tensorboard=false", "train.keep_last=1",
        ]  # fmt: skip
        start = time.perf_counter()
        run = run_distillation("dmmd", args.teacher, k, out_dir=out, overrides=overrides,
                               resume=(out / "checkpoints").is_dir())  # fmt: skip
        export_student(run, work / f"student_k{k}.safetensors")
        print(f"student {k} steps: {time.perf_counter() - start:.0f} s", flush=True)


def score(ref, samples: torch.Tensor, data: torch.Tensor, chunks: int) -> dict:
    def loss(x: torch.Tensor) -> torch.Tensor:
        return -ref.log_prob(x).mean() / x.shape[1]

    gm, gm_se = gradient_moment(ref, loss, samples, data, chunks=chunks)
    return {
        "gen_ppl": generative_perplexity(ref.log_prob, samples),
        "gm": gm,
        "gm_se": gm_se,
        "unigram_entropy": unigram_entropy(samples, ref.config.vocab_size),
    }


def eval_stage(args) -> dict:
    ref, _ = load_model(args.reference)
    ref.requires_grad_(True)
    data = held_out("test", args.samples, args.seq_len, args.seed)
    rows = {"data (valid split)": score(ref, held_out("valid", args.samples, args.seq_len,
                                                      args.seed), data, args.chunks)}  # fmt: skip
    teacher, cfg = load_model(args.teacher)
    parts = discrete_parts(cfg)
    shape = (args.samples, args.seq_len)
    for steps in args.teacher_steps:
        gen = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        x = draw(teacher, parts.process, parts.vocab_size, shape, steps, generator=gen)
        rows[f"teacher {steps}"] = {"steps": steps, **score(ref, x, data, args.chunks),
                                    "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
        print(f"teacher {steps}: {rows[f'teacher {steps}']}", flush=True)
        locked_update(Path(args.out) / RAW, {"rows": rows})
    for k in args.student_steps:
        path = Path(args.work_dir) / f"student_k{k}.safetensors"
        if not path.is_file():
            continue
        student, _ = load_model(path)
        grid = spec_logsnrs(read_student_spec(path))
        gen = torch.Generator().manual_seed(args.seed)
        torch.manual_seed(args.seed)  # the student's extra noise input
        x = draw(student, parts.process, parts.vocab_size, shape, k, generator=gen, grid=grid)
        rows[f"student {k}"] = {"steps": k, **score(ref, x, data, args.chunks)}
        print(f"student {k}: {rows[f'student {k}']}", flush=True)
        locked_update(Path(args.out) / RAW, {"rows": rows})
    return rows


def findings(rows: dict) -> list[str]:
    """Each student against the teacher at its own steps and at the most steps, in words."""
    teachers = sorted((r["steps"], r) for n, r in rows.items() if n.startswith("teacher"))
    data_h = rows.get("data (valid split)", {}).get("unigram_entropy")
    if not teachers or not data_h:
        return []
    most_steps, most = teachers[-1]

    def versus(key: str, t: dict) -> str:
        se = f" ± {fmt_sig(t['gm_se'], 2)}" if key == "gm" else ""
        return f"{fmt_sig(t[key], 4)}{se}"

    def compare(key: str, r: dict, same: dict | None) -> str:
        at_k = f"{versus(key, same)} for the teacher at {r['steps']} steps, " if same else ""
        return f"{versus(key, r)} against {at_k}{versus(key, most)} at {most_steps}"

    data_ppl = rows["data (valid split)"]["gen_ppl"]
    out = [
        f"- Teacher quality: at {most_steps} steps its samples have a generative perplexity of "
        f"{fmt_sig(most['gen_ppl'], 4)} against {fmt_sig(data_ppl, 4)} for held-out text (a short "
        "CPU run), so these rows compare students with a weak teacher."
    ]
    for name, r in rows.items():
        if not name.startswith("student"):
            continue
        same = rows.get(f"teacher {r['steps']}")
        out.append(
            f"- {name} steps: generative perplexity {compare('gen_ppl', r, same)}; gradient "
            f"moment {compare('gm', r, same)}; unigram entropy "
            f"{100 * abs(r['unigram_entropy'] / data_h - 1):.2f}% from the data's."
        )
    return [*out, ""] if out else []


def report_text(folder: Path) -> str:
    data = read_json(Path(folder) / RAW)
    cfg = data["config"]
    rows = data.get("rows", {})
    data_h = rows.get("data (valid split)", {}).get("unigram_entropy")
    table = []
    for name, r in rows.items():
        rel = f"{100 * (r['unigram_entropy'] / data_h - 1):+.2f}%" if data_h else "-"
        table.append([
            name, r.get("steps", "-"), f"{r['gen_ppl']:.3f}",
            f"{fmt_sig(r['gm'])} ± {fmt_sig(r['gm_se'], 2)}",
            f"{r['unigram_entropy']:.4f}", rel,
        ])  # fmt: skip
    lines = [
        "# D-MMD students of the masked Shakespeare teacher (CPU pilot)",
        "",
        "Question: does a few-step D-MMD student sample text closer to the data than its "
        "masked-diffusion teacher at the same (or more) steps, without collapsing? Teacher "
        f"`{cfg['teacher']}`, reference autoregressive model `{cfg['reference']}`; "
        f"{cfg['samples']} samples of {cfg['seq_len']} characters per row against as many "
        f"held-out test windows (seed {cfg['seed']}); gradient moment from {cfg['chunks']} "
        f"chunk pairs (unbiased, ± its standard error); students distilled for at most "
        f"{cfg['distill_steps']} updates / {cfg['distill_minutes']} min each, batch "
        f"{cfg['batch']}, lr {cfg['lr']}. Entropies in nats; 'vs data' is relative to the "
        "valid-split windows.",
        "",
        *markdown_table(
            ["samples", "steps", "gen. perplexity", "gradient moment", "unigram H", "vs data"],
            table,
            "lrrrrr",
        ),  # fmt: skip
        "",
        *findings(rows),
        "## Commands",
        "",
        *[f"    {c}" for c in data.get("commands", [])],
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="runs/discrete_text_masked")
    p.add_argument("--reference", default="runs/discrete_text_ar")
    p.add_argument("--stages", nargs="+", default=["distill", "eval", "report"],
                   choices=["distill", "eval", "report"])  # fmt: skip
    p.add_argument("--teacher-steps", type=int, nargs="+", default=[8, 16, 32, 64, 256])
    p.add_argument("--student-steps", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--distill-steps", type=int, default=400)
    p.add_argument("--distill-minutes", type=float, default=6.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default="runs/dmmd_text")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    command = command_line(argv)
    stored = read_json(out / RAW, {})
    config = {k: getattr(args, k) for k in ("teacher", "reference", "samples", "seq_len",
              "chunks", "seed", "distill_steps", "distill_minutes", "batch", "lr")}  # fmt: skip
    commands = [c for c in stored.get("commands", []) if c != command] + [command]
    locked_update(out / RAW, {"config": config, "commands": commands})
    record_run(out, command)  # first: a run stopped by its time limit keeps its stored rows
    if "distill" in args.stages:
        distill_stage(args)
    if "eval" in args.stages:
        eval_stage(args)
    if "report" in args.stages:
        write_report(out, report_text(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
