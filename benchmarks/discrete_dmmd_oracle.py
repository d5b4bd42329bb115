"""D-MMD students of the exact discrete oracle against the teacher's own ancestral sampler.

The teacher is the exact denoiser of a random joint over 6 tokens of 3 symbols
(`DiscreteOracle.random(6, 3, seed=0)`, 729 sequences). Its k-step sampler draws the tokens
revealed in one step independently, so its output law (computed exactly) is off the joint by a KL
that shrinks with k. Students (`OracleGenerator`: the oracle's logits plus a learned correction,
initialised at the oracle, with or without the extra Gaussian noise input) are distilled with
D-MMD at 2/4/8 steps and judged by the KL of their sampled joint to the true joint (Monte Carlo,
against the floor of as many exact draws), by the exact KL of their sampler's law where they have
no noise input (then it is a computable Markov chain, also traced during training), and by the
unigram entropy of their samples (collapse). Uniform students use hard targets (the paper's
choice) or the step posterior (`target="posterior"`, the default); the 'check' stage repeats the
comparison exactly on a second oracle, the 'exact' stage adds the exact KL to older rows.

    python benchmarks/discrete_dmmd_oracle.py --processes masked --stages teacher students report
    python benchmarks/discrete_dmmd_oracle.py --processes uniform --stages teacher students report
    python benchmarks/discrete_dmmd_oracle.py --processes uniform --stages check --steps 8 \
        --train-steps 750
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
    merge_stored,
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
VARIANTS = {
    "masked": {"noise": (4, "soft"), "no noise": (0, "soft")},
    "uniform": {"hard": (0, "hard"), "hard + noise": (4, "hard"), "posterior": (0, "posterior")},
}
"""Student variants per process: (extra noise width, auxiliary target)."""


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


@torch.no_grad()
def exact_student_kl(oracle: DiscreteOracle, process: str, net, steps: int) -> float:
    """KL(law of a student without noise input || joint), exactly (its sampler's Markov chain)."""
    denoise = net_denoiser(net, process, oracle.vocab_size)
    law = oracle.sampler_distribution(process, discrete_grid(steps, SCHEDULE), denoise=denoise)
    return oracle.kl_to(law)


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


def store_row(path: Path, key: str, row: dict) -> None:
    """Store one student row, replacing a stored row of the same key whole (a retrained
    student's history must not merge with the old one's)."""

    def merge(mine: dict, stored: dict) -> dict:
        stored.get("students", {}).pop(key, None)
        return merge_stored(mine, stored)

    locked_update(path, {"students": {key: row}}, merge)


def train_student(args, oracle: DiscreteOracle, process: str, noise_dim: int, target: str, k: int):
    """A `k`-step D-MMD student of `oracle` (`fit_dmmd`), its fit (the history of a student
    without noise input carries the exact KL of its sampler at every logged step) and seconds."""
    torch.manual_seed(args.seed)
    student = OracleGenerator(oracle, process, noise_dim, hidden=args.hidden)
    aux = OracleGenerator(oracle, process, 0, hidden=args.hidden)
    cfg = DMMDConfig(student_steps=k, noise_dim=noise_dim, target=target)
    log_every = max(1, args.train_steps // 10)
    exact_trace = {}

    def trace(step, net):
        if noise_dim == 0 and (step % log_every == 0 or step == args.train_steps):
            exact_trace[step] = exact_student_kl(oracle, process, net, k)

    start = time.perf_counter()
    fit = fit_dmmd(
        student, aux, oracle.denoiser(process), oracle_data(oracle), process,
        oracle.vocab_size, SCHEDULE, cfg, steps=args.train_steps, batch_size=args.batch,
        lr=args.lr, seed=args.seed, log_every=log_every, callback=trace,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    for entry in fit.history:
        if entry["step"] in exact_trace:
            entry["kl_exact"] = exact_trace[entry["step"]]
    return student, fit, seconds


def weights_name(key: str) -> str:
    """The file of a student's weights in `--work-dir`, from its row key."""
    process, variant, k = key.split("/")
    return f"{process}_{variant.replace(' ', '').replace('+', '_')}_k{k}.safetensors"


def exact_stage(args, oracle: DiscreteOracle, process: str) -> None:
    """Add the exact KL to stored rows of students without noise input that lack it, from
    their saved weights (rows trained before the exact KL was recorded)."""
    students = read_json(Path(args.out) / RAW, {}).get("students", {})
    for key, row in students.items():
        path = Path(args.work_dir) / weights_name(key)
        if row["process"] != process or row["noise_dim"] or row.get("kl_exact") is not None:
            continue
        if not path.exists():
            print(f"{key}: no weights at {path}, skipped", flush=True)
            continue
        student = OracleGenerator(oracle, process, 0, hidden=args.hidden)
        student.load_state_dict(safetensors.torch.load_file(str(path)))
        kl = exact_student_kl(oracle, process, student, row["steps"])
        print(f"{key}: exact KL {kl:.5f} (sampled {row['kl_mc']:.5f})", flush=True)
        locked_update(Path(args.out) / RAW, {"students": {key: {"kl_exact": kl}}})


def check_stage(args, process: str) -> None:
    """The same question on a second oracle (`--check-oracle-seed`), exactly and without
    sampling: the teacher's KL and that of every student without noise input, per step count."""
    oracle = DiscreteOracle.random(args.length, args.vocab, seed=args.check_oracle_seed)
    for k in args.steps:
        grid = discrete_grid(k, SCHEDULE)
        rows = {"teacher": oracle.kl_to(oracle.sampler_distribution(process, grid))}
        for variant, (noise_dim, target) in VARIANTS[process].items():
            if noise_dim or (args.variants and variant not in args.variants):
                continue
            _, fit, seconds = train_student(args, oracle, process, noise_dim, target, k)
            rows[variant] = fit.history[-1]["kl_exact"]
            print(f"check oracle {args.check_oracle_seed}, {process}/{variant}/{k}: exact KL "
                  f"{rows[variant]:.5f} (teacher {rows['teacher']:.5f}, {seconds:.0f} s)",
                  flush=True)  # fmt: skip
        check = {"oracle_seed": args.check_oracle_seed, "train_steps": args.train_steps}
        locked_update(Path(args.out) / RAW, {"check": {**check, process: {str(k): rows}}})


def student_stage(args, oracle: DiscreteOracle, process: str, stored: dict) -> dict:
    rows = {}
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    for variant, (noise_dim, target) in VARIANTS[process].items():
        if args.variants and variant not in args.variants:
            continue
        for k in args.steps:
            key = f"{process}/{variant}/{k}"
            if key in stored and not args.retrain:
                print(f"{key}: stored, skipped", flush=True)
                continue
            student, fit, seconds = train_student(args, oracle, process, noise_dim, target, k)
            safetensors.torch.save_file(student.state_dict(), str(work / weights_name(key)))

            def denoise(gen, net=student, d=noise_dim):
                return net_denoiser(net, process, oracle.vocab_size, noise_dim=d, generator=gen)

            x = draw(denoise, process, k, args.samples, oracle.length, oracle.vocab_size,
                     args.sample_seed)  # fmt: skip
            row = {
                "process": process, "variant": variant, "noise_dim": noise_dim, "steps": k,
                "target": target, **sample_stats(oracle, x),
                "kl_exact": fit.history[-1].get("kl_exact"), "train_seconds": round(seconds, 1),
                "history": fit.history,
            }  # fmt: skip
            print(f"{key}: KL {row['kl_mc']:.5f} (exact {row['kl_exact']}), "
                  f"unigram H {row['unigram_entropy']:.4f} "
                  f"({seconds:.0f} s)", flush=True)  # fmt: skip
            rows[key] = row
            store_row(Path(args.out) / RAW, key, row)
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
    lines += check_section(data)
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


def check_section(data: dict) -> list[str]:
    """The second oracle's exact KLs (the 'check' stage), if run."""
    check, cfg = data.get("check"), data["config"]
    if not check:
        return []
    lines = [
        "## A second oracle",
        "",
        f"`DiscreteOracle.random({cfg['length']}, {cfg['vocab']}, seed={check['oracle_seed']})`, "
        f"students without noise input, {check['train_steps']} generator updates, otherwise as "
        "above; every KL is exact (the law of the sampler's Markov chain, no sampling).",
        "",
    ]
    for process in [p for p in VARIANTS if p in check]:
        variants = [v for v, (noise, _) in VARIANTS[process].items() if noise == 0]
        rows = [
            [process, k, fmt_sig(row["teacher"])]
            + [fmt_sig(row[v]) if v in row else "-" for v in variants]
            for k, row in sorted(check[process].items(), key=lambda item: int(item[0]))
        ]
        header = ["process", "steps", "teacher KL"] + [f"student, {v}" for v in variants]
        lines += markdown_table(header, rows, "lr" + "r" * (len(header) - 2)) + [""]
    return lines


def exact_findings(process: str, teacher: dict, students: dict, cfg: dict) -> list[str]:
    """The exact KL of the students without noise input (their laws are computable)."""
    out = []
    for k in cfg["steps"]:
        found = {
            v: s["kl_exact"]
            for v in VARIANTS[process]
            if (s := students.get(f"{process}/{v}/{k}")) and s.get("kl_exact") is not None
        }
        if found:
            words = ", ".join(f"{v} {fmt_sig(value)}" for v, value in found.items())
            out.append(
                f"- Exact KL at {k} steps of the students without noise input: {words} "
                f"(teacher {fmt_sig(teacher['exact_kl'][str(k)])})."
            )
    return out


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
    return out + exact_findings(process, teacher, students, cfg) + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", nargs="+", default=["masked", "uniform"],
                   choices=["masked", "uniform"])  # fmt: skip
    p.add_argument("--stages", nargs="+", default=["teacher", "students", "report"],
                   choices=["teacher", "students", "exact", "check", "report"])  # fmt: skip
    p.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--length", type=int, default=6)
    p.add_argument("--vocab", type=int, default=3)
    p.add_argument("--oracle-seed", type=int, default=0)
    p.add_argument("--check-oracle-seed", type=int, default=1, help="the 'check' stage's oracle")
    p.add_argument("--samples", type=int, default=400_000)
    p.add_argument("--sample-seed", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action="store_true", help="retrain students already stored")
    p.add_argument("--variants", nargs="+", default=None, help="student variants (default: all)")
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
        "lr": args.lr, "seed": args.seed, "steps": sorted(set(args.steps)),
        "unigram_entropy": entropy(exact_unigram(oracle)),
    }  # fmt: skip
    command = command_line(argv)
    stored = read_json(out / RAW, {})
    commands = [c for c in stored.get("commands", []) if c != command] + [command]
    main_oracle = {"teacher", "students"} & set(args.stages)  # the config describes its runs
    locked_update(out / RAW, {**({"config": config} if main_oracle else {}), "commands": commands})
    record_run(out, command)  # first: a run stopped by its time limit keeps its stored rows
    for process in args.processes:
        if "teacher" in args.stages:
            locked_update(out / RAW, {"teacher": {process: teacher_stage(args, oracle, process)}})
        if "students" in args.stages:
            student_stage(args, oracle, process, read_json(out / RAW, {}).get("students", {}))
        if "exact" in args.stages:
            exact_stage(args, oracle, process)
        if "check" in args.stages:
            check_stage(args, process)
    if "report" in args.stages:
        write_report(out, report_text(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
