"""Character-level Shakespeare: bits per character of masked and uniform diffusion against the
same-size autoregressive model at equal training steps, and samples of each.

Trains nothing: it reads three finished runs of `configs/discrete_text_{masked,uniform,ar}.yaml`
(EMA weights), scores `--windows` evenly spaced 128-character windows of the test split (the
diffusion NELBO of each window by one stratified pass over `--strata` levels, one z per level,
`bits_per_token`; the autoregressive exact NLL), and draws `--samples` samples from each
(`--sample-steps` ancestral steps for diffusion). The runs themselves (about 10-25 minutes each
on a shared CPU core; `--key text_<name>` stores another set of runs beside the first):

    difflab train configs/discrete_text_masked.yaml train.out_dir=runs/discrete_text_masked
    difflab train configs/discrete_text_uniform.yaml train.out_dir=runs/discrete_text_uniform
    difflab train configs/discrete_text_ar.yaml train.out_dir=runs/discrete_text_ar
    python benchmarks/discrete_text.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import ROOT, command_line, record_run, update_results, write_report
from discrete_oracle import FOLDER, report_text

RUNS = {
    "masked_diffusion": "runs/discrete_text_masked",
    "uniform_diffusion": "runs/discrete_text_uniform",
    "autoregressive": "runs/discrete_text_ar",
}


def train_minutes(run: Path) -> float:
    """Training wall time from the run's log: sum of (steps x batch / images per second)."""
    minutes, last = 0.0, 0
    batch = None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("event") in ("start", "resume"):
            batch, last = entry["global_batch"], entry["step"]
        elif "images_per_s" in entry and batch:
            minutes += (entry["step"] - last) * batch / entry["images_per_s"] / 60
            last = entry["step"]
    return minutes


def evaluate(runs: dict[str, str], windows: int, strata: int, samples: int, steps: int,
             seed: int) -> dict:  # fmt: skip
    import torch

    from difflab import api
    from difflab.data import make_dataset
    from difflab.data.text import decode
    from difflab.methods.discrete_diffusion import bits_per_token, discrete_parts, draw
    from difflab.nets import count_parameters

    torch.set_num_threads(1)
    rows, texts = [], {}
    for method, path in runs.items():
        if path == "none":
            continue
        run = ROOT / path
        model = api.load(run)
        parts = discrete_parts(model.config)
        net = model.net.eval()
        seq_len = net.config.seq_len
        data = make_dataset("shakespeare_char", "test", seq_len=seq_len)
        idx = torch.linspace(0, len(data) - 1, windows).long()
        tokens = torch.stack([data[int(i)][0] for i in idx])
        gen = torch.Generator().manual_seed(seed)
        bpc, se = bits_per_token(net, parts.process, tokens, schedule=parts.schedule,
                                 strata=strata, generator=gen)  # fmt: skip
        rows.append({
            "method": method, "run": path, "params": count_parameters(net),
            "steps": int(model.source.get("step", -1)), "train_minutes": train_minutes(run),
            "bpc": bpc, "bpc_se": se, "windows": windows,
        })  # fmt: skip
        print(rows[-1], flush=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = draw(net, parts.process, parts.vocab_size, (samples, seq_len), steps,
                       generator=gen)  # fmt: skip
        how = "token by token" if parts.process is None else f"{steps} ancestral steps"
        texts[method] = {"how": how, "texts": [decode(t) for t in out]}
    ar = next((r["bpc"] for r in rows if r["method"] == "autoregressive"), None)
    for r in rows:
        r["ratio_to_ar"] = r["bpc"] / ar if ar else None
    setup = {"windows": windows, "seq_len": seq_len, "strata": strata, "seed": seed}
    return {"rows": rows, "samples": texts, "setup": setup}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=512, help="test windows scored")
    p.add_argument("--strata", type=int, default=16, help="stratified NELBO levels per window")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--sample-steps", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--key", default="text", help="results.json key (text or text_<name>)")
    for method, path in RUNS.items():
        p.add_argument(f"--{method.split('_')[0]}", default=path, help=f"{method} run (none: skip)")
    a = p.parse_args(argv)
    runs = {"masked_diffusion": a.masked, "uniform_diffusion": a.uniform,
            "autoregressive": a.autoregressive}  # fmt: skip
    if a.key != "text" and not a.key.startswith("text_"):
        raise SystemExit("discrete_text.py: error: --key must be text or text_<name>")
    if a.windows < 2:
        raise SystemExit("discrete_text.py: error: --windows must be >= 2")
    command = command_line(argv)
    text = evaluate(runs, a.windows, a.strata, a.samples, a.sample_steps, a.seed)
    update_results(FOLDER, {a.key: {**text, "command": command}})
    record_run(FOLDER, command)
    write_report(FOLDER, report_text(FOLDER))
    return 0


if __name__ == "__main__":
    sys.exit(main())
