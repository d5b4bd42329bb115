"""Dual-Rate Diffusion on MNIST: fd-lenet against GFLOPs per sample, the single-rate baseline at
several step counts against the dual-rate model at several step counts and refresh rates K.

    python benchmarks/dual_rate_frontier.py --baseline runs/dual_rate/mnist_baseline \
        --dual runs/dual_rate/mnist --baseline-steps 4 8 16 32 64 --dual-steps 8 16 32 64 \
        --refresh 1 2 4 8 --num 1000 --seeds 0 --out results/dual_rate

Both models sample ancestrally on the uniform-t grid (the baseline with `ddpm`, the dual-rate
model with `dual_rate_ddpm`, whose K = 1 is `ddpm` on the composed net). GFLOPs per sample are
counted from shapes (`difflab.nets.cost`: matmuls, convolutions and attention's two matmuls;
the dual-rate model's encoder and light calls priced apart). Each row is stored as soon as it is
scored, so a stopped run loses one row at most and a rerun skips stored rows. fd-lenet is a
Frechet distance in difflab's MNIST LeNet features (not FID), against MNIST-test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import (
    MANIFEST,
    RAW,
    command_line,
    fmt_sig,
    machine,
    markdown_table,
    read_json,
    record_run,
    study_folder,
    update_results,
    utc_now,
    write_report,
)

PLOT = "frontier.png"


def model_record(path: str) -> dict:
    """Parameters, FLOPs per call and training compute of the model at `path`."""
    from difflab import api
    from difflab.nets.cost import count_parameters, forward_costs

    model = api.load(path)
    cfg = model.config
    costs = forward_costs(model.net)
    step = int(model.source.get("step") or cfg.train.steps)  # the checkpoint's, not the plan's
    images = step * cfg.data.batch_size
    metrics = Path(path) / "metrics.jsonl"
    seconds = None
    if metrics.is_file():
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        rates = [r["images_per_s"] for r in lines if "images_per_s" in r]
        seconds = round(images / (sum(rates) / len(rates)), 1) if rates else None
    return {
        "path": path,
        "net": cfg.model.name,
        "method": cfg.method.name,
        "parameters": count_parameters(model.net),
        "mflops_per_call": {k: round(v / 1e6, 4) for k, v in costs.items()},
        "train_steps": step,
        "batch": cfg.data.batch_size,
        # forward + backward ~ 3 forwards of the composed net (encoder + light for dual-rate)
        "train_pflops": round(3 * costs["forward"] * images / 1e15, 5),
        "train_seconds_est": seconds,
    }


def row_key(model: str, steps: int, k: int | None, seed: int) -> str:
    return f"{model}|{steps}|{k or '-'}|{seed}"


def score_row(path: str, sampler: str, steps: int, options: dict, num: int, seed: int) -> dict:
    from difflab import api
    from difflab.eval.scores import feature_metrics

    model = api.load(path)
    gen = api.sample(model, num=num, sampler=sampler, steps=steps, options=options, seed=seed,
                     progress=False)  # fmt: skip
    cost = api.sample_cost(model, gen)
    row = {"sampler": sampler, "steps": steps, **options, "seed": seed, "num": num, **cost}
    row["sampling_seconds"] = round(gen.seconds, 1)
    row.update(feature_metrics(gen.samples, ["fd-lenet"], ref_num=10_000))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="run dir of the single-rate baseline")
    p.add_argument("--dual", required=True, help="run dir of the dual-rate model")
    p.add_argument("--baseline-steps", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--dual-steps", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--refresh", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/dual_rate", help="the study folder")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    folder = study_folder(a.out)
    stored = read_json(folder / RAW, {}) or {}
    rows = dict(stored.get("frontier", {}))
    models = {"baseline": model_record(a.baseline), "dual_rate": model_record(a.dual)}
    m = machine()
    update_results(folder, {"models": {**stored.get("models", {}), **models}, "setup": {
        "num_samples": a.num, "seeds": a.seeds, "reference": "mnist/test (10k)",
        "grid": "uniform_t", "machine": f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}",
        "date": utc_now()}})  # fmt: skip
    plan = [("baseline", a.baseline, "ddpm", s, None) for s in a.baseline_steps]
    plan += [("dual_rate", a.dual, "dual_rate_ddpm", s, k) for s in a.dual_steps for k in a.refresh]
    start = time.time()
    for seed in a.seeds:
        for name, path, sampler, steps, k in plan:
            key = row_key(name, steps, k, seed)
            if key in rows:
                continue
            options = {} if k is None else {"refresh_every": k}
            row = {"model": name, **score_row(path, sampler, steps, options, a.num, seed)}
            rows[key] = row
            update_results(folder, {"frontier": rows})
            print(json.dumps(row), f"({time.time() - start:.0f} s)", flush=True)
    data = read_json(folder / RAW)
    plot(folder, data)
    write_report(folder, report_text(folder))
    record_run(folder, command_line())


# --------------------------------------------------------------------------- analysis


def mean_rows(rows: dict) -> list[dict]:
    """Rows averaged over seeds: `fd` (mean), `fd_spread` (max - min), `gflops`."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows.values():
        groups.setdefault((r["model"], r["steps"], r.get("refresh_every")), []).append(r)
    out = []
    for (model, steps, k), rs in groups.items():
        fds = [r["fd-lenet"] for r in rs]
        out.append({"model": model, "steps": steps, "K": k, "gflops": rs[0]["gflops_per_sample"],
                    "calls": rs[0]["calls"], "fd": sum(fds) / len(fds),
                    "fd_spread": max(fds) - min(fds), "seeds": len(rs)})  # fmt: skip
    return sorted(out, key=lambda r: (r["model"], r["gflops"]))


def savings(means: list[dict]) -> list[dict]:
    """For each baseline row: the cheapest dual-rate row at least as good (fd no higher, within
    the larger seed spread of the two rows), and the FLOPs ratio."""
    base = [r for r in means if r["model"] == "baseline"]
    dual = [r for r in means if r["model"] == "dual_rate"]
    out = []
    for b in base:
        ok = [d for d in dual if d["fd"] <= b["fd"] + max(b["fd_spread"], d["fd_spread"])]
        best = min(ok, key=lambda d: d["gflops"]) if ok else None
        out.append({"baseline": b, "dual": best,
                    "ratio": b["gflops"] / best["gflops"] if best else None})  # fmt: skip
    return out


def reuse_savings(means: list[dict]) -> list[dict]:
    """Within the dual-rate model: for each `K = 1` row (the composed net at every step), the
    cheapest row with `K > 1` (any step count) whose fd-lenet is no higher (within the larger
    seed spread), and the FLOPs ratio: what feature reuse alone saves."""
    dual = [r for r in means if r["model"] == "dual_rate"]
    out = []
    for b in (r for r in dual if r["K"] == 1):
        ok = [
            d
            for d in dual
            if d["K"] != 1 and d["fd"] <= b["fd"] + max(b["fd_spread"], d["fd_spread"])
        ]
        best = min(ok, key=lambda d: d["gflops"]) if ok else None
        out.append({"baseline": b, "dual": best,
                    "ratio": b["gflops"] / best["gflops"] if best else None})  # fmt: skip
    return out


def plot(folder: Path, data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = mean_rows(data["frontier"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    base = sorted((r for r in means if r["model"] == "baseline"), key=lambda r: r["gflops"])
    ax.plot([r["gflops"] for r in base], [r["fd"] for r in base], "k-o", label="baseline (ddpm)")
    for r in base:
        ax.annotate(str(r["steps"]), (r["gflops"], r["fd"]), fontsize=7)
    ks = sorted({r["K"] for r in means if r["model"] == "dual_rate"})
    for k in ks:
        rs = sorted((r for r in means if r["model"] == "dual_rate" and r["K"] == k),
                    key=lambda r: r["gflops"])  # fmt: skip
        ax.plot([r["gflops"] for r in rs], [r["fd"] for r in rs], "-s", label=f"dual-rate K={k}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("GFLOPs per sample")
    ax.set_ylabel("fd-lenet (lower is better)")
    ax.set_title("MNIST: quality vs sampling compute (labels: baseline steps)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / PLOT, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- the report


def report_text(folder: Path) -> str:
    data = read_json(Path(folder) / RAW)
    setup, models = data["setup"], data["models"]
    lines = [
        "# Dual-Rate Diffusion on MNIST: fd-lenet against sampling FLOPs",
        "",
        "Question: at equal sample quality, how many fewer FLOPs per sample does the dual-rate "
        "model (heavy encoder every K steps, light denoiser every step) need than the "
        "single-rate baseline of the same encoder, trained with the same training FLOPs?",
        "",
        f"- samples per row: {setup['num_samples']}, seeds {setup['seeds']}; fd-lenet = Frechet "
        f"distance in difflab's MNIST LeNet features (not FID) against {setup['reference']}",
        f"- grid: {setup['grid']}; baseline `ddpm`, dual-rate `dual_rate_ddpm --refresh-every K`",
        "- GFLOPs per sample counted from shapes (`difflab.nets.cost`): matmuls, convolutions, "
        "attention's two matmuls; a multiply-add is 2 FLOPs",
        f"- machine: {setup['machine']}; date {setup['date']}",
        "",
        "## Models",
        "",
    ]
    cells = []
    for name, m in models.items():
        calls = ", ".join(f"{k} {v:g}" for k, v in m["mflops_per_call"].items())
        cells.append([name, m["net"], f"{m['parameters']:,}", calls, m["train_steps"],
                      m["batch"], fmt_sig(m["train_pflops"], 3),
                      m["train_seconds_est"] or "-"])  # fmt: skip
    lines += markdown_table(
        ["model", "net", "parameters", "MFLOPs per call", "train steps", "batch",
         "train PFLOPs", "train s (est.)"], cells, "lllrrrrr")  # fmt: skip
    means = mean_rows(data["frontier"])
    lines += ["", f"## Frontier ([{PLOT}]({PLOT}))", ""]
    cells = []
    for r in sorted(means, key=lambda r: r["gflops"]):
        calls = ", ".join(f"{k} {v}" for k, v in r["calls"].items())
        spread = f" ± {r['fd_spread'] / 2:.2f}" if r["seeds"] > 1 else ""
        cells.append([r["model"], r["steps"], r["K"] or "-", calls, f"{r['gflops']:.4f}",
                      f"{r['fd']:.2f}{spread}"])  # fmt: skip
    lines += markdown_table(
        ["model", "steps", "K", "calls per sample", "GFLOPs/sample", "fd-lenet"], cells, "lrrlrr"
    )
    lines += ["", "## FLOPs at equal quality", "",
              "For each baseline row, the cheapest dual-rate row whose fd-lenet is no higher "
              "(within the larger seed spread of the two):", ""]  # fmt: skip
    cells = []
    for s in savings(means):
        b, d = s["baseline"], s["dual"]
        dual = f"{d['steps']} steps, K={d['K']} ({d['fd']:.2f})" if d else "none"
        ratio = f"{s['ratio']:.2f}x" if s["ratio"] else "-"
        gflops = f"{d['gflops']:.4f}" if d else "-"
        cells.append([b["steps"], f"{b['fd']:.2f}", f"{b['gflops']:.4f}", dual, gflops, ratio])
    lines += markdown_table(
        ["baseline steps", "baseline fd", "baseline GFLOPs", "dual-rate row (fd)",
         "dual GFLOPs", "FLOPs saved"], cells, "rrrlrr")  # fmt: skip
    lines += ["", "## FLOPs saved by feature reuse alone", "",
              "For each dual-rate row at K = 1 (the composed net at every step), the cheapest "
              "dual-rate row with K > 1 whose fd-lenet is no higher:", ""]  # fmt: skip
    cells = []
    for s in reuse_savings(means):
        b, d = s["baseline"], s["dual"]
        row = f"{d['steps']} steps, K={d['K']} ({d['fd']:.2f})" if d else "none"
        ratio = f"{s['ratio']:.2f}x" if s["ratio"] else "-"
        gflops = f"{d['gflops']:.4f}" if d else "-"
        cells.append([b["steps"], f"{b['fd']:.2f}", f"{b['gflops']:.4f}", row, gflops, ratio])
    lines += markdown_table(
        ["K=1 steps", "K=1 fd", "K=1 GFLOPs", "K>1 row (fd)", "GFLOPs", "FLOPs saved"],
        cells, "rrrlrr")  # fmt: skip
    for key in ("heldout_loss", "ablations", "students", "notes"):
        if key in data:
            lines += render_extra(key, data[key])
    manifest = read_json(Path(folder) / MANIFEST, {}) or {}
    commands = [run["command"] for run in manifest.get("runs", [])]
    if commands:
        lines += ["", "## Commands", "", "Training (CPU):", "",
                  "    difflab train configs/dual_rate_mnist_baseline.yaml",
                  "    difflab train configs/dual_rate_mnist.yaml", "",
                  "Measurements (`manifest.json` has commit, machine and date of each):", "",
                  *(f"    {c}" for c in commands)]  # fmt: skip
    return "\n".join(lines) + "\n"


def render_extra(key: str, value) -> list[str]:
    if key == "notes":
        return ["", "## Notes", "", *value]
    if key == "heldout_loss":
        times = value["times"]
        lines = ["", "## Held-out loss at fixed levels", "",
                 f"Each model's training loss on the first {value['num']} MNIST-test images, the "
                 "same noise for all (`benchmarks/dual_rate_loss.py`; the dual-rate net composed, "
                 "tau = t):", ""]  # fmt: skip
        cells = [[name, *(f"{v:.5f}" for v in m["loss"])] for name, m in value["models"].items()]
        lines += markdown_table(["model", *(f"t = {t}" for t in times)], cells,
                                "l" + "r" * len(times))  # fmt: skip
        return lines
    if key == "ablations":
        intro = ("Each a retrained `configs/dual_rate_mnist.yaml` with the overrides shown "
                 "(`main`: the model of the frontier), sampled with `dual_rate_ddpm`:")  # fmt: skip
        lines = ["", "## Ablations", "", intro, ""]
        cells = []
        for name, entry in value.items():
            m = entry["model"]
            overrides = " ".join(f"`{o}`" for o in entry["overrides"]) or "-"
            for r in sorted(entry["rows"].values(), key=lambda r: (r["steps"], r["refresh_every"])):
                cells.append([name, overrides, f"{m['parameters']:,}",
                              fmt_sig(m["train_pflops"], 3), r["steps"], r["refresh_every"],
                              f"{r['gflops_per_sample']:.4f}", f"{r['fd-lenet']:.2f}"])  # fmt: skip
        lines += markdown_table(
            ["ablation", "overrides", "parameters", "train PFLOPs", "steps", "K",
             "GFLOPs/sample", "fd-lenet"], cells, "llrrrrrr")  # fmt: skip
        return lines
    lines = ["", "## 8-step MMD students", ""]
    cells = []
    for key, r in value.items():
        calls = ", ".join(f"{k} {v}" for k, v in r["calls"].items())
        cells.append([key.split("|")[0], r["teacher"], r["train_steps"], r["sampler"],
                      r.get("refresh_every", "-"), calls, f"{r['gflops_per_sample']:.4f}",
                      f"{r['fd-lenet']:.2f}"])  # fmt: skip
    lines += markdown_table(
        ["student", "teacher", "distill steps", "sampler", "K", "calls per sample",
         "GFLOPs/sample", "fd-lenet"], cells, "llrlrlrr")  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
