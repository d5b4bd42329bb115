"""D-MMD students of the exact discrete oracle against the teacher's own ancestral sampler.

The teacher is the exact denoiser of a random joint over 6 tokens of 3 symbols
(`DiscreteOracle.random(6, 3, seed=0)`, 729 sequences). Its k-step sampler draws the tokens
revealed in one step independently, so its output law (computed exactly) is off the joint by a KL
that shrinks with k. Students (`OracleGenerator`: the oracle's logits plus a learned correction,
initialised at the oracle, with or without the extra Gaussian noise input) are distilled with
D-MMD at 2/4/8 steps and judged by the KL of their sampled joint to the true joint (Monte Carlo,
against the floor of as many exact draws) and by the unigram entropy of their samples (collapse).

    python benchmarks/discrete_dmmd_oracle.py --processes masked --stages teacher students report
    python benchmarks/discrete_dmmd_oracle.py --processes uniform --stages teacher students report
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import safetensors.torch
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

from difflab.discrete import DiscreteOracle, LinearMaskingSchedule, discrete_grid, prior_sample
from difflab.eval.discrete_metrics import entropy, unigram_entropy
from difflab.methods.discrete_mmd import (
    DMMDConfig,
    OracleGenerator,
    fit_dmmd,
    net_denoiser,
    oracle_data,
    sample_dmmd,
)

OUT = RESULTS / "discrete" / "dmmd_oracle"
TEACHER_STEPS = (2, 4, 8, 16, 32, 64)
SCHEDULE = LinearMaskingSchedule()
VARIANTS = {"masked": {"noise": 4, "no noise": 0}, "uniform": {"hard": 0, "hard + noise": 4}}


def exact_unigram(oracle: DiscreteOracle) -> torch.Tensor:
    """The data's token frequencies, all positions pooled, exactly."""
    onehot = torch.nn.functional.one_hot(oracle.sequences, oracle.vocab_size).double()
    return (oracle.joint[:, None, None] * onehot).sum(0).mean(0)


def make_oracle(args) -> DiscreteOracle:
    return DiscreteOracle.random(args.length, args.vocab, seed=args.oracle_seed)


@torch.no_grad()
def draw(denoise, process: str, steps: int, num: int, length: int, vocab: int, seed: int):
    """`num` samples of the ancestral sampler with `denoise` on the student grid, in batches."""
    gen = torch.Generator().manual_seed(seed)
    chunks = []
    for first in range(0, num, 50000):
        n = min(50000, num - first)
        z = prior_sample(process, (n, length), vocab, generator=gen)
        chunks.append(sample_dmmd(denoise(gen), z, steps, SCHEDULE, process, generator=gen))
    return torch.cat(chunks)


def sample_stats(oracle: DiscreteOracle, x: torch.Tensor) -> dict:
    return {
        "kl_mc": oracle.kl_from_samples(x),
        "unigram_entropy": unigram_entropy(x, oracle.vocab_size),
    }


def teacher_stage(args, oracle: DiscreteOracle, process: str) -> dict:
    exact = {}
    for k in TEACHER_STEPS:
        start = time.perf_counter()
        exact[str(k)] = oracle.kl_to(
            oracle.sampler_distribution(process, discrete_grid(k, SCHEDULE))
        )
        print(f"{process} teacher {k} steps: exact KL {exact[str(k)]:.5f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    mc = {}
    for k in args.steps:
        x = draw(lambda g: oracle.denoiser(process), process, k, args.samples, oracle.length,
                 oracle.vocab_size, args.sample_seed)  # fmt: skip
        mc[str(k)] = sample_stats(oracle, x)
    data = oracle.sample(args.samples, generator=torch.Generator().manual_seed(args.sample_seed))
    return {"exact_kl": exact, "sampled": mc, "data": sample_stats(oracle, data)}


def student_stage(args, oracle: DiscreteOracle, process: str, stored: dict) -> dict:
    rows = {}
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    for variant, noise_dim in VARIANTS[process].items():
        for k in args.steps:
            key = f"{process}/{variant}/{k}"
            if key in stored and not args.retrain:
                print(f"{key}: stored, skipped", flush=True)
                continue
            torch.manual_seed(args.seed)
            student = OracleGenerator(oracle, process, noise_dim, hidden=args.hidden)
            aux = OracleGenerator(oracle, process, 0, hidden=args.hidden)
            cfg = DMMDConfig(student_steps=k, noise_dim=noise_dim)
            start = time.perf_counter()
            fit = fit_dmmd(
                student, aux, oracle.denoiser(process), oracle_data(oracle), process,
                oracle.vocab_size, SCHEDULE, cfg, steps=args.train_steps, batch_size=args.batch,
                lr=args.lr, seed=args.seed, log_every=max(1, args.train_steps // 10),
            )  # fmt: skip
            seconds = time.perf_counter() - start
            name = f"{process}_{variant.replace(' ', '').replace('+', '_')}_k{k}.safetensors"
            safetensors.torch.save_file(student.state_dict(), str(work / name))

            def denoise(gen, net=student, d=noise_dim):
                return net_denoiser(net, process, oracle.vocab_size, noise_dim=d, generator=gen)

            x = draw(denoise, process, k, args.samples, oracle.length, oracle.vocab_size,
                     args.sample_seed)  # fmt: skip
            row = {
                "process": process, "variant": variant, "noise_dim": noise_dim, "steps": k,
                "target": "soft" if process == "masked" else "hard",
                **sample_stats(oracle, x), "train_seconds": round(seconds, 1),
                "history": fit.history,
            }  # fmt: skip
            print(f"{key}: KL {row['kl_mc']:.5f}, unigram H {row['unigram_entropy']:.4f} "
                  f"({seconds:.0f} s)", flush=True)  # fmt: skip
            rows[key] = row
            locked_update(Path(args.out) / RAW, {"students": {key: row}})
    return rows


# --------------------------------------------------------------------------- the report


def report_text(folder: Path) -> str:
    data = read_json(Path(folder) / RAW)
    cfg = data["config"]
    lines = [
        "# D-MMD students of the exact discrete oracle",
        "",
        f"Question: can a few-step D-MMD student of an *exact* teacher sample the joint better "
        f"than the teacher's own ancestral sampler at the same steps, without collapsing? "
        f"Oracle: `DiscreteOracle.random({cfg['length']}, {cfg['vocab']}, "
        f"seed={cfg['oracle_seed']})` ({cfg['vocab'] ** cfg['length']} sequences, entropy "
        f"{cfg['entropy']:.3f} nats, pooled unigram entropy {cfg['unigram_entropy']:.4f} nats). "
        f"KL is KL(sampled joint || true joint) in nats; 'exact' is the teacher sampler's law "
        f"computed over all states, 'sampled' the plug-in estimate from {cfg['samples']:,} "
        f"samples (biased up: {cfg['samples']:,} exact draws score the floor given below). "
        f"Students: `OracleGenerator` (hidden {cfg['hidden']}), {cfg['train_steps']} generator "
        f"updates (each after one auxiliary update), batch {cfg['batch']}, Adam lr {cfg['lr']}, "
        f"betas (0, 0.99), seed {cfg['seed']}; linear masking schedule, uniform-t student grid.",
        "",
    ]
    students = data.get("students", {})
    for process in [p for p in VARIANTS if p in data.get("teacher", {})]:
        teacher = data["teacher"][process]
        floor = teacher["data"]["kl_mc"]
        variants = list(VARIANTS[process])
        lines += [f"## {process.capitalize()} diffusion", ""]
        header = ["steps", "teacher KL (exact)", "teacher KL (sampled)"]
        header += [f"student, {v}" for v in variants]
        header += ["unigram H: teacher"] + [f"unigram H: {v}" for v in variants]
        rows = []
        for k in cfg["steps"]:
            t = teacher["sampled"].get(str(k))
            row = [k, fmt_sig(teacher["exact_kl"][str(k)]), fmt_sig(t["kl_mc"]) if t else "-"]
            found = [students.get(f"{process}/{v}/{k}") for v in variants]
            row += [fmt_sig(s["kl_mc"]) if s else "-" for s in found]
            row += [f"{t['unigram_entropy']:.4f}" if t else "-"]
            row += [f"{s['unigram_entropy']:.4f}" if s else "-" for s in found]
            rows.append(row)
        lines += markdown_table(header, rows, "r" * len(header))
        many = ", ".join(
            f"{k} steps {fmt_sig(v)}" for k, v in teacher["exact_kl"].items()
            if int(k) not in cfg["steps"]
        )  # fmt: skip
        lines += [
            "",
            f"Teacher at more steps (exact KL): {many}. Floor (KL of {cfg['samples']:,} exact "
            f"draws): {fmt_sig(floor)}; their unigram entropy "
            f"{teacher['data']['unigram_entropy']:.4f}.",
            "",
        ]
        lines += findings(process, teacher, students, cfg)
    lines += [
        "## Commands",
        "",
        *[f"    {c}" for c in data.get("commands", [])],
        "",
        "Raw numbers (with each student's mismatch history): `results.json`; the run records: "
        "`manifest.json`.",
        "",
    ]
    return "\n".join(lines)


def findings(process: str, teacher: dict, students: dict, cfg: dict) -> list[str]:
    """One line per student step count: the best student against the teacher, in words."""
    floor = teacher["data"]["kl_mc"]
    exact = {int(k): v for k, v in teacher["exact_kl"].items()}
    out = []
    for k in cfg["steps"]:
        found = {v: students.get(f"{process}/{v}/{k}") for v in VARIANTS[process]}
        found = {v: s for v, s in found.items() if s}
        if not found:
            continue
        best = min(found, key=lambda v: found[v]["kl_mc"])
        value = found[best]["kl_mc"]
        teacher_k = teacher["sampled"].get(str(k), {}).get("kl_mc")
        matched = min((n for n, v in exact.items() if v + floor <= value), default=None)
        words = (
            f"- {k} steps: the best student ({best}) scores {fmt_sig(value)} against "
            f"{fmt_sig(teacher_k) if teacher_k is not None else '-'} for the teacher's sampler at "
            f"{k} steps (both sampled; floor {fmt_sig(floor)})"
        )
        if teacher_k is not None and value >= teacher_k:
            words += ": worse than the teacher at the same steps."
        elif matched is None:
            words += "; no teacher step count in the table does as well."
        else:
            words += (
                f"; the teacher needs {matched} steps to do as well (its exact KL plus the floor)."
            )
        out.append(words)
    unigram = [s["unigram_entropy"] for key, s in students.items() if key.startswith(process)]
    if unigram:
        ref = teacher["data"]["unigram_entropy"]
        worst = max(abs(u - ref) / ref for u in unigram)
        out.append(
            f"- Unigram entropy of every {process} student is within {100 * worst:.2f}% of the "
            "data's draws (no collapse)."
        )
    return out + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", nargs="+", default=["masked", "uniform"],
                   choices=["masked", "uniform"])  # fmt: skip
    p.add_argument("--stages", nargs="+", default=["teacher", "students", "report"],
                   choices=["teacher", "students", "report"])  # fmt: skip
    p.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--length", type=int, default=6)
    p.add_argument("--vocab", type=int, default=3)
    p.add_argument("--oracle-seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=400_000)
    p.add_argument("--sample-seed", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action="store_true", help="retrain students already stored")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default="runs/dmmd_oracle", help="student weights")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    oracle = make_oracle(args)
    config = {
        "length": args.length, "vocab": args.vocab, "oracle_seed": args.oracle_seed,
        "entropy": oracle.entropy(), "samples": args.samples, "sample_seed": args.sample_seed,
        "train_steps": args.train_steps, "batch": args.batch, "hidden": args.hidden,
        "lr": args.lr, "seed": args.seed, "steps": args.steps,
        "unigram_entropy": entropy(exact_unigram(oracle)),
    }  # fmt: skip
    command = command_line(argv)
    stored = read_json(out / RAW, {})
    commands = [c for c in stored.get("commands", []) if c != command] + [command]
    locked_update(out / RAW, {"config": config, "commands": commands})
    record_run(out, command)  # first: a run stopped by its time limit keeps its stored rows
    for process in args.processes:
        if "teacher" in args.stages:
            locked_update(out / RAW, {"teacher": {process: teacher_stage(args, oracle, process)}})
        if "students" in args.stages:
            student_stage(args, oracle, process, read_json(out / RAW, {}).get("students", {}))
    if "report" in args.stages:
        write_report(out, report_text(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
