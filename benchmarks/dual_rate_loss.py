"""Held-out denoising loss of the single-rate baseline and the composed dual-rate net (`tau = t`)
at fixed levels: which is the better denoiser at equal training FLOPs?

    python benchmarks/dual_rate_loss.py --runs baseline=runs/dual_rate/mnist_baseline \
        dual_rate=runs/dual_rate/mnist --num 1000 --out results/dual_rate

The loss is each model's training loss (sigmoid-weighted, `diffusion_loss`) on the first `--num`
MNIST-test images at `t = 0.2, 0.4, 0.6, 0.8`, the same noise for every model (seed 0); the
dual-rate net is evaluated as the composed net (encoder and light net at the same state, no
feature dropout). Writes the `heldout_loss` key of `<out>/results.json`.
"""

from __future__ import annotations

import argparse
import json

from common import command_line, record_run, study_folder, update_results, write_report
from dual_rate_frontier import report_text

TIMES = (0.2, 0.4, 0.6, 0.8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="NAME=RUN_DIR")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--out", default="results/dual_rate")
    a = p.parse_args()
    import torch

    from difflab import api
    from difflab.diffusion.losses import diffusion_loss
    from difflab.diffusion.parameterization import as_denoiser
    from difflab.eval.reference import reference_images

    torch.set_num_threads(1)
    x = reference_images("mnist", "test", a.num).float() / 127.5 - 1
    out = {"num": a.num, "times": list(TIMES), "models": {}}
    for item in a.runs:
        name, run = item.split("=", 1)
        model = api.load(run)
        weighting = model.config.diffusion.build_weighting()
        losses = []
        for t in TIMES:
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                denoise = as_denoiser(model.net, model.prediction)
                t_all = torch.full((a.num,), t)
                loss = diffusion_loss(denoise, x, model.schedule, weighting, t=t_all, generator=gen)
            losses.append(round(float(loss.mean()), 6))
        out["models"][name] = {"run": run, "loss": losses}
        print(name, json.dumps(losses), flush=True)
    folder = study_folder(a.out)
    update_results(folder, {"heldout_loss": out})
    write_report(folder, report_text(folder))
    record_run(folder, command_line())


if __name__ == "__main__":
    main()
