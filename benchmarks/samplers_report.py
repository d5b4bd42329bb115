"""The samplers study's report: `README.md` and `plot.png` of a study folder, rendered from its
`results.json` alone (which the `samplers_*.py` scripts fill, each with its own keys).

    python benchmarks/samplers_report.py --out results/samplers        # re-render
    python benchmarks/samplers_report.py --out results/samplers_mnist
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from common import RAW, fmt_sig, markdown_table, read_json, study_folder, write_report

COV_VARIANTS = ("cov_ddim", "cov_ddim_table", "cov_ddim_mean_last", "cov_ddim_table_mean_last")
"""The covariance-aware rows the checkpoint targets are reported for (every one, not the best)."""


@dataclass
class Row:
    method: str
    family: str
    nfe_target: int
    steps: int
    nfe: int  # paper convention
    jvps: int
    seconds: float
    metrics: dict
    grid: str = ""

    def nfe_compute(self, jvp_cost: float) -> float:
        """NFE with each JVP charged `jvp_cost` forwards (the forward inside it included)."""
        return self.nfe + (jvp_cost - 1.0) * self.jvps


@dataclass
class View:
    """What the report needs of a `results.json`: the rows, the NFE of the main table, the
    methods that ran, the JVP cost, the floor (oracle only)."""

    kind: str  # "oracle" | "checkpoint"
    headline: str
    description: str
    rows: list[Row]
    nfes: tuple[int, ...]
    main: set[str]
    jvp_cost: float
    floor: float | None

    @classmethod
    def of(cls, report: dict) -> View:
        kind = "oracle" if "exact_samples" in report else "checkpoint"
        key = report["headline"]
        rows = [Row(**r) for r in report["rows"]]
        cost = report["jvp_cost"]["checkpoint" if kind == "checkpoint" else "uvit16"]["vs_sdpa"]
        floor = report["exact_samples"][key] if kind == "oracle" else None
        main = {r.method for r in rows}
        return cls(kind, key, report["setup"], rows, tuple(report["nfe"]), main, cost, floor)


def fmt(v: float) -> str:
    return fmt_sig(v)


def best_of(rows: list[Row], family: str, nfe: int, key: str) -> Row | None:
    pool = [r for r in rows if r.family == family and r.nfe_target == nfe]
    return min(pool, key=lambda r: r.metrics[key]) if pool else None


def targets(rows: list[Row], key: str, setup: View) -> list[str]:
    """The study's quality targets, as measured (met or missed)."""
    lines = []

    def best(family, nfe):
        return best_of(rows, family, nfe, key)

    for nfe, rule in ((8, "half"), (6, "better"), (10, "better")):
        ours, theirs = best("difflab", nfe), best("diffusers", nfe)
        if ours is None or theirs is None:
            continue
        v_o, v_t = ours.metrics[key], theirs.metrics[key]
        if rule == "half":
            ok = v_o <= 0.5 * v_t
            lines.append(
                f"NFE {nfe}: best difflab `{ours.method}` {fmt(v_o)} vs best diffusers "
                f"`{theirs.method}` {fmt(v_t)}: ratio {v_o / v_t:.2f} (target <= 0.5) "
                f"**{'met' if ok else 'missed'}**"
            )
        else:
            ok = v_o < v_t
            lines.append(
                f"NFE {nfe}: best difflab `{ours.method}` {fmt(v_o)} vs every diffusers "
                f"scheduler (best `{theirs.method}` {fmt(v_t)}) **{'met' if ok else 'missed'}**"
            )
    for nfe in (6, 8, 10):  # the second peer family, where it was run
        ours, theirs = best("difflab", nfe), best("k-diffusion", nfe)
        if ours is not None and theirs is not None:
            v_o, v_t = ours.metrics[key], theirs.metrics[key]
            verdict = "met" if v_o < v_t else "missed"
            lines.append(
                f"NFE {nfe}: best difflab `{ours.method}` {fmt(v_o)} vs every k-diffusion "
                f"sampler (best `{theirs.method}` {fmt(v_t)}) **{verdict}**"
            )
    if setup.kind == "checkpoint":  # the covariance-aware sampler vs the papers' baselines
        for nfe in (8, 10):
            for cov in COV_VARIANTS:
                mine = [r for r in rows if r.method == cov and r.nfe_target == nfe]
                rivals = [
                    r
                    for r in rows
                    if r.method in ("ddim", "heun", "dpmpp_2m", "addim") and r.nfe_target == nfe
                ]
                if not mine or not rivals:
                    continue
                best = min(rivals, key=lambda r: r.metrics[key])
                ok = mine[0].metrics[key] < best.metrics[key]
                lines.append(
                    f"NFE {nfe}: `{cov}` {fmt(mine[0].metrics[key])} vs the best of DDIM, Heun, "
                    f"DPM-Solver++, aDDIM (`{best.method}` {fmt(best.metrics[key])}) "
                    f"**{'met' if ok else 'missed'}**"
                )
    if setup.kind == "oracle":
        for name in ("cov_ddim", "ddim", "dpmpp_2m", "unipc", "diffusers_dpmpp_2m"):
            r = [x for x in rows if x.method == name and x.nfe_target == 8]
            if r:
                ratio = r[0].metrics.get("high_band_variance_ratio", math.nan)
                extra = ""
                if name == "cov_ddim":
                    verdict = "met" if abs(ratio - 1) <= 0.25 else "missed"
                    extra = f" (target within 25% of 1: **{verdict}**)"
                lines.append(f"highest-band variance ratio at NFE 8, `{name}`: {ratio:.2f}{extra}")
    return lines


def table(rows: list[Row], key: str, setup: View, jvp_cost: float) -> list[str]:
    cols = ["method", "family", "grid", "steps", "NFE", "JVPs", "NFE (compute)", key]
    # a checkpoint study scored with several feature nets: the others as extra columns
    others = sorted({m for r in rows for m in r.metrics if m.startswith("fd_") and m != key})
    cols += others
    if setup.kind == "oracle":
        cols += ["high band var ratio", "mode TV", "CE gap", "MMD x1e3"]
    cols += ["seconds"]
    out = []
    for nfe in sorted({r.nfe_target for r in rows if r.nfe_target in setup.nfes}):
        cells = []
        for r in sorted(
            (r for r in rows if r.nfe_target == nfe and r.method in setup.main),
            key=lambda r: r.metrics[key],
        ):
            vals = [
                f"`{r.method}`",
                r.family,
                r.grid,
                str(r.steps),
                str(r.nfe),
                str(r.jvps),
                f"{r.nfe_compute(jvp_cost):.1f}",
                fmt(r.metrics[key]),
                *(fmt(r.metrics.get(m, math.nan)) for m in others),
            ]
            if setup.kind == "oracle":
                vals += [
                    f"{r.metrics.get('high_band_variance_ratio', math.nan):.2f}",
                    f"{r.metrics.get('mode_weight_tv', math.nan):.3f}",
                    f"{r.metrics.get('cross_entropy_gap', math.nan):+.2f}",
                    f"{1e3 * r.metrics.get('mmd', math.nan):.2f}",
                ]
            cells.append(vals + [f"{r.seconds:.1f}"])
        out += [f"\n### NFE {nfe}\n", *markdown_table(cols, cells)]
    return out


def plot(view: View, path: Path) -> None:
    rows, key, jvp_cost, floor = view.rows, view.headline, view.jvp_cost, view.floor
    # few-step Heun reaches 1e8 on the oracle: cap the axis at 100x the best value so the
    # competitive range stays readable
    finite = [r.metrics[key] for r in rows if math.isfinite(r.metrics[key])]
    low = min(finite + ([floor] if floor else []))
    cap = 100 * low
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, compute in zip(axes, (False, True)):
        for name in sorted(view.main):
            pts = sorted(
                (r.nfe_compute(jvp_cost) if compute else r.nfe, r.metrics[key])
                for r in rows
                if r.method == name and r.nfe_target in view.nfes and math.isfinite(r.metrics[key])
            )
            if not pts:
                continue
            fam = next(r.family for r in rows if r.method == name)
            style = {"diffusers": "--", "k-diffusion": ":"}.get(fam, "-")
            width = 2.5 if name == "cov_ddim" else 1.2
            ax.plot(*zip(*pts), style, marker="o", ms=3, lw=width, label=name)
        if floor is not None:
            ax.axhline(floor, color="gray", lw=0.8, ls=":", label="exact samples (floor)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(0.8 * low, cap)
        ax.set_xlabel(
            f"NFE (compute-equivalent, JVP = {jvp_cost:.1f} forwards)"
            if compute
            else "NFE (paper convention: forward + JVP = 1)"
        )
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(key)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(
        "difflab samplers (solid) vs diffusers schedulers (dashed) and k-diffusion samplers "
        f"(dotted); axis capped at {cap:.3g}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def total_seconds(report: dict) -> float:
    """The wall time of the study: one number, or one per script (`seconds` by part)."""
    seconds = report.get("seconds", 0.0)
    return sum(seconds.values()) if isinstance(seconds, dict) else seconds


def floors(report: dict) -> list[str]:
    """The distribution metrics of exact samples (oracle runs that computed them)."""
    exact = report.get("exact_samples") or {}
    if "mmd" not in exact:
        return []
    return [
        f"- Whole-distribution metrics (`difflab.eval.oracle_metrics`), exact samples of the same "
        f"size: mode TV {exact['mode_weight_tv']:.3f}, CE gap (mean exact log-density of the "
        f"samples minus that of exact samples, nats per sample) "
        f"{exact['cross_entropy_gap']:+.2f} +- {exact['cross_entropy_gap_se']:.2f}, MMD "
        f"(unbiased, squared, whitened coefficients, median bandwidth) "
        f"{1e3 * exact['mmd']:.2f}e-3: these are the floors."
    ]


def render(report: dict) -> str:
    """The report of a study's `results.json`."""
    setup = View.of(report)
    rows, key, jvp_cost, floor = setup.rows, setup.headline, setup.jvp_cost, setup.floor
    m = report["machine"]
    lines = [
        "# Few-step samplers vs diffusers' schedulers",
        "",
        f"Commands ({total_seconds(report) / 60:.0f} min in all), each adding its part to "
        "`results.json`, from which `benchmarks/samplers_report.py` renders this report and "
        "`plot.png`:",
        "",
        *[f"    {c}" for c in report["commands"]],
        "",
        f"- Denoiser: {setup.description}.",
        f"- {report['num_samples']} samples per (sampler, NFE) from the same initial noise "
        f"(seed {report['seed']}; sampler noise seeds {report['seed'] + 1000}+batch); metric "
        f"`{key}`"
        + (
            f"; exact samples of the same size give {fmt(floor)} (the floor)."
            if floor is not None
            else "."
        ),
        *floors(report),
        f"- Machine: {m.get('processor', m.get('cpu'))} ({m.get('cpus', m.get('cores'))} CPUs "
        "shared with other jobs, "
        f"{m['torch_threads']} torch thread), {m['platform']}; torch {m['torch']}, diffusers "
        f"{m['diffusers']}.",
        "- NFE: paper convention (a forward with its JVP is one evaluation); Heun runs the "
        "largest `2 steps - 1 <= NFE`. NFE (compute) charges each JVP its measured cost on a "
        f"small U-ViT: {jvp_cost:.2f} forwards (see below).",
        "- difflab samplers use their default grid (`difflab.sampling.DEFAULT_GRIDS`); diffusers "
        "schedulers their own timesteps on the same schedule (`diffusers_adapter`)"
        + (
            "; k-diffusion's samplers (`k_*`, `samplers_kdiffusion.py`) the denoiser through "
            "`difflab.interop.to_k_diffusion` on Karras sigmas over the schedule's range or its "
            "uniform-t levels (`sampler_bench.K_PEERS`). `euler` is not listed: it equals `ddim` "
            "to round-off (tested), as `k_euler` does."
            if any(r.family == "k-diffusion" for r in rows)
            else ". `euler` is not listed: it equals `ddim` to round-off (tested)."
        ),
        "",
        "## Targets (measured)",
        "",
        *[f"- {t}" for t in targets(rows, key, setup)],
    ]
    ec = report.get("equal_compute", [])
    if ec:
        wins = sum(e["cov"] < e["best_peer_value"] for e in ec)
        lines.append(
            f"- Equal compute (JVP = {jvp_cost:.2f} forwards; each peer gets the next "
            f"integer NFE at or above cov_ddim's cost): cov_ddim better in {wins} of "
            f"{len(ec)} budgets."
        )
    for name in ("cov_ddim", "cov_ddim_table"):
        et = [e for e in report.get("equal_time", []) if e["best_peer"] and e["method"] == name]
        if et:
            wins = sum(e["cov"] < e["best_peer_value"] for e in et)
            lines.append(
                f"- Equal measured wall time on this denoiser: `{name}` better than the best "
                f"diffusers run that took no longer in {wins} of {len(et)} cases."
            )
    lines += ["", "## Results per NFE", *table(rows, key, setup, jvp_cost)]
    costs = report["jvp_cost"]
    u = costs["uvit16"]
    lines += [
        "",
        "## Cost of a JVP",
        "",
        "Median over interleaved repetitions of (forward+JVP time) / (forward time), "
        "`torch.func.jvp`, this CPU, one thread:",
        "",
        *[
            f"- {name} (batch {c['batch']}): {c['vs_sdpa']:.2f} over the default (SDPA) forward "
            f"({c['forward_sdpa_s'] * 1e3:.0f} ms) that a forward-only sampler uses, "
            f"{c['vs_math']:.2f} over the math-attention forward "
            f"({c['forward_math_s'] * 1e3:.0f} ms)"
            for name, c in costs.items()
        ],
        f"- `uvit16` is a random-weight U-ViT at 16x16 ({u['params'] / 1e6:.2f}M parameters); the "
        f"JVP runs with math attention (SDPA has no forward-mode AD). NFE (compute) uses "
        f"{jvp_cost:.2f}.",
    ]
    if ec:
        lines += [
            "",
            "## Equal compute",
            "",
            f"cov_ddim at `s` steps costs `s + {jvp_cost - 1:.2f} s` forwards; the peers run at "
            "the next integer NFE.",
            "",
            *markdown_table(
                [
                    "cov_ddim steps",
                    "forwards",
                    f"cov_ddim {key}",
                    "peer NFE",
                    "best diffusers",
                    f"its {key}",
                ],
                [
                    [
                        e["cov_steps"],
                        f"{e['compute_nfe']:.1f}",
                        fmt(e["cov"]),
                        e["peer_nfe"],
                        f"`{e['best_peer']}`",
                        fmt(e["best_peer_value"]),
                    ]
                    for e in ec
                ],
            ),  # fmt: skip
        ]
    if report.get("equal_time"):
        lines += [
            "",
            "## Equal wall time (measured on this denoiser)",
            "",
            *markdown_table(
                [
                    "method",
                    "NFE",
                    "seconds",
                    key,
                    "best diffusers no slower",
                    "NFE",
                    "seconds",
                    key,
                ],
                [equal_time_cells(e) for e in report["equal_time"]],
            ),  # fmt: skip
        ]
    if report.get("agreement"):
        lines += [
            "",
            "## Agreement with diffusers on the same grid",
            "",
            "Our sampler on the levels the scheduler visits (`scheduler_grid`), same noise "
            "and denoiser, 256 samples:",
            "",
            *markdown_table(
                ["diffusers", "ours", "steps", "max abs difference", "sample std"],
                [
                    [
                        f"`{a['peer']}`",
                        f"`{a['ours']}`",
                        a["steps"],
                        f"{a['max_abs_diff']:.1e}",
                        f"{a['sample_std']:.2f}",
                    ]
                    for a in report["agreement"]
                ],
            ),  # fmt: skip
        ]
    gs = report.get("grid_study")
    if gs:
        labels = list(next(iter(gs["fd"].values())))  # the grids, in study order
        lines += [
            "",
            "## Grid study",
            "",
            f"`{key}` at NFE {', '.join(map(str, gs['nfe']))} "
            f"({gs.get('num_samples', '?')} samples; geometric mean over NFE decides "
            "the best; **bold**: the default).",
            "",
        ]
        cells = []
        for name, by_grid in gs["fd"].items():
            row = [f"`{name}`"]
            for label in labels:
                text = " / ".join(fmt(v) for v in by_grid[label])
                row.append(f"**{text}**" if label == gs["default"][name] else text)
            cells.append(row + [gs["best"][name]])
        lines += markdown_table(["sampler", *labels, "best"], cells)
    ab = report.get("cov_ablation")
    if ab:
        nfes = [r["nfe_target"] for r in ab[0]["rows"]]
        header = ["configuration", *(f"{key} @ NFE {n}" for n in nfes)]
        if setup.kind == "oracle":
            header += [f"high band @ {n}" for n in nfes]
        cells = []
        for a in ab:
            vals = [a["config"], *(fmt(r["metrics"][key]) for r in a["rows"])]
            if setup.kind == "oracle":
                vals += [
                    f"{r['metrics'].get('high_band_variance_ratio', math.nan):.2f}"
                    for r in a["rows"]
                ]
            cells.append(vals)
        grid = ab[0]["rows"][0].get("grid", "the default")
        lines += ["", "## cov_ddim ablation", "", f"Grid {grid} (the default when this ran) "
                  "unless stated.", ""]  # fmt: skip
        lines += markdown_table(header, cells)
    lines += mode_ablation_section(report.get("mode_ablation") or {})
    lines += oracles_section(report.get("oracles") or {})
    lines += oracles_section(report.get("oracles_large") or {}, "at the target's NFE, many samples")
    lines += first_steps_section(report.get("first_steps") or {})
    lines += skew_section(report.get("skew") or {}, report.get("oracles_large") or {})
    if ov := report.get("overhead"):
        lines += overhead_table(ov)
    return "\n".join(lines) + "\n"


def seed_spread(m: dict, key: str) -> float | None:
    """The standard deviation over seeds of `m[key]` (None: one seed)."""
    values = m.get("per_seed", {}).get(key)
    if not values or len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def distribution_cells(m: dict, floor: dict) -> list[str]:
    """Frechet distance (and its excess over exact samples), mode TV, CE gap, MMD; the mean
    over seeds with the seeds' standard deviation where there are several."""

    def spread(key: str, cell: str, digits: str) -> str:
        sd = seed_spread(m, key)
        return cell if sd is None else f"{cell} ± {sd:{digits}}"

    return [
        spread("frechet_exact", fmt(m["frechet_exact"]), ".2g"),
        fmt(m["frechet_exact"] - floor["frechet_exact"]),
        spread("mode_weight_tv", f"{m['mode_weight_tv']:.4f}", ".4f"),
        f"{m.get('cross_entropy_gap', math.nan):+.2f}",
        f"{1e3 * m.get('mmd', math.nan):.2f}",
    ]


DIST_COLS = ["FD", "FD - floor", "mode TV", "CE gap", "MMD x1e3"]


def mode_ablation_section(ablation: dict) -> list[str]:
    lines = []
    for oracle, runs in ablation.items():
        cells = [[r["nfe"], r["grid"], r["config"], fmt(r["metrics"]["frechet_exact"]),
                  f"{r['metrics']['mode_weight_tv']:.3f}"] for r in runs]  # fmt: skip
        lines += ["", f"## Where the mode weights go wrong (oracle `{oracle}`)", "",
                  "cov_ddim's step loop with its covariance replaced by the oracle's exact "
                  "per-example DCT diagonal or its within-component part, or used only on the "
                  "steps at `l_t >= threshold` (and on the last step): "
                  "`benchmarks/samplers_cov_ablation.py --modes`.", ""]  # fmt: skip
        lines += markdown_table(["NFE", "grid", "configuration", "FD", "mode TV"], cells)
    return lines


def oracles_section(oracles: dict, subtitle: str | None = None) -> list[str]:
    """Transfer of the defaults: cov_ddim against each peer on its best grid, per oracle."""
    if not oracles:
        return []
    first = next(iter(oracles.values()))
    num, seeds = first.get("num", 2000), first.get("seeds", 1)
    sampled = (f"{num} samples from the same noise" if seeds == 1 else
               f"{num} samples per seed, {seeds} seeds (independent noises; means, with the "
               "seeds' standard deviation after ±)")  # fmt: skip
    title = "Defaults on other oracles" + (f": {subtitle}" if subtitle else "")
    lines = ["", f"## {title}", "",
             "`benchmarks/samplers_oracles.py`: each named oracle (`GaussianMixtureOracle.named`; "
             f"`held_out` was looked at only after the defaults were chosen), {sampled}; peers "
             "(DPM-Solver++(2M), UniPC, aDDIM, Heun) on the grid of the six that gives them the "
             "lowest Frechet distance. FD - floor: the Frechet distance minus that of exact "
             "samples of the same size; the mode TV of exact samples is its floor at this size.",
             ""]  # fmt: skip
    for name, o in oracles.items():
        floor = o["exact"]
        nfes = sorted({r["steps"] for r in o["rows"] if r["sampler"] != "heun"})
        cells = [["exact samples", "", *distribution_cells(floor, floor)]]
        for nfe in nfes:
            rows = at_nfe(o["rows"], nfe)
            own = [r for r in rows if r["sampler"] in ("cov_ddim", "cov_ddim_table", "ddim")]
            peers = {}
            for r in rows:
                if r["sampler"] in ("dpmpp_2m", "unipc", "addim", "heun"):
                    best = peers.get(r["sampler"])
                    if best is None or r["frechet_exact"] < best["frechet_exact"]:
                        peers[r["sampler"]] = r
            for r in own + sorted(peers.values(), key=lambda r: r["frechet_exact"]):
                cells.append([r["method"], nfe, *distribution_cells(r, floor)])
        shape = "x".join(map(str, o["shape"]))
        lines += ["", f"### `{name}` ({shape}, {o['components']} components)", ""]
        lines += markdown_table(["method", "NFE", *DIST_COLS], cells)
        lines += ["", *[f"- {t}" for t in oracle_targets(o)]]
    return lines


def first_steps_section(oracles: dict) -> list[str]:
    """`cov_ddim` with its first steps replaced by exact posterior draws or by DDIM."""
    if not oracles:
        return []
    first = next(iter(oracles.values()))[0]
    lines = ["", "## Where the mode error is made", "",
             "`benchmarks/samplers_oracles.py --first-steps`: `cov_ddim` (defaults) with its "
             "first k steps of the default grid taken by exact posterior draws (the oracle's "
             "mixture posterior: exact at any step size) or by DDIM; every step exact is the "
             f"check that the loop itself is exact. {first['num_samples']} samples, one noise; "
             "the exact samples' mode TV is in the table above.", ""]  # fmt: skip
    for name, rows in oracles.items():
        cells = [[r["nfe"], f"{r['steps']} by {r['first']}" if r["steps"] else "none",
                  f"{r['last_level']:.2f}", fmt(r["frechet_exact"]), f"{r['mode_weight_tv']:.4f}",
                  f"{r.get('cross_entropy_gap', math.nan):+.2f}"] for r in rows]  # fmt: skip
        lines += ["", f"### `{name}`", ""]
        lines += markdown_table(["NFE", "first steps", "then from logsnr", "FD", "mode TV",
                                 "CE gap"], cells)  # fmt: skip
    return lines


def skew_section(oracles: dict, large: dict) -> list[str]:
    """`cov_ddim` with and without the skewed draw, per oracle and NFE (means over seeds)."""
    if not oracles:
        return []
    first = next(iter(oracles.values()))[0]
    seeds = len(first.get("per_seed", {}).get("frechet_exact", [0]))
    lines = ["", "## The skewed draw", "",
             "`benchmarks/samplers_oracles.py --skew`: `cov_ddim` (defaults) against "
             "`cov_ddim(skew=True)` (the JVP-response draw given the posterior's skewness along "
             "itself, one more forward-over-forward JVP per step), "
             f"{first['num_samples']} samples per seed, {seeds} seed(s), the same noises; exact "
             "samples' mode TV from the table at the target's NFE where it ran. Seconds: "
             "sampling wall time per seed on this machine.", ""]  # fmt: skip
    cells = []
    for name, rows in oracles.items():
        floor = large.get(name, {}).get("exact", {}).get("mode_weight_tv")
        for r in rows:
            fd, _, tv, *_ = distribution_cells(r, {"frechet_exact": 0.0})
            cells.append([f"`{name}`", r["nfe"], "skewed" if r["skew"] else "default", fd, tv,
                          "-" if floor is None else f"{floor:.4f}",
                          f"{r.get('cross_entropy_gap', math.nan):+.2f}",
                          f"{r['seconds']:.1f}"])  # fmt: skip
    return lines + markdown_table(["oracle", "NFE", "draw", "FD", "mode TV", "exact TV", "CE gap",
                                   "seconds"], cells)  # fmt: skip


def at_nfe(rows: list[dict], nfe: int) -> list[dict]:
    """The rows of NFE `nfe` (Heun: `(nfe + 1) // 2` steps, `2 steps - 1` evaluations)."""
    return [r for r in rows if r["steps"] == ((nfe + 1) // 2 if r["sampler"] == "heun" else nfe)]


def oracle_targets(o: dict, nfe: int = 8) -> list[str]:
    """The issue's target at NFE 8: cov_ddim's Frechet distance at most half the best peer's
    (raw, and in excess over exact samples), mode TV within 2x of exact samples."""
    rows = at_nfe(o["rows"], nfe)
    cov = [r for r in rows if r["method"] == "cov_ddim (default grid)"]
    peers = [r for r in rows if r["sampler"] in ("dpmpp_2m", "unipc", "addim", "heun")]
    if not cov or not peers:
        return []
    c, best, floor = cov[0], min(peers, key=lambda r: r["frechet_exact"]), o["exact"]
    raw = c["frechet_exact"] / best["frechet_exact"]
    excess = (c["frechet_exact"] - floor["frechet_exact"]) / (
        best["frechet_exact"] - floor["frechet_exact"]
    )
    tv = c["mode_weight_tv"] / floor["mode_weight_tv"]

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    return [
        f"NFE {nfe}: `cov_ddim` FD {fmt(c['frechet_exact'])} vs best peer `{best['method']}` "
        f"{fmt(best['frechet_exact'])}: ratio {raw:.2f} {verdict(raw <= 0.5)} (target <= 0.5); "
        f"above the floor {excess:.2f} {verdict(excess <= 0.5)}",
        f"NFE {nfe}: `cov_ddim` mode TV {c['mode_weight_tv']:.4f} vs exact samples "
        f"{floor['mode_weight_tv']:.4f}: {tv:.1f}x {verdict(tv <= 2)} (target <= 2x)",
    ]


def equal_time_cells(e: dict) -> list:
    cells = [f"`{e['method']}`", e["cov_nfe"], f"{e['cov_seconds']:.1f}", fmt(e["cov"])]
    if not e["best_peer"]:
        return cells + ["(none as fast)", "", "", ""]
    return cells + [f"`{e['best_peer']}`", e["best_peer_nfe"], f"{e['best_peer_seconds']:.1f}",
                    fmt(e["best_peer_value"])]  # fmt: skip


def overhead_table(ov: dict) -> list[str]:
    lines = [
        "",
        "## Per-step sampler overhead",
        "",
        f"Seconds per denoiser call spent outside the denoiser (a free denoiser, 32 steps, "
        f"batch {ov['batch']} at 3x32x32) over one forward of the 32x32 U-ViT "
        f"(`cifar_uvit_config`, SDPA, {ov['uvit32_forward_s'] * 1e3:.0f} ms):",
        "",
    ]
    cells = [[f"`{name}`", f"{o['seconds'] * 1e3:.2f} ms", f"{100 * o['fraction_of_forward']:.2f}%"]
             for name, o in ov["per_step"].items()]  # fmt: skip
    return lines + markdown_table(["sampler", "overhead per call", "fraction of a forward"], cells)


def report_text(folder: Path) -> str:
    """The report of a stored `results.json`."""
    return render(read_json(Path(folder) / RAW))


def render_folder(folder: str | Path, with_plot: bool = True) -> str | None:
    """Re-render `<folder>/README.md` (and `plot.png`) from `<folder>/results.json`; nothing
    (None) while the NFE sweep (`samplers_nfe.py`) has not stored its rows."""
    folder = study_folder(folder)
    report = read_json(folder / RAW)
    if "rows" not in report:
        print(f"{folder / RAW} has no sampler rows yet (run samplers_nfe.py): no report")
        return None
    text = render(report)
    write_report(folder, text)
    if with_plot:
        plot(View.of(report), folder / "plot.png")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/samplers", help="the study folder")
    p.add_argument("--no-plot", action="store_true", help="only the markdown report")
    args = p.parse_args(argv)
    render_folder(args.out, with_plot=not args.no_plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
