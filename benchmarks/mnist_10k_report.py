"""The MNIST-at-10k study's report: gathers the rows of a samples folder (`--samples-dir`, made
by `mnist_10k_sample.py` and `mnist_10k_score.py`), of other samples folders (`--extra-rows`)
and of `difflab eval` records (`--merge-eval`) into `<out>/results.json`, and renders
`<out>/README.md` (with the `--notes` files), `plot.png` and `students.png`. Without
`--samples-dir` it re-renders the report from `<out>/results.json` alone.

    python benchmarks/mnist_10k_report.py --samples-dir runs/m10k --out results/mnist_10k
    python benchmarks/mnist_10k_report.py --out results/mnist_10k        # re-render
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from common import (
    RAW,
    ROOT,
    command_line,
    markdown_table,
    read_json,
    record_run,
    united,
    write_json,
    write_report,
)
from mnist_10k_store import TEACHER_ROWS, fmt, read_samples, samples_file, student_fields

from difflab.eval.image_stats import HAZE_FRAME, haze_share

COV_FAMILY = ("cov_ddim", "cov_dpmpp")
"""Rows of the covariance-aware samplers (every variant is reported against the target)."""
BASELINES = ("ddim", "heun", "dpmpp_2m", "addim")
"""The samplers the covariance-aware one must beat on MNIST."""


def sampler_table(rows: dict, key: str, nfes: list[int]) -> list[str]:
    methods = list(dict.fromkeys(r["method"] for r in rows.values()))
    cells = []
    for m in methods:
        found = [rows.get(f"sampler:{m}@{n}", {}) for n in nfes]
        cells.append([m, *(fmt(r.get(key)) + ("*" if r.get("nonfinite_samples") else "")
                           for r in found)])  # fmt: skip
    return markdown_table(["sampler", *(f"NFE {n}" for n in nfes)], cells, "l" + "r" * len(nfes))


def seed_spread(rows: dict, key: str) -> float:
    """The largest gap between two runs of the same sampler and NFE that differ only in their
    noise and labels (the samplers' rows vs the teacher rows): a floor under which a difference
    between two rows is not a measured one."""
    pairs = [(rows.get(f"sampler:{k}", {}), rows.get(f"teacher:{k}", {})) for k in TEACHER_ROWS]
    gaps = [abs(a[key] - b[key]) for a, b in pairs if key in a and key in b]
    return max(gaps, default=0.0)


def verdict(value: float, best: float, spread: float) -> str:
    if value < best - spread:
        return "met"
    return "tie (within the seed spread)" if value < best + spread else "missed"


def sampler_targets(rows: dict, key: str, nfes: list[int], spread: float) -> list[str]:
    out = []
    for n in nfes:
        base = [(m, rows.get(f"sampler:{m}@{n}", {}).get(key)) for m in BASELINES]
        base = [(m, v) for m, v in base if v is not None]
        if not base:
            continue
        best_m, best_v = min(base, key=lambda mv: mv[1])
        for r in rows.values():
            if r.get("nfe_target") != n or not r["method"].startswith(COV_FAMILY) or key not in r:
                continue
            out.append(f"- NFE {n}: `{r['method']}` {fmt(r[key])} vs the best of DDIM, Heun, "
                       f"DPM-Solver++, aDDIM (`{best_m}` {fmt(best_v)}): "
                       f"**{verdict(r[key], best_v, spread)}**")  # fmt: skip
    return out


def distill_targets(rows: dict, key: str, spread: float) -> list[str]:
    """MMD 8 steps within 10% of the teacher's 256 DDIM steps; MCM-CD 4 steps better than the
    teacher at 8 DDIM and 8 DDPM steps (by more than the seed spread, else a tie)."""
    out, ref = [], rows.get("teacher:ddim@256", {}).get(key)
    for name, r in rows.items():
        if r.get("group") != "students" or key not in r:
            continue
        if "mmd" in name and r.get("nfe") == 8 and ref is not None:
            ok = r[key] <= 1.1 * ref
            out.append(f"- `{name}` {fmt(r[key])} vs teacher DDIM 256 steps {fmt(ref)}: within "
                       f"10% or better **{'met' if ok else 'missed'}**")  # fmt: skip
        refs = [(k, rows.get(f"teacher:{k}", {}).get(key)) for k in ("ddim@8", "ddpm@8")]
        if "mcm" in name and r.get("nfe") == 4 and all(v is not None for _, v in refs):
            vs = "; ".join(f"{k} {fmt(v)}: {verdict(r[key], v, spread)}" for k, v in refs)
            out.append(f"- `{name}` {fmt(r[key])} vs teacher {vs}")
    return out


def model_table(rows: dict) -> list[str]:
    cells = []
    for name, r in rows.items():
        if r.get("group") not in ("teacher", "students", "real"):
            continue
        train = ""
        if "train_steps" in r:
            train = f"{r['train_steps']} steps, batch {r['train_batch']}"
            if "train_seconds" in r:
                train += f", {r['train_seconds'] / 60:.1f} min on {r.get('train_device')}"
        values = [r.get(k) for k in ("fid", "fd-lenet", "precision", "recall", "sampling_seconds")]
        cells.append([name, r.get("nfe", ""), *map(fmt, values), train])
    header = ["row", "NFE", "FID", "fd-lenet", "precision", "recall", "sampling s", "training"]
    return markdown_table(header, cells, "lrrrrrrl")


STUDENT_STEPS = (1, 2, 4, 8)


def student_grid(rows: dict, keys: tuple[str, ...]) -> list[str]:
    """Students by method and training run (rows) and by their number of steps (columns);
    a cell joins the row's values of `keys` with " / "."""
    runs: dict[str, dict[int, dict]] = {}
    for r in rows.values():
        if r.get("group") == "students" and "student_steps" in r and keys[0] in r:
            label = f"{r['method']}, {r.get('train_steps', '?')} steps"
            label += f" ({r['train_device']})" if r.get("train_device") else ""
            runs.setdefault(label, {})[r["student_steps"]] = r
    cells = [[label, *(" / ".join(fmt(runs[label][k].get(key)) for key in keys)
                       if k in runs[label] else "" for k in STUDENT_STEPS)]
             for label in sorted(runs)]  # fmt: skip
    header = ["student, training steps (device)", *(f"{k} step{'s' if k > 1 else ''}"
                                                     for k in STUDENT_STEPS)]  # fmt: skip
    return markdown_table(header, cells, "l" + "r" * len(STUDENT_STEPS))


def grid_section(rows: dict) -> list[str]:
    """The distillation grid: fd-lenet with precision/recall for every student, FID where it
    was measured."""
    if not any("student_steps" in r for r in rows.values()):
        return []

    def teacher(key: str) -> str:
        return ", ".join(f"{name.removeprefix('teacher:')} {fmt(r[key])}"
                         for name, r in rows.items() if name.startswith("teacher:")
                         and key in r)  # fmt: skip

    lines = ["## Distilled students by number of steps", "",
             "fd-lenet / precision / recall (LeNet features, not FID):", "",
             *student_grid(rows, ("fd-lenet", "precision", "recall")), "",
             f"The teacher's fd-lenet: {teacher('fd-lenet')}.", ""]  # fmt: skip
    students = [r for r in rows.values() if "student_steps" in r and "fid" in r]
    if students:
        runtimes = Counter(r.get("fid_runtime", "torch") for r in students)
        runtime = ", ".join(f"{k} ({n} students)" for k, n in sorted(runtimes.items()))
        lines += [f"Inception FID (only the students it was run on; Inception runtime: {runtime}):",
                  "",
                  *student_grid(rows, ("fid",)), "",
                  f"The teacher's FID: {teacher('fid')}.", ""]  # fmt: skip
    if any("frame_lit" in r for r in rows.values()):
        lines += [f"Background haze: share of the outer {FRAME}-pixel border that is not black "
                  f"(real MNIST-train: {fmt(rows.get('real:train', {}).get('frame_lit'))}):",
                  "", *student_grid(rows, ("frame_lit",)), ""]  # fmt: skip
    return lines


def render(data: dict, extra: list[str]) -> str:
    rows = data["rows"]
    samplers = {k: r for k, r in rows.items() if r.get("group") == "samplers"}
    nfes = sorted({r["nfe_target"] for r in samplers.values()})
    skipped = [k for k, r in rows.items() if "skipped" in r or "fid_skipped" in r]
    spread = seed_spread(rows, "fid")
    machine_line = "; ".join(f"{phase}: {m.get('gpu', m['device'])}, torch {m['torch']}"
                             for phase, m in data.get("machine", {}).items())  # fmt: skip
    for folder, machines in data.get("extra_machines", {}).items():
        machine_line += f"; the student rows from `{folder}`: " + ", ".join(
            f"{phase} on {m.get('gpu', m['device'])}, torch {m['torch']}"
            for phase, m in machines.items()
        )
    lines = [
        "# MNIST at 10k samples: samplers, teacher and students (`benchmarks/mnist_10k_*.py`)",
        "",
        f"{data.get('num')} samples per row; FID is the standard TF-Inception FID against the "
        "10k MNIST test images; fd-lenet, precision and recall (k = 3) are in difflab's LeNet "
        "features (not FID). Sampler rows share one initial noise and random labels (seed 0), "
        "teacher and student rows class-balanced labels (seed 0). NFE: paper convention (a "
        "forward with its JVP is one evaluation; JVP rows are marked in the JSON).",
        "",
        f"Machine: {machine_line}.",
        "",
        *extra,
        "## Teacher, distilled students and the real-data floor",
        "",
        *model_table(rows),
        "",
        "Targets (Inception FID):",
        "",
        *(distill_targets(rows, "fid", spread) or ["- (no FID rows)"]),
        "",
        *grid_section(rows),
        "## Samplers on the shipped model: FID",
        "",
        *sampler_table(samplers, "fid", nfes),
        "",
        f"Targets (FID). A difference smaller than {fmt(spread)}, the largest FID gap between two "
        "runs of one sampler that differ only in noise and labels (sampler vs teacher rows of "
        "DDIM/DDPM at the same NFE), is reported as a tie:",
        "",
        *(sampler_targets(samplers, "fid", [8, 10], spread) or ["- (no FID rows)"]),
        "",
        "## Samplers: fd-lenet",
        "",
        *sampler_table(samplers, "fd-lenet", nfes),
        "",
        f"## Samplers: wall seconds for {data.get('num')} samples (sampling only)",
        "",
        *sampler_table(samplers, "sampling_seconds", nfes),
        "",
    ]
    if "jvp_cost" in data:
        c = data["jvp_cost"]["checkpoint"]
        lines += [f"A JVP of the shipped U-ViT costs {c['vs_sdpa']:.2f} forwards (SDPA forward; "
                  f"{c['vs_math']:.2f} vs a math-attention forward; batch {c['batch']}) on "
                  "this device.", ""]  # fmt: skip
    if skipped:
        lines += [f"Not run within the time limit ({len(skipped)} rows, empty cells above): "
                  f"{', '.join(skipped)}.", ""]  # fmt: skip
    lines += ["Commands:", "", *[f"    {c}" for c in data.get("commands", [])]]
    return "\n".join(lines) + "\n"


def merged_eval_rows(files: list[str]) -> dict[str, dict]:
    """Student rows from `difflab eval STUDENT --metric fid,fd-lenet,pr-lenet` records (the same
    class-balanced labels and seed as this script's teacher and student rows), e.g. a student
    scored on a CPU after the GPU run."""
    rows = {}
    for file in files:
        for r in json.loads(Path(file).read_text()):
            rows[f"student:{Path(r['checkpoint']).name} ({r.get('device', 'cpu')})"] = {
                "group": "students", "model": r["checkpoint"], "sampler": r["sampler"],
                "steps": r["steps"], "nfe": r["nfe"], "fid": r["fid"], "fd-lenet": r["fd-lenet"],
                "precision": r["pr-lenet_precision"], "recall": r["pr-lenet_recall"],
                "sampling_seconds": r["sampling_seconds"], "from": file,
            }  # fmt: skip
    return rows


def read_rows_file(path: str | Path) -> dict:
    """A samples folder's `rows.json` (the folder or the file itself)."""
    source = Path(path)
    return json.loads((source / "rows.json" if source.is_dir() else source).read_text())


def extra_rows(paths: list[str]) -> tuple[dict[str, dict], dict[str, dict], list[str]]:
    """The student rows of other samples folders (e.g. students sampled on a CPU after a GPU
    run), each tagged with its folder; their machines by folder; the commands that made them."""
    rows, machines, commands = {}, {}, []
    for path in paths:
        data = read_rows_file(path)
        for name, r in data["rows"].items():
            if r.get("group") != "students":
                continue
            rows[name] = r | {"from": str(path)}
            if (file := samples_file(Path(path), name)).is_file():
                rows[name]["frame_lit"] = frame_lit(read_samples(file))
        machines[str(path)] = data.get("machine", {})
        commands = united(commands, data.get("commands", []))
    return rows, machines, commands


FRAME = HAZE_FRAME
"""Width in pixels of the image border where MNIST digits almost never reach."""


def frame_lit(images: np.ndarray) -> float:
    """Share of the pixels in the outer `FRAME`-pixel border that are not black: the grey
    background haze (`difflab.eval.image_stats.haze_share`; real MNIST: about 0.015)."""
    return haze_share(images, FRAME)


def phase_report(args) -> None:
    data = read_rows_file(args.samples_dir)
    data["rows"] |= merged_eval_rows(args.merge_eval)
    more, machines, commands = extra_rows(args.extra_rows)
    data["rows"] |= more
    data["commands"] = united(data.get("commands", []), commands)
    for r in data["rows"].values():  # rows from before the grid fields, when the model is here
        if r.get("group") == "students" and "student_steps" not in r and "model" in r:
            if Path(r["model"]).exists():
                r |= student_fields(Path(r["model"]))
    if machines:
        data["extra_machines"] = machines
    real = [samples_file(Path(f), "real:train") for f in [args.samples_dir, *args.extra_rows]]
    if "real:train" in data["rows"] and (found := [f for f in real if f.is_file()]):
        data["rows"]["real:train"]["frame_lit"] = frame_lit(read_samples(found[0]))
    command = command_line(args.argv)
    if command not in data.setdefault("commands", []):
        data["commands"].append(command)
    data["notes"] = list(args.notes)
    folder = Path(args.out)
    write_json(folder / RAW, data)
    write_report(folder, render(data, [Path(f).read_text() for f in args.notes]))
    plot(data["rows"], folder / "plot.png")
    grid = student_samples_plot(data["rows"], Path(args.samples_dir), folder / "students.png")
    record_run(folder, command)
    print(f"wrote {folder}/results.json and plot.png" + (f", {grid}" if grid else ""))


def report_text(folder: str | Path) -> str:
    """The report of a stored `results.json` with its notes (`notes`: paths from the root)."""
    data = read_json(Path(folder) / RAW)
    return render(data, [(ROOT / f).read_text() for f in data.get("notes", [])])


def student_samples_plot(rows: dict, folder: Path, path: Path, num: int = 20) -> Path | None:
    """The first `num` samples of every student row whose samples are on this machine (same
    class-balanced labels 0, 1, ..., 9, 0, ... in every row), by method and steps."""
    import torch

    from difflab.eval.plots import plot_sample_rows

    images = {}
    ordered = sorted((r["method"], r["student_steps"], r.get("train_steps") or 0, name)
                     for name, r in rows.items() if "student_steps" in r)  # fmt: skip
    for method, steps, trained, name in ordered:
        file = samples_file(Path(rows[name].get("from", folder)), name)
        if file.is_file():
            u8 = torch.from_numpy(read_samples(file)[:num]).float()
            images[f"{method}, {steps} step{'s' * (steps > 1)} ({trained} tr.)"] = u8 / 127.5 - 1
    if not images:
        return None
    title = "Distilled MNIST students, first samples (labels 0-9, 0-9; seed 0)"
    return plot_sample_rows(images, path, title=title)


PLOTTED = (
    "ddim", "ddpm", "dpmpp_2m", "sde_dpmpp_2m", "unipc", "addim", "cov_ddim",
    "cov_ddim_mean_last", "cov_dpmpp_2m_table", "diffusers_dpmpp_2m_karras", "diffusers_unipc",
)  # fmt: skip
"""The samplers drawn in the plot (Heun diverges at these NFE and would flatten the axes)."""


def plot(rows: dict, path: Path) -> None:
    from difflab.eval.plots import plot_quality_vs_nfe

    records = [
        {"sampler": r["method"], "nfe": r["nfe"], "FID": r.get("fid"), "fd-lenet": r["fd-lenet"]}
        for r in rows.values()
        if r.get("group") == "samplers" and r["method"] in PLOTTED and "fd-lenet" in r
    ]
    plot_quality_vs_nfe(records, path, metrics=["FID", "fd-lenet"],
                        title="Shipped MNIST U-ViT, 10k samples per point")  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples-dir", default=None, help="gather its rows (else: re-render)")
    p.add_argument("--out", default="results/mnist_10k", help="the study folder")
    p.add_argument("--notes", nargs="*", default=[], help="markdown files to include")
    p.add_argument("--merge-eval", nargs="*", default=[], help="difflab eval JSON files")
    p.add_argument("--extra-rows", nargs="*", default=[],
                   help="other samples folders (or their rows.json) whose student rows join "
                   "the report")  # fmt: skip
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.samples_dir:
        phase_report(args)
    else:
        write_report(args.out, report_text(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
