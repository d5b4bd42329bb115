"""Discrete diffusion on an exact oracle: does ancestral sampling with the exact denoiser converge
to the true joint as steps grow, and is the continuous-time NELBO of the exact denoiser the NLL?

The oracle is `DiscreteOracle.random(6, 3, seed=0)`: an explicit joint over the 729 sequences of
6 tokens in 3 symbols (a 4-component mixture of peaked product distributions plus a 2% uniform
floor). For masked and uniform diffusion, on `discrete_grid(steps)` (uniform in t on the linear
masking schedule):

- the EXACT law of the ancestral sampler (`exact_sampler_distribution`: the Markov chain pushed
  through all (V + 1)^L = 4096 resp. 729 states) and its KL to the joint, no Monte Carlo;
- `--num` Monte-Carlo samples of `sample_masked` / `sample_uniform` and the KL of their histogram
  to the joint, beside the floor: the same KL for `--num` exact draws from the joint;
- the NELBO of the exact denoiser for 8 sequences, exact in z and by quadrature in t
  (`DiscreteOracle.exact_nelbo`, 64 points), against `-log p(x)`; and the Monte-Carlo NELBO
  (the training loss) averaged over `--num` data draws against the entropy.

About 5 minutes on one CPU core.

    python benchmarks/discrete_oracle.py
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from common import (
    RESULTS,
    command_line,
    fmt_sig,
    markdown_table,
    read_json,
    record_run,
    update_results,
    write_report,
)

FOLDER = RESULTS / "discrete"
EXACT_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MC_STEPS = (4, 16, 64)
PROCESSES = ("masked", "uniform")


def oracle_rows(num: int, seed: int) -> dict:
    import torch

    from difflab.discrete import (
        DiscreteOracle,
        discrete_grid,
        masked_nelbo,
        prior_sample,
        sample_masked,
        sample_uniform,
        uniform_nelbo,
    )

    torch.set_num_threads(1)
    oracle = DiscreteOracle.random(6, 3, seed=0)
    gen = torch.Generator().manual_seed(seed)
    out: dict = {
        "oracle": {
            "length": 6,
            "vocab_size": 3,
            "seed": 0,
            "states": oracle.num_states,
            "entropy_nats": oracle.entropy(),
        },  # fmt: skip
        "num": num,
        "seed": seed,
        "exact": [],
        "monte_carlo": [],
        "nelbo": [],
    }
    for process in PROCESSES:
        for steps in EXACT_STEPS:
            start = time.perf_counter()
            law = oracle.sampler_distribution(process, discrete_grid(steps))
            row = {"process": process, "steps": steps, "kl": oracle.kl_to(law),
                   "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
            out["exact"].append(row)
            print(row, flush=True)
    floor = oracle.kl_from_samples(oracle.sample(num, generator=gen))
    out["floor_kl"] = floor
    for process in PROCESSES:
        sampler = sample_masked if process == "masked" else sample_uniform
        for steps in MC_STEPS:
            start = time.perf_counter()
            z = prior_sample(process, (num, 6), 3, generator=gen)
            x = sampler(oracle.denoiser(process), z, discrete_grid(steps), generator=gen)
            row = {"process": process, "steps": steps, "kl": oracle.kl_from_samples(x),
                   "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
            out["monte_carlo"].append(row)
            print(row, flush=True)
    x = oracle.sample(8, generator=gen)
    nll = -oracle.log_prob(x)
    data = oracle.sample(num, generator=gen)
    for process in PROCESSES:
        exact = oracle.exact_nelbo(process, x, points=64)
        fn = masked_nelbo if process == "masked" else uniform_nelbo
        mc = torch.cat([
            fn(oracle.logits(process), data[i : i + 4096], 3, generator=gen).double()
            for i in range(0, num, 4096)
        ])  # fmt: skip
        row = {
            "process": process,
            "max_abs_exact_minus_nll": float((exact - nll).abs().max()),
            "mean_nll": float(nll.mean()),
            "mc_mean": float(mc.mean()),
            "mc_se": float(mc.std() / math.sqrt(num)),
            "entropy": oracle.entropy(),
        }
        out["nelbo"].append(row)
        print(row, flush=True)
    return out


def report_text(folder) -> str:
    """The study report from `results.json` (oracle part and, when present, the text part)."""
    data = read_json(folder / "results.json", {})
    lines = ["# Discrete diffusion: exact oracle and character-level text", ""]
    oracle = data.get("oracle")
    if oracle:
        o = oracle["rows"]
        info = o["oracle"]
        lines += [
            "## Exact oracle",
            "",
            f"Joint: `DiscreteOracle.random({info['length']}, {info['vocab_size']}, seed="
            f"{info['seed']})`, {info['states']} sequences, entropy "
            f"{info['entropy_nats']:.4f} nats. Grids: `discrete_grid(steps)` (uniform in t on "
            "the linear masking schedule). Command: `" + oracle["command"] + "`.",
            "",
            "### Sampling error of the exact denoiser",
            "",
            "KL(sampler law || joint) in nats. *exact*: the law of the ancestral chain computed "
            f"over all states (no Monte Carlo); *MC*: histogram of {o['num']} samples, whose "
            f"floor (the same KL for {o['num']} exact draws from the joint) is "
            f"{fmt_sig(o['floor_kl'])}.",
            "",
        ]
        mc = {(r["process"], r["steps"]): r["kl"] for r in o["monte_carlo"]}
        exact = {(r["process"], r["steps"]): r["kl"] for r in o["exact"]}
        steps = sorted({s for _, s in exact})
        rows = []
        for s in steps:
            row = [s]
            for p in PROCESSES:
                row.append(fmt_sig(exact[(p, s)]) if (p, s) in exact else "")
                row.append(fmt_sig(mc[(p, s)]) if (p, s) in mc else "")
            rows.append(row)
        header = ["steps", "masked exact", "masked MC", "uniform exact", "uniform MC"]
        lines += markdown_table(header, rows, "rrrrr")
        lines += ["", "### NELBO of the exact denoiser", ""]
        rows = [
            [r["process"], fmt_sig(r["max_abs_exact_minus_nll"]),
             f"{r['mc_mean']:.4f} ± {r['mc_se']:.4f}", f"{r['entropy']:.4f}"]
            for r in o["nelbo"]
        ]  # fmt: skip
        lines += [
            "*exact - NLL*: the largest |NELBO - (-log p(x))| over 8 sequences, the NELBO exact "
            "in z (all corruption patterns) and by 64-point quadrature in t. *MC NELBO*: the "
            f"training loss (one t and one z per sequence) averaged over {o['num']} data draws "
            "(± standard error), against the entropy.",
            "",
        ]
        lines += markdown_table(["process", "exact - NLL", "MC NELBO (nats)", "entropy"], rows,
                                "lrrr")  # fmt: skip
        lines.append("")
    for key in sorted(k for k in data if k == "text" or k.startswith("text_")):
        lines += text_report_lines(data[key])
    return "\n".join(lines).rstrip() + "\n"


def text_report_lines(text: dict) -> list[str]:
    cfg = text.get("setup", {})
    steps = sorted({r["steps"] for r in text.get("rows", [])})
    lines = [
        "## Character-level Shakespeare, " + "/".join(map(str, steps)) + " training steps",
        "",
        f"Test split (Hamlet, Much Ado About Nothing), {cfg.get('windows', '?')} windows of "
        f"{cfg.get('seq_len', '?')} characters; the diffusion NELBO of each window from one "
        f"stratified pass over {cfg.get('strata', '?')} levels (`bits_per_token`), the "
        "autoregressive model's exact NLL on the same windows; ± is the standard error over "
        "windows. Every row: the same net size, data and batch, trained for the same number of "
        "steps (`configs/discrete_text_*.yaml`, `train.steps` as in the table). Command: "
        f"`{text.get('command', '')}`.",
        "",
    ]
    rows = []
    for r in text.get("rows", []):
        rows.append([r["method"], r["params"], r["steps"], f"{r['train_minutes']:.1f}",
                     f"{r['bpc']:.3f} ± {r['bpc_se']:.3f}",
                     f"{r['ratio_to_ar']:.3f}" if r.get("ratio_to_ar") else ""])  # fmt: skip
    lines += markdown_table(
        ["method", "parameters", "training steps", "wall minutes (shared CPU)", "test bits/char",
         "/ AR"], rows,
        "lrrrrr",
    )  # fmt: skip
    samples = text.get("samples", {})
    for method, items in samples.items():
        lines += ["", f"Samples, {method} ({items['how']}):", ""]
        for s in items["texts"]:
            lines += ["```text", s.rstrip("\n"), "```"]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=50000, help="Monte-Carlo samples per row")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    command = command_line(argv)
    update_results(FOLDER, {"oracle": {"rows": oracle_rows(a.num, a.seed), "command": command}})
    record_run(FOLDER, command)
    write_report(FOLDER, report_text(FOLDER))
    return 0


if __name__ == "__main__":
    sys.exit(main())
