"""Is a trained denoiser's Jacobian a posterior covariance? Tweedie's identity on trained nets.

The covariance-aware samplers (`cov_ddim`, docs/methods/cov_ddim.md) take `Cov[x | z_l] =
(sigma^2 / alpha) d x_hat / d z` from the denoiser's Jacobian. For the exact posterior mean the
Jacobian is symmetric positive semi-definite and, by the law of total variance, its average
trace is the denoising error: `E tr Cov[x | z] = E ||x - E[x | z]||^2`. A trained net satisfies
neither by construction. This measures, on held-out images noised at fixed levels, per model:

- `mse`: `E ||x - x_hat||^2 / d`, the net's error per dimension (the average posterior variance
  of a perfect net; what `measure_x_var` and `measure_posterior_spectrum` tabulate);
- `tweedie`: `(sigma^2 / alpha) E[u . J u] / d` (Rademacher `u`, Hutchinson): the trace the
  samplers read from the Jacobian; `ratio = tweedie / mse` is 1 for a Bayes-optimal net;
- `asymmetry`: `rms(u.Jv - v.Ju) / rms(u.Jv + v.Ju)` over independent probes: 0 for a
  symmetric Jacobian, about 1 for one with no symmetry;
- `mse_bg`, `tweedie_bg`: the shares of each that fall on the background (pixels that are exactly
  black in the clean image): where a posterior is certain and a sampler should add no noise;
- `budget`: `E sum_i (1 - x_hat_i^2) / d`, the largest trace per dimension a posterior of data
  in `[-1, 1]` can have around `x_hat` (Bhatia-Davis; the cap `cov_ddim`'s `data_bound` applies);
- `clipped`: the share of `x_hat` pixels at the clip `[-1, 1]` (the Jacobian is zero there);
- `addim_x_var`: aDDIM's formula `0.1 / (2 + e^l)` at the same level, for scale.

The denoiser is the one the samplers use (`LoadedModel.denoiser()`, unconditional, `x_hat`
clipped to the data range). JVPs with the math attention kernel (forward-mode AD).

    python benchmarks/tweedie_trained.py \
        --model mnist_uvit=src/difflab/assets/mnist_uvit.safetensors
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import (
    RAW,
    command_line,
    locked_update,
    machine,
    markdown_table,
    read_json,
    record_run,
    write_report,
)

DEFAULT_LEVELS = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0)
COLUMNS = ("mse", "tweedie", "ratio", "budget", "asymmetry", "mse_bg", "tweedie_bg", "clipped",
           "addim_x_var")  # fmt: skip


def measure_level(denoise, x, black, level: float, generator) -> dict:
    """The module docstring's quantities at one logsnr `level` on clean images `x` `[N, C, H, W]`
    (`black`: bool mask of the background pixels)."""
    import math

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from difflab.diffusion.parameterization import alpha_sigma, diffuse

    lvl = torch.full((x.shape[0],), level, dtype=x.dtype)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    z = diffuse(x, eps, lvl)
    u, v = 2.0 * torch.randint(0, 2, (2, *x.shape), generator=generator).to(x.dtype) - 1
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        x_hat, ju = torch.func.jvp(lambda y: denoise(y, lvl), (z,), (u,))
        _, jv = torch.func.jvp(lambda y: denoise(y, lvl), (z,), (v,))
    alpha, sigma = alpha_sigma(torch.tensor(level, dtype=torch.float64))
    scale = float(sigma**2 / alpha)
    err2, hutch = (x - x_hat).pow(2), scale * u * ju
    d = x[0].numel()
    ujv, vju = (u * jv).flatten(1).sum(1), (v * ju).flatten(1).sum(1)
    return {
        "logsnr": level,
        "mse": float(err2.mean()),
        "tweedie": float(hutch.sum() / (x.shape[0] * d)),
        "asymmetry": float((ujv - vju).pow(2).mean().sqrt() / (ujv + vju).pow(2).mean().sqrt()),
        "mse_bg": float(err2[black].sum() / err2.sum()),
        "tweedie_bg": float(hutch[black].sum() / hutch.sum()),
        "budget": float((1 - x_hat.square()).clamp_min(0).mean()),
        "clipped": float((x_hat.abs() >= 1.0).to(x.dtype).mean()),
        "addim_x_var": 0.1 / (2.0 + math.exp(level)),
    }


def measure_model(model, dataset: str, num: int, levels, batch: int, seed: int) -> list[dict]:
    """Per level, the module docstring's quantities on the first `num` test images (`model`: a
    `difflab.api.LoadedModel`)."""
    import torch

    from difflab.data.datasets import uint8_to_unit
    from difflab.eval.reference import reference_images

    denoise = model.denoiser()
    pixels = reference_images(dataset, "test", num)
    x, black = uint8_to_unit(pixels).to(torch.float32), pixels == 0
    rows = []
    for level in levels:
        gen = torch.Generator().manual_seed(seed)
        parts = [
            measure_level(denoise, xb, bb, level, gen)
            for xb, bb in zip(x.split(batch), black.split(batch), strict=True)
        ]
        rec = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
        rec["ratio"] = rec["tweedie"] / rec["mse"]
        rows.append(rec)
        print(f"{model.path} l={level:+.0f}: " + ", ".join(f"{k}={rec[k]:.4g}" for k in COLUMNS),
              flush=True)  # fmt: skip
    return rows


def replace_model(mine: dict, stored: dict) -> dict:
    """The stored record with `mine`'s models replaced (a re-run replaces its model's rows)."""
    return {**stored, "models": {**stored.get("models", {}), **mine["models"]}}


def report_text(folder: Path) -> str:
    data = read_json(folder / RAW, {})
    lines = [
        "# Tweedie's identity on trained denoisers",
        "",
        "Does the Jacobian of a trained net give the posterior covariance the covariance-aware "
        "samplers assume? Per logsnr level, on the first `num` test images noised once (seed "
        "below): `mse` = E||x - x_hat||^2 / d (the net's error; the average posterior variance "
        "for a perfect net), `tweedie` = (sigma^2/alpha) E[u . J u] / d (the Jacobian's trace, "
        "Hutchinson with one Rademacher probe per image), `ratio` = tweedie / mse (1 for the "
        "exact posterior mean), `budget` = E sum_i (1 - x_hat_i^2) / d (the largest trace per "
        "dimension a posterior of data in [-1, 1] can have around x_hat, Bhatia-Davis: the cap of "
        "`cov_ddim`'s `data_bound`), `asymmetry` = rms(u.Jv - v.Ju) / rms(u.Jv + v.Ju) (0 for a "
        "symmetric Jacobian), `mse_bg` / `tweedie_bg` = the share of each on the background "
        "(pixels exactly black in the clean image), `clipped` = share of x_hat at the clip "
        "[-1, 1], `addim_x_var` = aDDIM's formula 0.1 / (2 + e^l). The denoiser is the one the "
        "samplers use: unconditional, x_hat clipped to [-1, 1]. Method: "
        "`benchmarks/tweedie_trained.py`. A model path under `runs/` is a file no longer shipped, "
        'named by its sha256 in [results/README.md](../README.md) ("Which MNIST model").',
        "",
    ]
    for name, rec in data.get("models", {}).items():
        lines += [
            f"## {name}",
            "",
            f"`{rec['path']}` (sha256 {rec['sha256'][:16]}, prediction `{rec['prediction']}`), "
            f"{rec['dataset']} test, {rec['num']} images, seed {rec['seed']}, "
            f"{rec['seconds']:.0f} s.",
            "",
        ]
        lines += markdown_table(
            ["logsnr", *COLUMNS],
            [[f"{r['logsnr']:+g}", *(f"{r[k]:.3g}" for k in COLUMNS)] for r in rec["rows"]],
        )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                   help="a model to measure (repeatable)")  # fmt: skip
    p.add_argument("--dataset", default=None, help="test images (default: the model's data)")
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--levels", type=float, nargs="+", default=list(DEFAULT_LEVELS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/tweedie_trained")
    args = p.parse_args(argv)
    import hashlib

    import torch

    from difflab.api import load

    torch.set_num_threads(1)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_file():
            raise SystemExit(
                f"tweedie_trained.py: error: --model {spec!r}: want NAME=PATH to a file"
            )
        model = load(path)
        dataset = args.dataset or model.config.data.name
        start = time.perf_counter()
        rows = measure_model(model, dataset, args.num, args.levels, args.batch, args.seed)
        rec = {
            "path": path,
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "prediction": model.prediction,
            "dataset": dataset,
            "num": args.num,
            "seed": args.seed,
            "seconds": time.perf_counter() - start,
            "rows": rows,
            "machine": machine("cpu"),
        }
        locked_update(folder / RAW, {"models": {name: rec}}, replace_model)
    write_report(folder, report_text(folder))
    record_run(folder, command_line(argv, "tweedie_trained.py"), "cpu")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
