"""Kolmogorov flow: rolling vs block diffusion at equal NFE per frame and equal training compute.

Each trained run (`difflab train configs/{rolling,block}_kolmogorov.yaml`, same net, data,
steps and batch) rolls out `--frames` frames after the context of `--num` test clips, with
`--steps` denoiser calls per frame (the rolling init sweep adds `(W - 1) * steps`). Measured
against the solver: short-horizon MSE and correlation with the true trajectory per lead time,
and over the whole rollout the energy-spectrum error, the vorticity-histogram distance
(Wasserstein-1), the enstrophy drift and whether the rollout stays bounded. Strips and GIFs of
the first rollout go next to the numbers.

    python benchmarks/rolling_kolmogorov.py --rolling runs/rk0 runs/rk1 --block runs/bk0 runs/bk1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import RESULTS, command_line, record_run, update_results

from difflab import api
from difflab.data.kolmogorov import energy_spectrum, load_kolmogorov
from difflab.diffusion.parameterization import as_denoiser
from difflab.images import save_image_grid
from difflab.methods.rolling import NFE, SEQUENCE_SAMPLERS, RollingOptions, save_gif, test_clips

SHORT = 8
"""Lead times of the short-horizon MSE / correlation."""
BOUND = 5.0
"""A rollout is unstable once |omega| exceeds this (normalised units: 10 data standard
deviations) or turns non-finite."""


def reference(cfg) -> dict:
    """Statistics of every stored solver frame, in the data set's normalised units."""
    arrays = load_kolmogorov(cfg.data.kwargs.get("cache_dir"))
    w = torch.from_numpy(arrays["vorticity"]).double()
    w = w / (2 * w.std(unbiased=False))
    return {
        "spectrum": energy_spectrum(w),
        "quantiles": torch.quantile(w.flatten()[::7].float(), torch.linspace(0, 1, 1001)).double(),
        "enstrophy": float(w.pow(2).mean()),
    }


def wasserstein(values: torch.Tensor, quantiles: torch.Tensor) -> float:
    q = torch.quantile(values.flatten().float(), torch.linspace(0, 1, len(quantiles))).double()
    return float((q - quantiles).abs().mean())


def metrics(samples: torch.Tensor, truth: torch.Tensor, ref: dict) -> dict:
    s, t = samples[:, :, 0].double(), truth[:, :, 0].double()  # [N, F, H, W]
    finite = torch.isfinite(s).flatten(1).all(1)
    stable = finite & (s.abs().flatten(1).amax(1) < BOUND)
    out = {"stable_fraction": float(stable.float().mean())}
    short = min(SHORT, s.shape[1])
    mse = (s[:, :short] - t[:, :short]).pow(2).mean((0, 2, 3))
    sc = s[:, :short] - s[:, :short].mean((-2, -1), keepdim=True)
    tc = t[:, :short] - t[:, :short].mean((-2, -1), keepdim=True)
    corr = (sc * tc).sum((-2, -1)) / (sc.pow(2).sum((-2, -1)) * tc.pow(2).sum((-2, -1))).sqrt()
    out["mse_by_lead"] = mse.tolist()
    out["corr_by_lead"] = corr.mean(0).tolist()
    s = torch.where(torch.isfinite(s), s, torch.zeros_like(s)).clamp(-50, 50)
    half = s[:, s.shape[1] // 2 :]
    spec = energy_spectrum(half)
    k = slice(1, spec.shape[0] - 1)
    out["spectrum_log_error"] = float((spec[k].log() - ref["spectrum"][k].log()).abs().mean())
    out["histogram_w1"] = wasserstein(half, ref["quantiles"])
    out["enstrophy_drift"] = float(half.pow(2).mean() / ref["enstrophy"] - 1)
    out["enstrophy_by_frame"] = (s.pow(2).mean((0, 2, 3)) / ref["enstrophy"]).tolist()
    return out


def rollout(run: str, clips_cache: dict, args) -> tuple[dict, torch.Tensor]:
    model = api.load(run)
    cfg = model.config
    opts = RollingOptions(**cfg.method.kwargs)
    key = (cfg.data.name, opts.context)
    if key not in clips_cache:
        clips_cache[key] = test_clips(cfg, opts.context + args.frames, args.num)
    clips = clips_cache[key]
    context, truth = clips[:, : opts.context], clips[:, opts.context :]
    denoise = as_denoiser(model.net, model.prediction)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    with torch.inference_mode():
        samples = SEQUENCE_SAMPLERS[cfg.method.name](
            denoise, context, args.frames, window=opts.window, steps_per_frame=args.steps,
            schedule=model.schedule, generator=gen,
        )  # fmt: skip
    row = {
        "run": run,
        "method": cfg.method.name,
        "train_seed": cfg.train.seed,
        "train_steps": cfg.train.steps,
        "nfe_per_rollout": NFE[cfg.method.name](args.frames, opts.window, args.steps),
        "seconds": round(time.perf_counter() - start, 1),
        **metrics(samples, truth, reference(cfg)),
    }
    return row, samples


def baselines(clips: torch.Tensor, context: int, ref: dict) -> dict:
    """Persistence (the last context frame forever) on the short horizon, and the truth itself
    on the long-horizon statistics (their floor at this sample size)."""
    truth = clips[:, context:]
    persist = clips[:, context - 1 : context].expand_as(truth)
    return {"persistence": metrics(persist, truth, ref), "truth": metrics(truth, truth, ref)}


def diverging(w: torch.Tensor) -> torch.Tensor:
    """Vorticity `[T, 1, H, W]` (about [-1, 1]) as blue-white-red RGB images in [-1, 1]."""
    v = w.clamp(-1, 1)
    pos, neg = v.clamp(min=0), (-v).clamp(min=0)
    rgb = torch.cat([1 - neg, 1 - pos - neg, 1 - pos], dim=1)
    return rgb * 2 - 1


def save_pictures(folder: Path, context, truth, samples: dict[str, torch.Tensor]) -> None:
    """Truth, then each method: every few frames as a strip, all frames as a GIF."""
    every = max(1, truth.shape[0] // 16)
    rows = [truth[::every]] + [s[::every] for s in samples.values()]
    strip = diverging(torch.cat(rows))
    save_image_grid(strip, folder / "kolmogorov_strip.png", nrow=rows[0].shape[0], scale=3)
    videos = [diverging(v) for v in (truth, *samples.values())]
    save_gif(folder / "kolmogorov_rollout.gif", videos, scale=3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rolling", nargs="+", required=True, help="run directories (one per seed)")
    p.add_argument("--block", nargs="+", required=True, help="run directories (one per seed)")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--steps", type=int, default=2, help="denoiser calls per frame")
    p.add_argument("--num", type=int, default=16, help="rollouts (test clips)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "rolling"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cache, rows, firsts = {}, [], {}
    for run in [*args.rolling, *args.block]:
        row, samples = rollout(run, cache, args)
        rows.append(row)
        firsts.setdefault(row["method"], samples[0])
        print({k: v for k, v in row.items() if not isinstance(v, list)}, flush=True)
    api_cfg = api.load(args.rolling[0]).config
    opts = RollingOptions(**api_cfg.method.kwargs)
    clips = next(iter(cache.values()))
    ref = reference(api_cfg)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    save_pictures(folder, clips[0, : opts.context], clips[0, opts.context :], firsts)
    part = {
        "kolmogorov": {
            "frames": args.frames, "steps_per_frame": args.steps, "num": args.num,
            "sample_seed": args.seed, "context": opts.context, "window": opts.window,
            "rows": rows, "baselines": baselines(clips, opts.context, ref),
            "bound": BOUND, "short_horizon": SHORT,
        }
    }  # fmt: skip
    update_results(folder, part)
    record_run(folder, command_line(argv, "benchmarks/rolling_kolmogorov.py"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
