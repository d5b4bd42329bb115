"""Recipe ablation at equal training compute (issue 15): simple diffusion / SiD2 choices, one row
per change from a base config, scored with fd-lenet at 32 NFE (best of a few samplers), the
background-haze share and the ELBO.

Every row trains `train.steps x data.batch_size` images from `--config` plus the row's overrides
(`ROWS`), so rows see the same data; the training FLOPs (`difflab.nets.cost`, forward x 3) and
wall time are reported beside the scores. Runs are checkpointed under `--runs`; re-running the
same command resumes an interrupted row and skips finished and scored ones.

    python benchmarks/recipe.py --rows weighting --seeds 0             # the CPU pilot rows
    python benchmarks/recipe.py --rows sig-2,v_mse --seeds 1           # more seeds
    python benchmarks/recipe.py --report results/recipe/mnist_pilot    # re-render the report
    python benchmarks/recipe.py --config configs/recipe_mnist.yaml --device cuda --fid ...

Rows: `--rows` takes row names and/or group names (`weighting`, `schedule`, `loss`, `arch`,
`ema`, `all`). fd-lenet is a Frechet distance in difflab's LeNet features, not FID; `--fid`
adds Inception FID for the best sampler (`difflab[fid]`).
"""

from __future__ import annotations

import argparse
import os
import statistics
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
    write_json,
    write_report,
)

GROUPS: dict[str, dict[str, list[str]]] = {
    "weighting": {
        **{
            f"sig{b:+d}" if b else "sig0": [
                "diffusion.weighting=sigmoid",
                f"diffusion.weighting_kwargs={{bias: {b}}}",
            ]
            for b in (-3, -2, -1, 0, 1, 2)
        },
        **{
            name: [f"diffusion.weighting={name}", "diffusion.weighting_kwargs={}"]
            for name in ("eps_mse", "v_mse", "elbo")
        },
    },
    "schedule": {
        # at 28x28: shift as if the image were twice as large (base 14): 2 log(14/28) = -1.39
        "shifted": [
            "diffusion.schedule=shifted_cosine",
            "diffusion.schedule_kwargs={resolution: 28, base: 14, logsnr_min: -15, logsnr_max: 15}",
        ],
        # high-noise end shifted (base 14), low-noise end unshifted (base 28)
        "interpolated": [
            "diffusion.schedule=interpolated_shifted_cosine",
            "diffusion.schedule_kwargs={resolution: 28, noise_low: 14, noise_high: 28, "
            "logsnr_min: -15, logsnr_max: 15}",
        ],
    },
    "loss": {"multiscale": ["diffusion.multiscale_min_resolution=7"]},
    # what the net outputs (the loss and its weighting stay the same): at high logsnr a v- or
    # eps-net must reproduce the noise to leave a black pixel black, an x-net outputs -1
    "prediction": {"pred_x": ["diffusion.prediction=x"], "pred_eps": ["diffusion.prediction=eps"]},
    "arch": {
        "residual_uvit": ["model.name=residual_uvit"],
        # a conv U-Net (DDPM style) of 0.20M parameters and 111 MFLOPs per forward, against the
        # base U-ViT's 0.28M and 52: 560 steps instead of 1200 for equal training FLOPs
        "unet": [
            "model.name=unet",
            "model.kwargs={in_channels: 1, resolution: 28, channels: [16, 32], num_blocks: 1, "
            "emb_dim: 64, heads: 4, num_classes: 10, label_dropout: 0.1}",
            "train.steps=560",
        ],
    },
    # with the warm-up a decay is in force only after `EMA.warmup_length(d)` updates (890 for
    # 0.99): in a 1200-step pilot every decay above 0.9926 is the base's average bit for bit, so
    # the rows that can differ are the faster decays, the raw weights and no warm-up
    "ema": {
        "ema0.9": ["optim.ema_decays=[0.9]"],
        "ema0.98": ["optim.ema_decays=[0.98]"],
        "ema0.99": ["optim.ema_decays=[0.99]"],
        "ema0.9999": ["optim.ema_decays=[0.9999]"],
        "ema-none": [],
        "ema-no-warmup": ["optim.ema_warmup=false"],
    },
}
"""Ablation group -> row name -> config overrides (dotlist) on top of the base config."""
ROWS = {name: overrides for group in GROUPS.values() for name, overrides in group.items()}
GROUP_OF = {name: group for group, rows in GROUPS.items() for name in rows}
BASE_ROW = "sig-2"
"""The row equal to the base config (the shipped model's recipe: sigmoid, bias -2)."""
RAW_WEIGHTS_ROW = "ema-none"
"""The row that scores the base row's own runs without an average (their raw weights): no
training of its own, so it costs only its scoring."""


def row_weights(row: str) -> tuple[str, bool]:
    """`(the row whose run holds the weights, ema)`: `RAW_WEIGHTS_ROW` reads the base row's run
    with `ema=False`, every other row its own run's first EMA."""
    return (BASE_ROW, False) if row == RAW_WEIGHTS_ROW else (row, True)


SAMPLERS = ("ddim", "ddpm", "dpmpp_2m")
NFE = 32
SAMPLES_FILE = "recipe_samples.npz"
"""The best sampler's samples in a row's run folder (uint8 `images`, with `--save-samples`)."""


def save_row(folder: Path, key: str, rec: dict) -> None:
    """Add one row to `<folder>/results.json` under the store's lock: parallel processes
    (`--shard`) each add their own rows without dropping the others'."""

    def merge(mine: dict, stored: dict) -> dict:
        return {**stored, "rows": {**stored.get("rows", {}), **mine}}

    locked_update(folder / RAW, {key: rec}, merge)


def save_setup(folder: Path, setup: dict) -> dict:
    """Merge this invocation's setup (machines and planned rows are united) into the store."""

    def merge(mine: dict, stored: dict) -> dict:
        old = stored.get("setup", {})
        new = {**old, **mine}
        new["machines"] = {**old.get("machines", {}), **mine["machines"]}
        new["planned"] = list(dict.fromkeys([*old.get("planned", []), *mine["planned"]]))
        new["notes"] = mine["notes"] or old.get("notes", [])
        return {**stored, "setup": new}

    return locked_update(folder / RAW, setup, merge)["setup"]


def parse_rows(text: str) -> list[str]:
    """`"weighting,shifted"` -> row names in order; unknown names are an error naming them."""
    names: list[str] = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        if item == "all":
            names += list(ROWS)
        elif item in GROUPS:
            names += list(GROUPS[item])
        elif item in ROWS:
            names.append(item)
        else:
            raise SystemExit(
                f"recipe.py: error: --rows: unknown {item!r}; groups {sorted(GROUPS)}, "
                f"rows {list(ROWS)}"
            )
    return list(dict.fromkeys(names))


def row_config(args, row: str, seed: int):
    """The row's `TrainConfig`: base config + row overrides + seed/out_dir (+ `--set`)."""
    from difflab.config import load_config

    source = row_weights(row)[0]  # the raw-weights row trains (or finds) the base row's run
    out_dir = Path(args.runs) / f"{source}_s{seed}"
    overrides = [*ROWS[source], f"train.seed={seed}", f"train.out_dir={out_dir}", *args.set]
    return load_config(args.config, overrides)


def train_row(args, row: str, seed: int) -> dict:
    """Train (or resume, or skip when finished) one row; returns its compute record."""
    import torch

    from difflab.nets import build_net
    from difflab.nets.cost import count_parameters, flops_per_forward
    from difflab.train import run_training

    cfg = row_config(args, row, seed)
    run_dir = Path(cfg.train.out_dir)
    wall_file = run_dir / "recipe_wall.json"
    spent = float(read_json(wall_file, {"seconds": 0.0})["seconds"])
    start = time.perf_counter()
    run_training(cfg, resume=True)
    spent += time.perf_counter() - start
    write_json(wall_file, {"seconds": spent})
    net = build_net(cfg.model.name, **cfg.model.kwargs)
    shape = (1, net.config.in_channels, net.config.resolution, net.config.resolution)
    images = cfg.train.steps * cfg.data.batch_size
    with torch.no_grad():
        forward = flops_per_forward(net, shape)
    return {
        "params": count_parameters(net),
        "train_images": images,
        "train_pflops": 3 * forward * images / 1e15,  # forward + backward ~ 3 forwards
        "train_seconds": round(spent, 1),
        "run_dir": str(run_dir),
    }


def score_row(args, run_dir: str, ema: bool = True) -> dict:
    """fd-lenet of `--num` samples at 32 NFE for each sampler in `--samplers` (same seed), the
    haze share and ELBO of the best sampler, optionally its Inception FID; `ema` False scores
    the raw weights."""
    from difflab.api import load, model_elbo, sample
    from difflab.eval.image_stats import haze_share

    start = time.perf_counter()
    model = load(run_dir, ema=ema, device=args.device)
    fd = lenet_scorer(args.dataset, args.device)
    fds, samples = {}, {}
    for name in args.samplers:
        gen = sample(model, num=args.num, sampler=name, steps=NFE, seed=args.sample_seed,
                     batch_size=args.batch, progress=False)  # fmt: skip
        if gen.nfe != NFE:
            raise SystemExit(f"recipe.py: error: sampler {name} spent {gen.nfe} NFE, not {NFE}")
        fds[name] = fd(gen.samples)
        samples[name] = gen.samples
    best = min(fds, key=fds.get)
    if args.save_samples and ema:  # uint8, for Inception FID elsewhere (`--fid-only`)
        import numpy as np

        from difflab.images import to_uint8_pixels

        np.savez_compressed(Path(run_dir) / SAMPLES_FILE, images=to_uint8_pixels(samples[best]))
    out = {
        "fd_lenet_by_sampler": fds,
        "best_sampler": best,
        "fd_lenet": fds[best],
        "haze": haze_share(samples[best]),
        "num_samples": args.num,
        "nfe": NFE,
    }
    out.update(model_elbo(model, dataset=args.dataset, split="test", num=args.elbo_num))
    if args.fid:
        from difflab.eval.scores import feature_metrics

        out["fid"] = feature_metrics(samples[best], ["fid"], dataset=args.dataset,
                                     device=args.device)["fid"]  # fmt: skip
    out["score_seconds"] = round(time.perf_counter() - start, 1)
    return out


def row_samples(args, rec: dict):
    """The row's best-sampler samples (uint8): the saved file (`--save-samples`), else drawn
    again with the recorded sampler and `--sample-seed` at the recorded sample count; a redrawn
    set must reproduce the recorded fd-lenet (the same samples), or this raises."""
    import numpy as np
    import torch

    source, ema = row_weights(rec["row"])
    run_dir = Path(args.runs) / f"{source}_s{rec['seed']}"
    path = run_dir / SAMPLES_FILE
    if path.is_file() and ema:  # the file holds the EMA's samples
        with np.load(path) as f:
            return torch.from_numpy(f["images"])
    from difflab.api import load, sample

    model = load(run_dir, ema=ema, device=args.device)
    gen = sample(model, num=rec["num_samples"], sampler=rec["best_sampler"], steps=NFE,
                 seed=args.sample_seed, batch_size=args.batch, progress=False)  # fmt: skip
    again = lenet_scorer(args.dataset, args.device)(gen.samples)
    if abs(again - rec["fd_lenet"]) > 1e-3 * rec["fd_lenet"]:
        raise SystemExit(f"recipe.py: error: {run_dir}: redrawn samples give fd-lenet {again:.4f}, "
                         f"the record {rec['fd_lenet']:.4f} (other seed or sampler?)")  # fmt: skip
    from difflab.images import to_uint8_pixels

    return to_uint8_pixels(gen.samples)


def fid_only(args, folder: Path, rows: dict) -> int:
    """Inception FID of each scored row's best-sampler samples (`row_samples`) against the test
    split, for the `--rows` (in their order) without one, every `--shard`-th: the GPU machine
    cannot hold the Inception file."""
    from difflab.eval.scores import feature_metrics

    index, count = (int(x) for x in args.shard.split("/"))
    order = {row: i for i, row in enumerate(parse_rows(args.rows))}
    todo = sorted((key for key, rec in rows.items() if rec.get("row") in order
                   and "fid" not in rec and "fd_lenet" in rec),
                  key=lambda key: order[rows[key]["row"]])  # fmt: skip
    for key in todo[index::count]:
        images = row_samples(args, rows[key])
        fid = feature_metrics(images, ["fid"], dataset=args.dataset, device=args.device)["fid"]
        save_row(folder, key, {**rows[key], "fid": fid, "fid_num": len(images)})
        print(f"{key}: fid={fid}", flush=True)
    write_report(folder, report_text(folder))
    return 0


FINAL_NFES = (8, 16, 32)


def lenet_scorer(dataset: str, device: str):
    """`fd(images) -> float`: fd-lenet (the dataset's LeNet) against the test split."""
    from difflab.eval.features import LENET_METRICS, get_feature_extractor
    from difflab.eval.metrics import frechet_distance
    from difflab.eval.reference import cached_reference_stats

    lenet = get_feature_extractor(LENET_METRICS[dataset], device)
    stats = cached_reference_stats(dataset, "test", lenet)
    return lambda images: frechet_distance(lenet(images), stats)


def best_level_elbo(model, args) -> dict:
    """The ELBO with the decoder level chosen on held-out training images
    (`model_elbo(..., logsnr_max="best")`), as `elbo_best_*` keys beside the schedule-end one."""
    from difflab.api import model_elbo

    best = model_elbo(model, dataset=args.dataset, split="test", num=args.elbo_num,
                      logsnr_max="best")  # fmt: skip
    return {"elbo_best_bits_per_dim": best["elbo_bits_per_dim"],
            "elbo_best_logsnr_max": best["elbo_logsnr_max"]}  # fmt: skip


def add_best_level_elbo(args, folder: str, model_file: str, command: str) -> int:
    """`--best-elbo FOLDER MODEL`: `best_level_elbo` of `MODEL` into FOLDER's final record."""
    from difflab.api import load

    model = load(model_file, device=args.device)
    args.dataset = model.config.data.name
    best = best_level_elbo(model, args)
    print(f"{folder}: {best}")
    merge = lambda mine, stored: {**stored, "final": {**stored["final"], **mine}}  # noqa: E731
    locked_update(Path(folder) / RAW, best, merge)
    record_run(folder, command, args.device)
    write_report(folder, report_text(folder))
    return 0


def final_model(args, folder: Path) -> int:
    """`--final RUN_DIR`: score a finished final-recipe run at 8/16/32 NFE with each sampler
    (fd-lenet, haze, FID with `--fid`), beside the real-data floor (the first `--num` train
    images) and its ELBO; export its EMA weights to `--export` with a provenance JSON."""
    import numpy as np

    from difflab.api import load, model_elbo, sample
    from difflab.eval.image_stats import haze_share
    from difflab.eval.reference import reference_images
    from difflab.eval.scores import feature_metrics
    from difflab.images import to_uint8_pixels
    from difflab.nets.cost import count_parameters
    from difflab.train.checkpoint import export_model, resolve_checkpoint

    ema = True if args.ema is None else args.ema
    model = load(args.final, ema=ema, device=args.device)
    fd = lenet_scorer(args.dataset, args.device)
    real = reference_images(args.dataset, "train", args.num).float() / 127.5 - 1
    floor = {"fd_lenet": fd(real), "haze": haze_share(real), "num": len(real)}
    if args.fid:
        floor["fid"] = feature_metrics(real, ["fid"], dataset=args.dataset, device=args.device)[
            "fid"
        ]
    rows, last = {}, {}
    for nfe in FINAL_NFES:
        for name in args.samplers:
            gen = sample(model, num=args.num, sampler=name, steps=nfe, seed=args.sample_seed,
                         batch_size=args.batch, progress=False)  # fmt: skip
            row = {"sampler": name, "nfe": gen.nfe, "fd_lenet": fd(gen.samples),
                   "haze": haze_share(gen.samples), "seconds": round(gen.seconds, 2)}  # fmt: skip
            if args.fid:
                row["fid"] = feature_metrics(gen.samples, ["fid"], dataset=args.dataset,
                                             device=args.device)["fid"]  # fmt: skip
            if nfe == max(FINAL_NFES):
                last[name] = gen.samples
            rows[f"{name}/{nfe}"] = row
            print(f"final {name} NFE {nfe}: {row}", flush=True)
    best = min(last, key=lambda name: rows[f"{name}/{max(FINAL_NFES)}"]["fd_lenet"])
    if args.save_samples:  # the best sampler's at the largest NFE, uint8, for FID elsewhere
        path = Path(args.final) / f"final_{best}_{max(FINAL_NFES)}.npz"
        np.savez_compressed(path, images=to_uint8_pixels(last[best]))
    ckpt = resolve_checkpoint(args.final)
    cfg = ckpt.config
    record = {
        "run": str(args.final),
        "step": ckpt.step,
        "ema": ema if ema is not True else cfg.optim.ema_decays[0],
        "images_seen": ckpt.step * cfg.data.batch_size,
        "num": args.num,
        "rows": rows,
        "real": floor,
        "machine": args.machine_name,
        "title": args.title,
        **model_elbo(model, dataset=args.dataset, split="test", num=args.elbo_num),
        **best_level_elbo(model, args),
    }
    if args.export:
        out = export_model(args.final, args.export, ema=ema)
        record["export"] = {"file": out.name, "bytes": out.stat().st_size}
        provenance = {
            "file": out.name,
            "what": f"EMA (decay {record['ema']}) weights of a class-conditional {cfg.model.name} "
            f"({count_parameters(model.net) / 1e6:.2f}M parameters), "
            f"{cfg.diffusion.prediction}-prediction, {cfg.diffusion.schedule} "
            f"schedule, {cfg.diffusion.weighting} weighting {cfg.diffusion.weighting_kwargs}; "
            "config JSON in the safetensors metadata",
            "data": f"{cfg.data.name} train, 28x28, [-1, 1]",
            "command": args.final_command,
            "steps": ckpt.step,
            "batch_size": cfg.data.batch_size,
            "images_seen": record["images_seen"],
            "wall_time_minutes": round(args.final_wall / 60, 1) if args.final_wall else None,
            "machine": machine(args.device),
            "scores": {
                k: {m: v[m] for m in ("fd_lenet", "haze", "fid") if m in v} for k, v in rows.items()
            },  # fmt: skip
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
        }
        write_json(out.with_suffix(".json"), provenance)
    update_results_key(folder, "final", record)
    write_report(folder, report_text(folder))
    return 0


def update_results_key(folder: Path, key: str, value) -> None:
    locked_update(folder / RAW, {key: value}, lambda mine, stored: {**stored, **mine})


# --------------------------------------------------------------------------------- report
def spread(values: list[float]) -> float:
    """Half the range over seeds (0 for one seed)."""
    return (max(values) - min(values)) / 2 if len(values) > 1 else 0.0


def summarize(rows: dict[str, dict]) -> dict[str, dict]:
    """`{row: {metric: (mean, half-range, n)}}` over the scored seeds of each row."""
    by_row: dict[str, list[dict]] = {}
    for rec in rows.values():
        if "fd_lenet" in rec:
            by_row.setdefault(rec["row"], []).append(rec)
    out = {}
    for row, recs in by_row.items():
        out[row] = {
            key: (statistics.fmean(v), spread(v), len(v))
            for key in ("fd_lenet", "haze", "elbo_bits_per_dim", "fid", "train_seconds")
            if (v := [r[key] for r in recs if key in r])
        }
        out[row]["samplers"] = sorted({r["best_sampler"] for r in recs})
        out[row]["pflops"] = recs[0]["train_pflops"]
        out[row]["machines"] = sorted({r["machine"] for r in recs})
    return out


def cell(stat, digits: int = 3) -> str:
    if stat is None:
        return "-"
    mean, half, n = stat
    return fmt_sig(mean, digits) + (f" ± {fmt_sig(half, 2)}" if n > 1 else "")


def verdict(row: str, summary: dict) -> str:
    """`better` / `worse` than the base row when the fd-lenet gap exceeds both rows' seed
    spreads (half-ranges); `tie` otherwise; `1 seed` when either side has a single seed."""
    if row == BASE_ROW or BASE_ROW not in summary:
        return "base" if row == BASE_ROW else "-"
    mine, base = summary[row]["fd_lenet"], summary[BASE_ROW]["fd_lenet"]
    if mine[2] < 2 or base[2] < 2:
        return "1 seed"
    if abs(mine[0] - base[0]) <= mine[1] + base[1]:
        return "tie"
    return "better" if mine[0] < base[0] else "worse"


def ema_note(setup: dict, summary: dict) -> list[str]:
    """What the EMA rows average: under the warm-up a decay is in force only for the updates
    after `EMA.warmup_length(d)`, so in a short run every slower decay is the same average."""
    from difflab.config import load_config
    from difflab.train.ema import EMA

    rows = [row for row in GROUPS["ema"] if row in summary]
    if not rows or not setup.get("config"):
        return []
    parts, same = [], []
    for row in [BASE_ROW, *rows]:
        cfg = load_config(setup["config"], ROWS[row])  # the row's own decay, warm-up, length
        optim, steps, decay = cfg.optim, cfg.train.steps, cfg.optim.ema_decays[0]
        if row == RAW_WEIGHTS_ROW:
            parts.append(f"`{row}` scores the base runs' raw weights (no average)")
        elif not optim.ema_warmup:
            parts.append(f"`{row}` averages with {decay:g} from the first update")
        else:
            in_force = max(0, steps - EMA.warmup_length(decay))
            parts.append(f"`{row}` ({decay:g}): in force for the last {in_force} of {steps}")
            if in_force == 0 and row != BASE_ROW:
                same.append(f"`{row}`")
    text = ("EMA rows: with the warm-up (`min(d, (1 + n) / (10 + n))`, docs/methods/recipe.md) "
            "a decay is used only from update `EMA.warmup_length(d)` on. " + "; ".join(parts)
            + ".")  # fmt: skip
    if same:
        text += (f" So {', '.join(same)} average{'s' if len(same) == 1 else ''} exactly the "
                 f"weights of `{BASE_ROW}` (seed 0: the same samples and scores): a tie by "
                 "construction, not a measurement of the decay.")  # fmt: skip
    return ["", text]


def final_section(final: dict | None) -> list[str]:
    """The final model's table: fd-lenet / haze (/ FID) by sampler and NFE, the real floor."""
    if not final:
        return []
    rows = final["rows"]
    samplers = list(dict.fromkeys(r["sampler"] for r in rows.values()))
    nfes = sorted({r["nfe"] for r in rows.values()})
    metrics = [m for m in ("fid", "fd_lenet", "haze") if any(m in r for r in rows.values())]
    lines = ["", f"## Final model: `{final['run']}` (step {final['step']}, "
             f"{final['images_seen']} images, {final['machine']})", "",
             f"{final['num']} samples per cell; ELBO {fmt_sig(final['elbo_bits_per_dim'])} "
             f"bits/dim (decoder at logsnr {fmt_sig(final['elbo_logsnr_max'])}"
             + (f"; {fmt_sig(final['elbo_best_bits_per_dim'])} at logsnr "
                f"{fmt_sig(final['elbo_best_logsnr_max'])}, the level chosen on held-out "
                "training images" if "elbo_best_bits_per_dim" in final else "") + ")"
             + (f"; EMA decay {final['ema']}" if "ema" in final else "") + ".",
             ""]  # fmt: skip
    for metric in metrics:
        table = [[name] + [fmt_sig(rows[f"{name}/{n}"][metric]) if f"{name}/{n}" in rows else "-"
                           for n in nfes] for name in samplers]  # fmt: skip
        floor = fmt_sig(final["real"][metric]) if metric in final["real"] else "-"
        table.append([f"real train images ({final['real']['num']})", *[floor] * len(nfes)])
        lines += [f"{metric.replace('_', '-')}:", "",
                  *markdown_table(["sampler", *(f"NFE {n}" for n in nfes)], table), ""]  # fmt: skip
    if "export" in final:
        lines += [f"Exported: `{final['export']['file']}` ({final['export']['bytes']} bytes)."]
    return lines


FID_FILE = "fid10k.json"
"""`difflab eval --out` records of a final model at 10k samples (Inception FID), if any."""


def fid_section(folder: Path) -> list[str]:
    """The `difflab eval` records in `folder/fid10k.json` as a table (sampler, NFE, FID, ...);
    a `difflab eval real` record is the real-data floor's row."""
    records = read_json(folder / FID_FILE, [])
    if not records:
        return []
    head = ["sampler", "NFE", "samples", "FID", "fd-lenet", "precision (LeNet)", "recall (LeNet)",
            "haze", "sampling s", "feature s"]  # fmt: skip
    table = [[f"`{r['sampler']}`" if "sampler" in r else f"real {r['real']} images",
              r.get("nfe", "-"), r["num"], fmt_sig(r.get("fid")),
              fmt_sig(r.get("fd-lenet")), fmt_sig(r.get("pr-lenet_precision")),
              fmt_sig(r.get("pr-lenet_recall")), fmt_sig(r.get("haze")),
              fmt_sig(r.get("sampling_seconds")), fmt_sig(r.get("feature_seconds"))]
             for r in records]  # fmt: skip
    return [
        "",
        f"## Inception FID against the 10k {records[0]['reference']} images "
        f"(`{FID_FILE}`, `difflab eval`)",
        "",
        *markdown_table(head, table, "llrrrrrrrr"),
    ]


def final_report(folder: Path, data: dict) -> str:
    """A folder holding only a final model (`--final`): its tables, the 10k FID, the notes."""
    final = data["final"]
    lines = [f"# {final.get('title') or 'Final recipe model: ' + folder.name}", ""]
    for note in final.get("notes", []):
        lines += [note, ""]
    lines += final_section(final)[1:] + fid_section(folder)
    return "\n".join([*lines, ""])


def report_text(folder: str | Path) -> str:
    data = read_json(Path(folder) / RAW, {})
    setup, rows = data.get("setup", {}), data.get("rows", {})
    if not setup and not rows and "final" in data:
        return final_report(Path(folder), data)
    summary = summarize(rows)
    lines = [f"# Recipe ablation: {setup.get('title', Path(folder).name)}", ""]
    for note in setup.get("notes", []):
        lines += [note, ""]
    lines += [f"Base config `{setup.get('config')}`; every row = base + the overrides listed, "
              f"{setup.get('train_images')} training images (steps x batch). fd-lenet: "
              f"{setup.get('num')} samples at {NFE} NFE with the best of "
              f"{', '.join(setup.get('samplers', []))} (same noise seed), a Frechet distance in "
              "difflab's LeNet features, not FID; haze: share of the outer 4-pixel border "
              "that is not black (`difflab.eval.image_stats.haze_share`); ELBO: bits/dim on "
              f"{setup.get('elbo_num')} test images. `a ± b`: mean ± half-range over seeds. "
              f"Verdict vs `{BASE_ROW}` (the shipped recipe): better/worse only when the gap "
              "exceeds both seed spreads.", ""]  # fmt: skip
    if "real_haze" in setup:
        lines += [f"Real {setup.get('dataset')} test images: haze {fmt_sig(setup['real_haze'])}.",
                  ""]  # fmt: skip
    head = ["group", "row", "seeds", "fd-lenet", "best sampler", "haze", "ELBO bits/dim",
            "train PFLOPs", "train s", "verdict", "machine"]  # fmt: skip
    has_fid = any("fid" in s for s in summary.values())
    if has_fid:
        counts = sorted({r["fid_num"] for r in rows.values() if "fid_num" in r})
        lines += [f"FID: Inception FID of the same best-sampler samples "
                  f"({'/'.join(map(str, counts)) or setup.get('num')} per row) against the "
                  f"{setup.get('dataset')} test split (`recipe.py --fid-only`); at this sample "
                  "count it is biased upwards: compare rows, not other tables.", ""]  # fmt: skip
        head.insert(4, "FID")
    table = []
    for group, names in GROUPS.items():
        for row in names:
            if row not in summary:
                continue
            s = summary[row]
            line = [group, f"`{row}`", str(s["fd_lenet"][2]), cell(s["fd_lenet"]),
                    "/".join(s["samplers"]), cell(s.get("haze"), 2),
                    cell(s.get("elbo_bits_per_dim")), fmt_sig(s["pflops"], 3),
                    cell(s.get("train_seconds"), 3), verdict(row, summary),
                    ", ".join(s["machines"])]  # fmt: skip
            if has_fid:
                line.insert(4, cell(s.get("fid")))
            table.append(line)
    lines += markdown_table(head, table) if table else ["No row scored yet."]
    lines += ema_note(setup, summary)
    lines += ["", "Overrides per row:", ""]
    lines += [f"- `{row}`: `{' '.join(ROWS[row])}`" if row != RAW_WEIGHTS_ROW else
              f"- `{row}`: none (the `{BASE_ROW}` runs, scored with `ema=False`)"
              for row in ROWS if row in summary]  # fmt: skip
    lines += final_section(data.get("final"))
    missing = [row for row in setup.get("planned", []) if row not in summary]
    if missing:
        lines += ["", f"Planned but not run (yet): {', '.join(missing)}."]
    machines = [f"`{k}`: {v.get('gpu') or v.get('cpu')}, {v.get('cores')} cores, "
                f"{v.get('torch_threads')} torch threads, torch {v.get('torch')}"
                for k, v in setup.get("machines", {}).items()]  # fmt: skip
    lines += ["", "Machines: " + "; ".join(machines) + ".", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/recipe_mnist_pilot.yaml")
    p.add_argument("--dataset", default=None, help="scoring dataset (default: the config's)")
    p.add_argument("--rows", default="weighting")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--set", action="append", default=[], help="extra override for every row")
    p.add_argument("--runs", default=None, help="run folders (default runs/recipe/<study>)")
    p.add_argument("--out", default="results/recipe/mnist_pilot")
    p.add_argument("--title", default=None)
    p.add_argument("--note", action="append", default=[], help="a line for the report")
    p.add_argument("--num", type=int, default=2000, help="samples per sampler")
    p.add_argument("--elbo-num", type=int, default=500)
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=500, help="sampling batch size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--machine-name", default=None, help="label of this machine in the table")
    p.add_argument("--fid", action="store_true", help="also Inception FID (difflab[fid])")
    p.add_argument("--train-only", action="store_true", help="train, do not score")
    p.add_argument("--shard", default="0/1", help="I/N: this process runs every N-th row from I")
    p.add_argument("--save-samples", action="store_true", help=f"keep {SAMPLES_FILE} per row")
    p.add_argument(
        "--fid-only",
        action="store_true",
        help="add Inception FID of the best sampler's samples (saved, or drawn again), no training",
    )
    p.add_argument("--report", metavar="FOLDER", help="only re-render FOLDER's README.md")
    p.add_argument("--final", metavar="RUN_DIR", help="score (and --export) a final-recipe run")
    p.add_argument("--export", default=None, help="with --final: the .safetensors to write")
    p.add_argument("--final-command", default="", help="with --final: how the run was trained")
    p.add_argument("--final-wall", type=float, default=0.0, help="its training wall seconds")
    p.add_argument("--ema", type=float, default=None, help="with --final: the EMA decay scored "
                   "and exported (default: the run's first)")  # fmt: skip
    p.add_argument("--best-elbo", nargs=2, metavar=("FOLDER", "MODEL"),
                   help="add MODEL's ELBO at the held-out-chosen decoder level to FOLDER's final "
                   "record (records made before the level was reported)")  # fmt: skip
    args = p.parse_args(argv)
    if args.report:
        write_report(args.report, report_text(args.report))
        return 0

    import torch

    from difflab.config import load_config

    torch.set_num_threads(args.threads)
    base = load_config(args.config, args.set)
    args.dataset = args.dataset or base.data.name
    args.samplers = [s for s in args.samplers.split(",") if s]
    folder = Path(args.out)
    args.runs = args.runs or str(ROOT / "runs" / "recipe" / folder.name)
    rows, seeds = parse_rows(args.rows), [int(s) for s in args.seeds.split(",")]
    data = read_json(folder / RAW, {})
    label = args.machine_name = args.machine_name or (
        "gpu" if args.device.startswith("cuda") else "cpu"
    )
    if args.fid_only:
        code = fid_only(args, folder, data.get("rows", {}))
        record_run(folder, command_line(argv, "recipe.py"), args.device)
        return code
    if args.best_elbo:
        return add_best_level_elbo(args, *args.best_elbo, command_line(argv, "recipe.py"))
    if args.final:
        code = final_model(args, folder)
        record_run(folder, command_line(argv, "recipe.py"), args.device)
        return code
    setup = {
        "title": args.title or data.get("setup", {}).get("title") or folder.name,
        "config": args.config,
        "dataset": args.dataset,
        "train_images": base.train.steps * base.data.batch_size,
        "num": args.num,
        "elbo_num": args.elbo_num,
        "samplers": args.samplers,
        "notes": args.note,
        "planned": rows,
        "machines": {label: machine(args.device)},
    }
    if "real_haze" not in data.get("setup", {}):
        from difflab.eval.image_stats import haze_share
        from difflab.eval.reference import reference_images

        setup["real_haze"] = haze_share(reference_images(args.dataset, "test"))
    save_setup(folder, setup)
    todo = [(row, seed) for seed in seeds for row in rows]
    index, count = (int(x) for x in args.shard.split("/"))
    for row, seed in todo[index::count]:
        key = f"{row}/s{seed}"
        done = read_json(folder / RAW, {}).get("rows", {}).get(key, {})
        if "fd_lenet" in done or (args.train_only and done):
            print(f"{key}: done, skipped", flush=True)
            continue
        rec = {"row": row, "group": GROUP_OF[row], "seed": seed, "machine": label,
               "overrides": ROWS[row], **train_row(args, row, seed)}  # fmt: skip
        if not args.train_only:
            rec.update(score_row(args, rec["run_dir"], ema=row_weights(row)[1]))
        save_row(folder, key, rec)
        write_report(folder, report_text(folder))
        shown = ("fd_lenet", "best_sampler", "haze", "elbo_bits_per_dim", "train_seconds")
        print(f"{key}: " + ", ".join(f"{k}={rec[k]}" for k in shown if k in rec), flush=True)
    record_run(folder, command_line(argv, "recipe.py"), args.device)
    write_report(folder, report_text(folder))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
