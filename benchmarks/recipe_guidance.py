"""Guidance interval (issue 15; Kynkaanniemi et al. 2024, used by SiD2): does classifier-free
guidance applied only inside a logsnr interval beat guidance at every level, over the weight?

For each weight `w` in `--weights`, class-conditional samples (labels cycled 0..9, the same
noise seed for every row) are drawn twice with `difflab.api.sample`: guidance at every level
(`full`) and guidance only for logsnr in `--interval` (`interval`); `w = 0` is guidance off,
one set of samples for both curves. Each row is scored with fd-lenet (a Frechet distance in
difflab's MNIST LeNet features, not FID), precision/recall in the same features (k = 3, as many
real test images as samples), the background-haze share and, with `--fid`, Inception FID
(`difflab[fid]`). Rows are stored as they finish in `<out>/results.json`; re-running the same
command skips finished rows.

    python benchmarks/recipe_guidance.py --num 500 --steps 16           # the shipped model
    python benchmarks/recipe_guidance.py --model runs/mnist_uvit --interval=-3.38,2.55
    python benchmarks/recipe_guidance.py --report results/recipe/guidance   # re-render

The default interval is the paper's EDM2 interval `sigma in (0.28, 5.42]` in logsnr units,
`logsnr = -2 log sigma` (docs/methods/recipe.md, "Guidance interval"). Give `--interval` with
`=` (`--interval=-3.38,2.55`): a value that starts with `-` is otherwise read as an option.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from common import (
    RAW,
    ROOT,
    command_line,
    fmt_sig,
    locked_update,
    machine,
    markdown_table,
    read_json,
    record_run,
    write_report,
)

PAPER_SIGMA = (0.28, 5.42)
"""The guidance interval `(sigma_lo, sigma_hi]` of Kynkaanniemi et al. (2024) for EDM2-S on
ImageNet-512, in EDM's noise levels (data std `sigma_data = 0.5`)."""
DEFAULT_INTERVAL = (
    round(-2 * math.log(PAPER_SIGMA[1]), 2),
    round(-2 * math.log(PAPER_SIGMA[0]), 2),
)
"""`PAPER_SIGMA` as logsnr, `-2 log sigma`: (-3.38, 2.55)."""
MODES = ("full", "interval")
DATASET = "mnist"
METRICS = ("fd-lenet", "pr-lenet", "haze")
SHOWN = {
    "fd-lenet": "fd-lenet",
    "pr-lenet_precision": "precision",
    "pr-lenet_recall": "recall",
    "haze": "haze",
    "fid": "FID",
}
"""Stored metric -> its column in the report."""
PLOT = "guidance.png"
SETUP_KEYS = ("model_sha256", "sampler", "steps", "num", "seed", "interval")
"""Settings every stored row shares: a run with other values needs another `--out`."""


def row_key(mode: str, weight: float) -> str:
    return f"{mode}/w{weight:g}"


def parse_weights(text: str) -> list[float]:
    """`"0,0.5,1"` -> `[0.0, 0.5, 1.0]` (finite, non-negative, no duplicates)."""
    try:
        weights = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--weights must be comma-separated numbers, got {text!r}") from None
    if not weights or any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"--weights must be finite numbers >= 0, got {text!r}")
    if len(set(weights)) != len(weights):
        raise ValueError(f"--weights has duplicates: {text!r}")
    return weights


def parse_interval(text: str) -> tuple[float, float]:
    """`"-3.38,2.55"` -> `(-3.38, 2.55)` (logsnr, `lo < hi`)."""
    try:
        lo, hi = (float(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"--interval must be LO,HI in logsnr, got {text!r}") from None
    if not lo < hi:
        raise ValueError(f"--interval must satisfy LO < HI, got {text!r}")
    return lo, hi


def draw(model, weight: float, mode: str, interval, *, num: int, sampler: str, steps: int,
         seed: int, batch_size: int = 500):  # fmt: skip
    """The `Generation` of one row: guidance `weight` everywhere (`full`) or inside
    `interval` (`interval`); `weight = 0` samples the conditional model alone in both modes."""
    from difflab.api import sample

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    kwargs = {"guidance": weight} if weight else {}
    if weight and mode == "interval":
        kwargs["interval"] = tuple(interval)
    return sample(model, num=num, sampler=sampler, steps=steps, seed=seed,
                  batch_size=batch_size, progress=False, **kwargs)  # fmt: skip


def levels_inside(model, sampler: str, steps: int, interval) -> int:
    """How many of the sampler's `steps` evaluation levels (its grid without the final level)
    lie inside the logsnr `interval`: the steps where the interval rows are guided."""
    from difflab.sampling import default_grid

    levels = default_grid(sampler, model.schedule, steps)[:-1]
    return int(((levels >= interval[0]) & (levels <= interval[1])).sum())


def shown_path(path) -> str:
    """`path` relative to the repository when inside it (the report names the file)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def check_setup(stored: dict, setup: dict, folder: Path) -> None:
    """Rows made with other settings cannot share a table: name the first key that differs."""
    for key in SETUP_KEYS:
        if key in stored and stored[key] != setup[key]:
            raise SystemExit(
                f"recipe_guidance.py: error: {folder / RAW} was made with {key}="
                f"{stored[key]!r}, this run has {setup[key]!r}: use another --out (or delete "
                "the folder to start over)"
            )


def save_rows(folder: Path, rows: dict) -> dict:
    def merge(mine: dict, stored: dict) -> dict:
        return {**stored, "rows": {**stored.get("rows", {}), **mine}}

    return locked_update(folder / RAW, rows, merge)


def update_key(folder: Path, key: str, value) -> dict:
    return locked_update(folder / RAW, {key: value}, lambda mine, stored: {**stored, **mine})


def run(args) -> int:
    import torch

    from difflab.api import load, shipped_model_path
    from difflab.eval.reference import reference_images
    from difflab.eval.scores import FeatureScorer

    torch.set_num_threads(args.threads)
    folder, weights, interval = Path(args.out), args.weights, args.interval
    path = args.model or shipped_model_path()
    model = load(path, device=args.device)
    if model.num_classes == 0:
        raise SystemExit(
            f"recipe_guidance.py: error: --model {path}: guidance needs a class-conditional model"
        )
    setup = {
        "model": shown_path(path),
        "model_sha256": model.source.get("sha256"),
        "sampler": args.sampler,
        "steps": args.steps,
        "num": args.num,
        "seed": args.seed,
        "interval": list(interval),
        "paper_sigma": list(PAPER_SIGMA),
        "levels_inside": levels_inside(model, args.sampler, args.steps, interval),
        "dataset": DATASET,
    }
    data = read_json(folder / RAW, {})
    check_setup(data.get("setup", {}), setup, folder)
    stored_setup = data.get("setup", {})
    setup["weights"] = sorted({*stored_setup.get("weights", []), *weights})
    setup["machines"] = {
        **stored_setup.get("machines", {}),
        args.machine_name: machine(args.device),
    }
    update_key(folder, "setup", setup)
    metrics = [*METRICS, *(["fid"] if args.fid else [])]
    scorer = FeatureScorer(metrics, dataset=DATASET, split="test", ref_num=args.num,
                           device=model.device)  # fmt: skip
    scorer.check_shape(model.shape, f"samples of {path}")
    if "real" not in data or (args.fid and "fid" not in data["real"]):
        real = reference_images(DATASET, "train", args.num)
        update_key(folder, "real", {"num": len(real), **scorer(real)})
    for weight in weights:
        modes = MODES if weight else MODES[:1]
        for mode in modes:
            key = row_key(mode, weight)
            done = read_json(folder / RAW, {}).get("rows", {}).get(key, {})
            if "fd-lenet" in done and (not args.fid or "fid" in done):
                print(f"{key}: done, skipped", flush=True)
                continue
            gen = draw(model, weight, mode, interval, num=args.num, sampler=args.sampler,
                       steps=args.steps, seed=args.seed, batch_size=args.batch)  # fmt: skip
            start = time.perf_counter()
            rec = {"mode": mode, "weight": weight, "nfe": gen.nfe,
                   "sampling_seconds": round(gen.seconds, 2), **scorer(gen.samples)}  # fmt: skip
            rec["scoring_seconds"] = round(time.perf_counter() - start, 2)
            rec["machine"] = args.machine_name
            rows = {key: rec}
            if not weight:  # guidance off: the same samples serve the interval curve
                rows[row_key("interval", weight)] = {**rec, "mode": "interval", "same_as": key}
            save_rows(folder, rows)
            print(f"{key}: " + ", ".join(f"{SHOWN[k]}={fmt_sig(rec[k], 4)}"
                                         for k in SHOWN if k in rec), flush=True)  # fmt: skip
    record_run(folder, command_line(args.argv, "benchmarks/recipe_guidance.py"), args.device)
    plot(folder, read_json(folder / RAW))
    write_report(folder, report_text(folder))
    return 0


# --------------------------------------------------------------------------- plot and report
def curves(rows: dict) -> dict[str, list[dict]]:
    """`{mode: rows sorted by weight}`."""
    out: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for rec in rows.values():
        out[rec["mode"]].append(rec)
    return {mode: sorted(recs, key=lambda r: r["weight"]) for mode, recs in out.items() if recs}


def plot(folder: Path, data: dict) -> Path | None:
    """fd-lenet (and FID when scored) and precision/recall against the weight, one curve per
    mode, the real-data floor dotted; None (nothing written) before the first row."""
    if not data.get("rows"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_mode, real = curves(data.get("rows", {})), data.get("real", {})
    distances = [
        m for m in ("fd-lenet", "fid") if any(m in r for rs in by_mode.values() for r in rs)
    ]
    fig, axes = plt.subplots(1, len(distances) + 1, figsize=(4.6 * (len(distances) + 1), 3.8))
    colors = {"full": "tab:blue", "interval": "tab:orange"}
    label = {"full": "guidance everywhere", "interval": "guidance in the interval"}
    for ax, metric in zip(axes, distances):
        for mode, recs in by_mode.items():
            pts = [(r["weight"], r[metric]) for r in recs if metric in r]
            ax.plot(*zip(*pts), "-o", color=colors[mode], label=label[mode])
        if metric in real:
            ax.axhline(real[metric], color="grey", ls=":", label="real train images")
        ax.set_yscale("log")
        ax.set_xlabel("guidance weight w")
        ax.set_ylabel(f"{SHOWN[metric]} (lower is better)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[-1]
    for mode, recs in by_mode.items():
        w = [r["weight"] for r in recs]
        ax.plot(w, [r["pr-lenet_precision"] for r in recs], "-o", color=colors[mode],
                label=f"precision, {mode}")  # fmt: skip
        ax.plot(w, [r["pr-lenet_recall"] for r in recs], "--s", color=colors[mode],
                label=f"recall, {mode}")  # fmt: skip
    ax.set_xlabel("guidance weight w")
    ax.set_ylabel("precision / recall (LeNet features)")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    setup = data.get("setup", {})
    fig.suptitle(f"MNIST guidance: {setup.get('sampler')}, {setup.get('steps')} steps, "
                 f"{setup.get('num')} samples, interval logsnr {setup.get('interval')}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    out = Path(folder) / PLOT
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def report_text(folder: str | Path) -> str:
    data = read_json(Path(folder) / RAW, {})
    setup, rows, real = data.get("setup", {}), data.get("rows", {}), data.get("real", {})
    lo, hi = setup.get("interval", DEFAULT_INTERVAL)
    sig_lo, sig_hi = setup.get("paper_sigma", PAPER_SIGMA)
    lines = [
        "# Guidance interval: class-conditional MNIST, guidance weight with and without the "
        "interval",
        "",
        f"Model `{setup.get('model')}` (sha256 `{str(setup.get('model_sha256'))[:16]}`); "
        f"{setup.get('num')} samples per row, labels cycled 0..9, sampler "
        f"`{setup.get('sampler')}` with {setup.get('steps')} steps (guidance doubles the "
        f"network evaluations: NFE column), noise seed {setup.get('seed')} for every row. "
        f"`full`: `x_cond + w (x_cond - x_uncond)` at every level; `interval`: only for logsnr "
        f"in [{lo:g}, {hi:g}] (the paper's sigma in ({sig_lo:g}, {sig_hi:g}], "
        f"`logsnr = -2 log sigma`; docs/methods/recipe.md), the conditional prediction "
        f"elsewhere; {setup.get('levels_inside')} of the {setup.get('steps')} sampler levels "
        "lie inside it. `w = 0` is guidance off: one set of samples for both modes.",
        "",
        "fd-lenet: Frechet distance in difflab's MNIST LeNet features against the 10k test "
        "images, not FID; precision/recall: k-NN manifolds (k = 3) in the same features, "
        "against as many test images as samples; haze: share of the outer 4-pixel border that "
        "is not black (`difflab.eval.image_stats.haze_share`)."
        + (
            f" FID: Inception FID of the {setup.get('num')} samples against the 10k test images "
            "(biased upwards at this sample size: read it against the real images' row)."
            if any("fid" in r for r in rows.values())
            else ""
        ),
        "",
    ]
    by_mode = curves(rows)
    if not by_mode:
        return "\n".join([*lines, "No row scored yet.", ""])
    metrics = [m for m in SHOWN if any(m in r for r in rows.values())]
    head = ["w", "mode", "NFE", *(SHOWN[m] for m in metrics)]
    table = []
    for weight in sorted({r["weight"] for r in rows.values()}):
        for mode in MODES:
            rec = rows.get(row_key(mode, weight))
            if rec is None:
                continue
            table.append([f"{weight:g}", mode, str(rec["nfe"]),
                          *(fmt_sig(rec[m], 3) if m in rec else "-" for m in metrics)])  # fmt: skip
    if real:
        table.append(["-", f"real train images ({real['num']})", "-",
                      *(fmt_sig(real[m], 3) if m in real else "-" for m in metrics)])  # fmt: skip
    lines += markdown_table(head, table, "rlr" + "r" * len(metrics))
    lines += ["", f"![fd-lenet and precision/recall against the weight]({PLOT})", ""]
    for distance in ("fd-lenet", "fid"):
        if not all(distance in r for recs in by_mode.values() for r in recs):
            continue
        lines += [f"## Best weight per mode (by {SHOWN[distance]})", ""]
        for mode, recs in by_mode.items():
            best = min(recs, key=lambda r: r[distance])
            lines.append(
                f"- `{mode}`: w = {best['weight']:g}, "
                + ", ".join(f"{SHOWN[m]} {fmt_sig(best[m])}" for m in metrics if m in best)
            )
        lines.append("")
    machines = [f"`{k}`: {v.get('gpu') or v.get('cpu')}, {v.get('cores')} cores, "
                f"{v.get('torch_threads')} torch threads, torch {v.get('torch')}"
                for k, v in setup.get("machines", {}).items()]  # fmt: skip
    lines += ["One sampling seed: differences below a few fd-lenet points are within the "
              f"spread of a {setup.get('num')}-sample estimate and are not findings.", "",
              "Machines: " + "; ".join(machines) + ".", ""]  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model file or run dir (default: shipped)")
    p.add_argument("--weights", default="0,0.5,1,2,3,4", help="guidance weights w (0 = off)")
    p.add_argument(
        "--interval",
        default=",".join(f"{v:g}" for v in DEFAULT_INTERVAL),
        help="LO,HI logsnr interval of the interval mode (write --interval=LO,HI)",
    )
    p.add_argument("--num", type=int, default=500, help="samples per row")
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="noise seed (the same for every row)")
    p.add_argument("--batch", type=int, default=500, help="sampling batch size")
    p.add_argument("--fid", action="store_true", help="also Inception FID (difflab[fid])")
    p.add_argument("--out", default="results/recipe/guidance")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--machine-name", default=None, help="label of this machine")
    p.add_argument("--report", metavar="FOLDER", help="only re-render FOLDER's README and plot")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.report:
        folder = Path(args.report)
        plot(folder, read_json(folder / RAW))
        write_report(folder, report_text(folder))
        return 0
    args.machine_name = args.machine_name or ("gpu" if args.device.startswith("cuda") else "cpu")
    try:
        args.weights, args.interval = parse_weights(args.weights), parse_interval(args.interval)
    except ValueError as err:
        p.error(str(err))
    return run(args)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
