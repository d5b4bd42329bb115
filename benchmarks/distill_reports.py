"""The distillation studies' reports, rendered from their stored `results.json` alone:
`oracle_report` (students against the exact-oracle teacher, `distill_oracle.py`) and
`mnist_report` (students of the shipped MNIST model, `distill_mnist.py`); and what the two
scripts share (their common flags, saving a study).

    python benchmarks/distill_reports.py results/distill results/distill/oracle_100k
    python benchmarks/distill_reports.py results/distill_mnist
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from common import (
    RAW,
    command_line,
    markdown_table,
    read_json,
    record_run,
    write_json,
    write_report,
)

ORACLE = {"shape": (1, 8, 8), "num_components": 8, "seed": 0}
GRID_BUDGET = 1000  # student training steps of the main table; other budgets get own tables
TEACHER_SAMPLERS = ("ddim", "ddpm", "addim", "dpmpp_2m", "dpmpp_3m", "unipc", "heun", "cov_ddim")
TEACHER_NFES = (1, 2, 4, 8, 16, 32)
STUDENT_STEPS = (1, 2, 4, 8)
N_TEACHER_END = 1280
"""The paper's final annealed N_teacher, `MCMConfig.n_teacher_end` (a test checks they agree)."""
SAMPLES = "samples.png"
"""The MNIST study's first samples of every row, in the study folder."""


# --------------------------------------------------------------------------- oracle study


def best_teacher(results: dict, nfe: int, standard: bool = False) -> tuple[str, dict]:
    """The teacher's best row at `nfe`; `standard`: among the published ODE/SDE samplers only
    (without difflab's covariance-aware DDIM, which the targets were not written against)."""
    rows = [
        (k, r)
        for k, r in results.get("teacher", {}).items()
        if r["nfe"] == nfe and not (standard and r["sampler"].startswith("cov_ddim"))
    ]
    return min(rows, key=lambda kr: kr[1]["frechet"], default=("none", {"frechet": math.nan}))


def student_table(students: dict, results: dict) -> list[str]:
    rows = []
    for name in dict.fromkeys(key.split("@")[0] for key in students):
        cells, lrs = [], set()
        for k in STUDENT_STEPS:
            r = students.get(f"{name}@{k}")
            cells.append(
                "" if r is None else f"{r['ema']['frechet']:.4f} / {r['ema']['mode_tv']:.3f}"
            )
            lrs |= set() if r is None else {f"{r['lr']:g}"}
        rows.append([name, ", ".join(sorted(lrs)), *cells])
    lines = markdown_table(["student", "lr", "1 step", "2 steps", "4 steps", "8 steps"], rows)
    for standard, label in ((False, "best sampler"), (True, "best standard sampler")):
        cells = []
        for k in STUDENT_STEPS:
            key, r = best_teacher(results, k, standard)
            cells.append(f"{r['frechet']:.4f} ({key})")
        lines.append(f"| teacher, {label} at the same NFE | | " + " | ".join(cells) + " |")
    return lines


def verdict(fd: float, ref: float, tolerance: float) -> str:
    """`met` / `missed`, or a tie when the two distances differ by less than `tolerance` (the
    exact samples' own distance: the sampling-noise scale of the estimate)."""
    if abs(fd - ref) <= tolerance:
        return "tie (within the exact-sample distance)"
    return "met" if fd < ref else "missed"


def target_lines(students: dict, results: dict) -> list[str]:
    """The study's targets: 8-step MMD/MCM-CD students no worse than the teacher's best sampler
    at 32 NFE; 4-step students better than its best at 8 NFE."""
    lines = []
    tolerance = results.get("exact_samples", {}).get("frechet", 0.0)
    for name in ("mmd", "mcm-cd"):
        for k, nfe in ((8, 32), (4, 8)):
            r = students.get(f"{name}@{k}")
            if r is None:
                continue
            fd = r["ema"]["frechet"]
            ref_key, ref = best_teacher(results, nfe)
            std_key, std = best_teacher(results, nfe, standard=True)
            lines.append(
                f"- {name} at {k} steps: FD {fd:.4f} vs teacher best at {nfe} NFE "
                f"{ref['frechet']:.4f} ({ref_key}): "
                f"**{verdict(fd, ref['frechet'], tolerance)}**"
                f"; vs the best standard sampler {std['frechet']:.4f} ({std_key}): "
                f"{'better' if fd <= std['frechet'] else 'worse'}"
                + own_architecture(fd, results, nfe)
            )
    return lines


def emd_target_lines(students: dict, results: dict) -> list[str]:
    """EMD's targets (one step): its best student beats the 1-step MCM-CD and MMD students, and
    K > 0 beats K = 0; each row with its training wall time."""
    tolerance = results.get("exact_samples", {}).get("frechet", 0.0)
    emd = {k: r for k, r in students.items() if k.startswith("emd") and k.endswith("@1")}
    if not emd:
        return []
    lines = ["EMD (one step; training wall time on the shared CPU):", ""]
    for key, r in sorted(emd.items()):
        lines.append(f"- {key}: FD {r['ema']['frechet']:.4f}, mode TV {r['ema']['mode_tv']:.3f}"
                     f" ({r['train_seconds'] / 60:.1f} min)")  # fmt: skip
    best_key, best = min(emd.items(), key=lambda kr: kr[1]["ema"]["frechet"])
    fd = best["ema"]["frechet"]
    for other in ("mcm-cd@1", "mmd@1"):
        if other in students:
            ref = students[other]["ema"]["frechet"]
            lines.append(f"- best EMD ({best_key}) {fd:.4f} vs {other} {ref:.4f} "
                         f"({students[other]['train_seconds'] / 60:.1f} min): "
                         f"**{verdict(fd, ref, tolerance)}**")  # fmt: skip
    k0 = emd.get("emd-k0@1")
    longer = {k: r for k, r in emd.items() if k.split("-")[1] != "k0" and k.count("-") == 1}
    if k0 and longer:
        key, r = min(longer.items(), key=lambda kr: kr[1]["ema"]["frechet"])
        lines.append(f"- K > 0 ({key}) {r['ema']['frechet']:.4f} vs K = 0 "
                     f"{k0['ema']['frechet']:.4f}: "
                     f"**{verdict(r['ema']['frechet'], k0['ema']['frechet'], tolerance)}** "
                     "(one seed; the seed spread is in the notes)")  # fmt: skip
    return lines + [""]


def own_architecture(fd: float, results: dict, nfe: int) -> str:
    """The student against its own architecture trained as a diffusion model (the init net) at
    `nfe`: the paper's comparison, where the teacher is a network of the same kind."""
    rows = [(k, r) for k, r in results.get("init", {}).items() if k.endswith(f"@{nfe}")]
    if not rows:
        return ""
    key, r = min(rows, key=lambda kr: kr[1]["frechet"])
    return (f"; vs the init net (the students' architecture) {r['frechet']:.4f} ({key}): "
            f"{'better' if fd <= r['frechet'] else 'worse'}")  # fmt: skip


def oracle_report(results: dict, args) -> str:
    m = results["machine"]  # `common.machine`, or the keys of runs before it
    exact = results.get("exact_samples", {}).get("frechet", math.nan)
    lines = [
        "# Distillation on the exact-oracle teacher",
        "",
        f"Teacher: `GaussianMixtureOracle.image_like({ORACLE})` closed-form posterior mean "
        "(cosine schedule, logsnr in [-15, 15]). Metric: exact Frechet distance of "
        f"{args.samples} samples to the mixture's exact moments (lower is better; exact samples "
        f"give {exact:.4f} from sampling noise alone) and the mode-"
        "weight total variation (TV). Same initial noise (seed "
        f"{args.seed}) for every row. Machine: {m.get('processor', m.get('cpu'))}, "
        f"{m.get('cpu_count', m.get('cores'))} shared cores, torch {m['torch']}.",
        "",
    ]
    if results.get("teacher"):  # a students-only run in its own work dir has no teacher rows
        lines += ["## Teacher (the exact denoiser) by sampler and NFE", ""]
        rows = []
        for sampler in TEACHER_SAMPLERS:
            cells = []
            for n in (*TEACHER_NFES, 256):
                r = results["teacher"].get(f"{sampler}@{n}")
                cells.append("" if r is None else f"{r['frechet']:.4f} / {r['mode_tv']:.3f}")
            rows.append([sampler, *cells])
        lines += markdown_table(["sampler", *(f"NFE {n}" for n in (*TEACHER_NFES, 256))], rows)
        lines += ["", "Cells: Frechet distance / mode TV.", ""]
    meta = results.get("init_meta", {})
    budget_text = f"{GRID_BUDGET} steps" if results.get("students") else "the steps below"
    lines += [
        "## Students (1/2/4/8 steps) vs the teacher's best sampler",
        "",
        f"Students start from an MLP ({meta.get('parameters', '?')} parameters, width "
        f"{meta.get('width')}, depth {meta.get('depth')}) regressed onto the oracle's denoiser for "
        f"{meta.get('steps')} steps (batch {meta.get('batch')}); its own samples"
        + (f" ({meta['scored_samples']} each unless marked)" if "scored_samples" in meta else "")
        + ": "
        + ", ".join(
            f"{k} FD {v['frechet']:.4f}" + (f" ({v['samples']} samples)" if "samples" in v else "")
            for k, v in results.get("init", {}).items()
        )
        + f". Each student then trains for {budget_text} (batch {args.batch}, Adam "
        f"beta = (0, 0.99), the learning rate in the table, EMA {args.student_ema}); cells show "
        "the EMA student's Frechet distance / mode TV (raw weights in the JSON).",
        "",
    ]
    extra = sorted(k for k in results if k.startswith("students_"))
    extra.sort(key=lambda k: (int(k.split("_")[1]), k))
    for key in ("students", *extra):
        students = results.get(key, {})
        if not students:
            continue
        if key != "students":
            budget, _, decay = key.removeprefix("students_").partition("_")
            decay = f", {decay} learning-rate decay to 0" if decay else ""
            lines += [f"### Longer training: {budget} steps{decay}", ""]
        ends = {r["config"]["n_teacher_end"] for r in students.values()
                if "n_teacher_end" in r.get("config", {})}  # fmt: skip
        if ends - {N_TEACHER_END}:
            ends_text = ", ".join(str(n) for n in sorted(ends))
            lines += [f"MCM anneals `N_teacher` from 64 to {ends_text} here "
                      f"(paper: {N_TEACHER_END}).", ""]  # fmt: skip
        lines += student_table(students, results)
        lines += ["", f"Targets (a difference below the exact samples' own distance, {exact:.4f}, "
                  "is a tie):", ""] + target_lines(students, results) + [""]  # fmt: skip
        lines += emd_target_lines(students, results)
    lines += [
        "Reproduce (runs and numbers are cached under `--work-dir`, so the commands resume):",
        "",
        *[f"    {c}" for c in results.get("commands", [])],
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- MNIST study


def mnist_report(results: dict, args) -> str:
    rows = [r for part in ("teacher", "students") for r in results.get(part, {}).values()]
    names = [n for n in ("fd-lenet", "fid", "precision", "recall") if any(n in r for r in rows)]
    lines = [
        "# Distillation of the MNIST teacher",
        "",
        f"Teacher: `{args.teacher}`. {args.samples} class-balanced samples per row (seed "
        f"{args.seed}); Frechet distances against the MNIST test-set statistics, precision/recall "
        f"(k = 3) in LeNet features against the test images. Students: batch {args.batch}, "
        "their training budgets below.",
        "",
    ]
    rows = [
        [f"{part[:-1] if part == 'students' else part} {key}", r["nfe"],
         *(f"{r[n]:.3f}" if n in r else "" for n in names)]
        for part in ("teacher", "students")
        for key, r in results.get(part, {}).items()
    ]  # fmt: skip
    lines += markdown_table(["model", "NFE", *names], rows)
    lines += ["", "Student training (shared 2-core CPU, one torch thread each):", ""]
    for key, r in results.get("students", {}).items():
        lines.append(
            f"- {key}: {r['budget']} steps, lr {r['lr']:g}, {r['train_seconds'] / 60:.0f} min"
        )
    lines += ["", "Targets:", ""]
    lines += mnist_targets(results)
    lines += ["", f"Samples: `{SAMPLES}`.", "", "Reproduce:", ""]
    lines += [f"    {c}" for c in results.get("commands", [])]
    return "\n".join(lines) + "\n"


def mnist_targets(results: dict) -> list[str]:
    """8-step MMD within 10% of the teacher at 256 DDIM steps; 4-step MCM-CD better than the
    teacher at 8 DDPM and 8 DDIM steps. Judged in Inception FID where every row involved has it
    (the metric the targets are stated in), else in fd-lenet (said so)."""
    teacher, students, out = results.get("teacher", {}), results.get("students", {}), []

    def metric(*rows: dict) -> tuple[str, str]:
        if all("fid" in r for r in rows):
            return "fid", "Inception FID"
        return "fd-lenet", "fd-lenet (the targets are stated for Inception FID)"

    mmd, ref = students.get("mmd-alternating@8"), teacher.get("ddim@256")
    if mmd and ref:
        key, name = metric(mmd, ref)
        ok = mmd[key] <= 1.1 * ref[key]
        out.append(
            f"- {name}: MMD 8 steps {mmd[key]:.1f} vs teacher DDIM 256 steps {ref[key]:.1f}"
            f" (within 10%: **{'met' if ok else 'missed'}**)"
        )
    mcm = students.get("mcm-cd@4")
    refs = [(k, teacher[k]) for k in ("ddim@8", "ddpm@8") if k in teacher]
    if mcm and refs:
        key, name = metric(mcm, *(r for _, r in refs))
        ok = all(mcm[key] < r[key] for _, r in refs)
        vs = ", ".join(f"{k} {r[key]:.1f}" for k, r in refs)
        out.append(
            f"- {name}: MCM-CD 4 steps {mcm[key]:.1f} vs teacher {vs} "
            f"(better than both: **{'met' if ok else 'missed'}**)"
        )
    return out


def study_arguments(description: str, out: Path) -> argparse.ArgumentParser:
    """The flags both distillation studies take."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--samples", type=int, default=10_000, help="samples per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default="runs/bench_distill", help="runs and numbers (resumable)")
    p.add_argument("--out", default=str(out), help="the study folder")
    p.add_argument("--threads", type=int, default=None)
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The flags, with the command line as typed (`args.command`)."""
    args = p.parse_args(argv)
    args.command = command_line(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return args


def save_study(folder: Path, key: str, results: dict, args: argparse.Namespace) -> None:
    """`<folder>/results.json` (`{key: results, "args": the flags}`), its report and the run in
    `<folder>/manifest.json`."""
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    write_json(folder / RAW, {key: results, "args": flags}, sort_keys=True)
    report = oracle_report if key == "oracle" else mnist_report
    # rendered from the stored (key-sorted) numbers, so `reports.py` re-renders it identically
    write_report(folder, report(read_json(folder / RAW)[key], args))
    record_run(folder, args.command)


def report_text(folder: str | Path) -> str:
    """The report of a stored `results.json` (oracle or MNIST study)."""
    data = read_json(Path(folder) / RAW)
    args = argparse.Namespace(**data["args"])
    return (
        oracle_report(data["oracle"], args)
        if "oracle" in data
        else mnist_report(data["mnist"], args)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="study folders holding a results.json")
    for folder in p.parse_args(argv).folders:
        write_report(folder, report_text(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
