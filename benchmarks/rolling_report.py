"""The report of `results/rolling` (Rolling Diffusion), rendered from its `results.json` alone:
the exact-Gaussian table (`rolling_exact.py`), the solver checks (`rolling_solver.py`) and the
Kolmogorov comparison (`rolling_kolmogorov.py`).

    python benchmarks/rolling_report.py
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import RESULTS, fmt_sig, markdown_table, read_json, write_report

METRICS = (
    ("mse_lead1", "MSE lead 1", "lower"),
    ("mse_lead8", "MSE lead 8", "lower"),
    ("corr_lead8", "corr. lead 8", "higher"),
    ("spectrum_log_error", "spectrum log-error", "lower"),
    ("histogram_w1", "histogram W1", "lower"),
    ("enstrophy_drift", "enstrophy drift", "closer to 0"),
    ("stable_fraction", "stable", "higher"),
)


def _flat(row: dict) -> dict:
    out = dict(row)
    out["mse_lead1"], out["mse_lead8"] = row["mse_by_lead"][0], row["mse_by_lead"][-1]
    out["corr_lead8"] = row["corr_by_lead"][-1]
    return out


def exact_section(exact: dict) -> list[str]:
    p = exact["process"]
    lines = [
        "## Exact check: a stationary Gaussian process over frames",
        "",
        f"Frames {p['shape'][1]}x{p['shape'][2]}, every pixel AR(1) in time with rho = {p['rho']}, "
        f"spatial spectrum exponent {p['power']}; exact denoiser `E[x | z]` "
        f"(`GaussianFrames`). {exact['batch']} rollouts of {exact['frames']} frames after "
        f"{exact['context']} context frame(s), window {exact['window']}, {exact['schedule']}, "
        f"seed {exact['seed']}. Errors are of the whitened moments in the DCT basis: mean "
        "per-frame variance (target 1; `last 16`: the last 16 frames) and lag-k correlation "
        f"(target rho^k). Monte Carlo standard deviation of a per-frame variance: "
        f"{exact['monte_carlo_std_variance']:.4f} ({exact['samples_per_frame']} samples).",
        "",
    ]
    rows = []
    for r in exact["rows"]:
        rows.append([
            r["sampler"], r["steps_per_frame"], r["nfe"], f"{r['variance_error']:+.4f}",
            f"{r['variance_error_last16']:+.4f}", f"{r['lag1_error']:+.4f}",
            f"{r['lag4_error']:+.4f}", f"{r['lag8_error']:+.4f}",
        ])  # fmt: skip
    header = ["sampler", "steps/frame", "NFE", "variance", "variance last 16", "lag 1",
              "lag 4", "lag 8"]  # fmt: skip
    lines += markdown_table(header, rows, "llrrrrrr")
    by = {}
    for r in exact["rows"]:
        by.setdefault(r["sampler"], []).append(r)
    lines.append("")
    for name, rs in by.items():
        first, last = rs[0], rs[-1]
        lines.append(
            f"- {name}: the variance error falls from {first['variance_error']:+.4f} at "
            f"{first['steps_per_frame']} step(s) per frame to {last['variance_error']:+.4f} at "
            f"{last['steps_per_frame']}, the lag-1 error from {first['lag1_error']:+.4f} to "
            f"{last['lag1_error']:+.4f}."
        )
    return [*lines, ""]


def solver_section(s: dict) -> list[str]:
    p, d = s["params"], s["data"]
    cut = p["resolution"] // 3
    fine = s["fine"]
    fine_cut = fine["resolution"] // 3
    return [
        "## The Kolmogorov-flow solver",
        "",
        f"Vorticity form on [0, 2pi]^2, forcing sin({p['forcing_wavenumber']} y) on the "
        f"x-velocity, drag {p['drag']}, viscosity {p['viscosity']}, {p['resolution']}x"
        f"{p['resolution']} grid, dt {p['dt']}, integrating-factor RK4 with 2/3 dealiasing. "
        f"Data set: {d['num_trajectories']} trajectories of {d['num_frames']} frames every "
        f"{d['frame_dt']} time units after a spin-up of {d['spinup']}, downsampled spectrally "
        f"to {d['frame_resolution']}x{d['frame_resolution']} ({s['generation_seconds']:.0f} s "
        "on one CPU core).",
        "",
        f"- Energy balance over all stored frames: injection {s['mean_injection']:.4f}, "
        f"dissipation {s['mean_dissipation']:.4f} (relative difference "
        f"{s['balance_relative']:.1e}; per trajectory "
        f"{min(s['balance_by_trajectory']):+.3f} to {max(s['balance_by_trajectory']):+.3f}).",
        f"- Budget identity over {s['budget']['time']:g} time units: the energy change and the "
        "integral of injection - viscous - drag agree to a relative "
        f"{s['budget']['relative_residual']:.1e} of the integrated magnitudes.",
        f"- Mean energy {s['mean_energy']:.3f}, enstrophy {s['mean_enstrophy']:.3f}.",
        f"- Spectrum slope (least squares in log-log): {s['slope_5_20']:.2f} over k = 5..20, "
        f"{s[f'slope_5_{cut}']:.2f} over k = 5..{cut} at {p['resolution']}^2; at "
        f"{fine['resolution']}^2 (dt {fine['dt']}) {fine['slope_5_20']:.2f} over k = 5..20 and "
        f"{fine[f'slope_5_{fine_cut}']:.2f} over k = 5..{fine_cut}, mean energy "
        f"{fine['energy']:.3f} against {s['same_grid']['energy']:.3f} on the data set's grid "
        "(same seed, time-averaged over 10 units).",
        "",
    ]


def kolmogorov_section(k: dict) -> list[str]:
    rows = [_flat(r) for r in k["rows"]]
    lines = [
        "## Kolmogorov flow: rolling vs block diffusion",
        "",
        f"{k['num']} test clips, {k['context']} context frames, window {k['window']}, rollouts "
        f"of {k['frames']} frames with {k['steps_per_frame']} denoiser calls per frame for both "
        f"methods (the rolling init sweep adds {(k['window'] - 1) * k['steps_per_frame']} calls "
        f"per rollout), sampling seed {k['sample_seed']}. Same net, data, batch and training "
        "steps for both. MSE/correlation: against the true trajectory at lead 1 and "
        f"{k['short_horizon']}. Long-horizon statistics over the second half of each rollout "
        "against all solver frames: mean |log E(k)| error of the energy spectrum, Wasserstein-1 "
        "distance of the vorticity values, enstrophy relative to the solver's. Stable: share of "
        f"rollouts that stay finite with |omega| < {k['bound']} (normalised units).",
        "",
    ]
    header = ["method", "train seed", "NFE/rollout", *[m[1] for m in METRICS]]
    table = [
        [r["method"], r["train_seed"], r["nfe_per_rollout"], *[fmt_sig(r[m[0]]) for m in METRICS]]
        for r in rows
    ]
    for name in ("persistence", "truth"):
        b = _flat({**k["baselines"][name], "method": name})
        table.append([name, "-", "-", *[fmt_sig(b[m[0]]) for m in METRICS]])
    lines += markdown_table(header, table, "lrr" + "r" * len(METRICS))
    lines += ["", "Mean over training seeds (min..max):", ""]
    summary, methods = [], sorted({r["method"] for r in rows}, reverse=True)
    for name in methods:
        rs = [r for r in rows if r["method"] == name]
        cells = []
        for key, _, _ in METRICS:
            values = [r[key] for r in rs]
            cells.append(f"{fmt_sig(statistics.fmean(values))} ({fmt_sig(min(values))}.."
                         f"{fmt_sig(max(values))})")  # fmt: skip
        summary.append([name, len(rs), *cells])
    lines += markdown_table(["method", "seeds", *[m[1] for m in METRICS]], summary,
                            "lr" + "r" * len(METRICS))  # fmt: skip
    lines += ["", *verdicts(rows, methods), *against_persistence(rows, k), ""]
    lines += [
        "Truth (top), rolling, block: every few frames of the first rollout "
        "([kolmogorov_strip.png](kolmogorov_strip.png)), and the same as an animation "
        "([kolmogorov_rollout.gif](kolmogorov_rollout.gif)).",
        "",
        "![strip](kolmogorov_strip.png)",
        "",
    ]
    return lines


def verdicts(rows: list[dict], methods: list[str]) -> list[str]:
    """Per metric: which method is better, and whether the seed ranges overlap."""
    if set(methods) != {"rolling", "block"}:
        return []
    out = []
    for key, label, better in METRICS:
        r = [x[key] for x in rows if x["method"] == "rolling"]
        b = [x[key] for x in rows if x["method"] == "block"]
        if better == "closer to 0":
            r, b = [abs(v) for v in r], [abs(v) for v in b]
        sign = -1 if better == "higher" else 1
        rm, bm = statistics.fmean(r), statistics.fmean(b)
        if rm == bm:
            out.append(f"- {label}: tie.")
            continue
        winner = "rolling" if sign * (rm - bm) < 0 else "block"
        w, lose = (r, b) if winner == "rolling" else (b, r)
        beyond = max(w) < min(lose) if sign > 0 else min(w) > max(lose)
        spread = "beyond the seed spread" if beyond else "within the seed spread"
        if min(len(r), len(b)) < 2:
            spread = "one seed: no spread to compare with"
        out.append(f"- {label}: {winner} is better on the mean ({fmt_sig(rm)} rolling, "
                   f"{fmt_sig(bm)} block), {spread}.")  # fmt: skip
    return out


def against_persistence(rows: list[dict], k: dict) -> list[str]:
    """How many runs beat persisting the last context frame, per metric that has a direction."""
    base = _flat(k["baselines"]["persistence"])
    out = []
    for key, label, better in METRICS[:-1]:
        value = abs(base[key]) if better == "closer to 0" else base[key]
        sign = -1 if better == "higher" else 1
        wins = sum(sign * ((abs(r[key]) if better == "closer to 0" else r[key]) - value) < 0
                   for r in rows)  # fmt: skip
        out.append(f"{label} {wins}/{len(rows)}")
    return [f"- Runs that beat persistence (the last context frame repeated): {', '.join(out)}."]


def report_text(folder: Path) -> str:
    data = read_json(Path(folder) / "results.json", {})
    lines = [
        "# Rolling Diffusion: exact check, solver, Kolmogorov flow",
        "",
        "Rolling Diffusion (sliding window, one noise level per frame) against standard block "
        "diffusion at equal denoiser calls per frame; method and derivation in "
        "[docs/methods/rolling.md](../../docs/methods/rolling.md). Commands in "
        "[manifest.json](manifest.json), raw numbers in [results.json](results.json).",
        "",
    ]
    if "exact" in data:
        lines += exact_section(data["exact"])
    if "solver" in data:
        lines += solver_section(data["solver"])
    if "kolmogorov" in data:
        lines += kolmogorov_section(data["kolmogorov"])
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(RESULTS / "rolling"))
    args = p.parse_args(argv)
    write_report(args.out, report_text(Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
