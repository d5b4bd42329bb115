"""Few-step students by distillation (MCM, moment matching) against their many-step teacher.

Setting 1, `oracle` (CPU): the teacher is the exact posterior mean of an image-like Gaussian
mixture (`GaussianMixtureOracle.image_like((1, 8, 8))`, 8 components, DCT power-law spectra),
so teacher rows need no training and every metric is exact: the Frechet distance of the samples'
moments to the mixture's exact mean/covariance (`exact_frechet`) and the total variation between
the mixture weights and the samples' component frequencies (`mode_weight_tv`). Stages:

    teacher   the oracle with each sampler at NFE 8/16/32 (and 256 for DDIM/DPM-Solver++(2M))
    init      a small MLP net regressed onto the oracle's denoiser: the students' starting point
              (it plays the role of the pretrained diffusion model a student is copied from)
    students  MCM-CD, MCM-CT, MMD (alternating) and MMD (parameter space, Adam / no
              preconditioner) at 1/2/4/8 steps, each for `--student-steps-budget` training steps

Every stage caches its runs under `--work-dir` (checkpointed, resumable) and its numbers in
`<work-dir>/oracle.json`, so the script can be re-run after an interruption.

Setting 2, `--teacher CKPT` (MNIST, the shipped teacher): the teacher is a trained checkpoint;
students are distilled with `difflab.methods.distill.run_distillation` and scored with the
feature-based Frechet distance (`difflab.eval`); the lead runs it with a larger budget.

    python benchmarks/distill.py oracle                   # all stages -> results/distill.md|json
    python benchmarks/distill.py oracle --stages teacher  # only the teacher rows
    python benchmarks/distill.py mnist --teacher src/difflab/assets/mnist_uvit.safetensors
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fcntl
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from difflab.config import TrainConfig, config_from_dict
from difflab.data import make_dataset
from difflab.diffusion.losses import sigmoid_weight, v_mse_weight, weighted_x_loss
from difflab.diffusion.oracle import GaussianMixtureOracle
from difflab.diffusion.parameterization import as_denoiser, diffuse
from difflab.diffusion.schedules import CosineSchedule
from difflab.eval.oracle_metrics import exact_frechet, mode_weight_tv
from difflab.methods.consistency import MCMConfig
from difflab.methods.distill import (
    OracleTeacher,
    Teacher,
    build_distillation,
    sample_student,
)
from difflab.methods.moment_matching import MMDConfig
from difflab.nets.layers import fourier_features
from difflab.sampling import DEFAULT_GRIDS, default_grid, get_sampler
from difflab.sampling.generate import generate
from difflab.train import Checkpoint, Trainer, list_checkpoints
from difflab.train.allocator import apply_malloc_fix

ROOT = Path(__file__).resolve().parents[1]
ORACLE = {"shape": (1, 8, 8), "num_components": 8, "seed": 0}
GRID_BUDGET = 1000  # student training steps of the main table; other budgets get own tables
TEACHER_SAMPLERS = ("ddim", "ddpm", "addim", "dpmpp_2m", "dpmpp_3m", "unipc", "heun", "cov_ddim")
TEACHER_NFES = (1, 2, 4, 8, 16, 32)
TEACHER_LONG = ("ddim", "dpmpp_2m")  # also at 256 NFE (the near-exact reference)
STUDENT_STEPS = (1, 2, 4, 8)
WEIGHTING = {"name": "sigmoid", "bias": -2.0}
N_TEACHER_END = MCMConfig.n_teacher_end  # the paper's final annealed N_teacher (1280)


# --------------------------------------------------------------------------- a small student net


@dataclass(frozen=True)
class MLPConfig:
    in_channels: int = 1
    resolution: int = 8
    width: int = 256
    depth: int = 4
    num_classes: int = 0


class MLPNet(nn.Module):
    """A residual MLP with the difflab net contract `net(z, logsnr, labels=None)`: pixels in,
    FiLM conditioning on Fourier features of `tanh(logsnr / 10)`. On 8x8 data it trains ~6x
    faster than the smallest conv U-Net on a shared CPU core."""

    def __init__(self, config: MLPConfig = MLPConfig()):
        super().__init__()
        self.config = config
        d, w = config.in_channels * config.resolution**2, config.width
        self.inp = nn.Linear(d, w)
        self.emb = nn.Sequential(nn.Linear(32, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 2 * w), nn.SiLU(), nn.Linear(2 * w, w))
            for _ in range(config.depth)
        )
        self.films = nn.ModuleList(nn.Linear(w, 2 * w) for _ in range(config.depth))
        self.out = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, d))

    def forward(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
        level = logsnr.reshape(-1).expand(z.shape[0]) if logsnr.numel() == 1 else logsnr
        u = torch.tanh(level.reshape(-1).to(z.dtype) / 10)
        emb = self.emb(fourier_features(u, 32))
        h = self.inp(z.flatten(1))
        for block, film in zip(self.blocks, self.films):
            scale, shift = film(emb).chunk(2, dim=1)
            h = h + block(h * (1 + scale) + shift)
        return self.out(h).view_as(z)


# --------------------------------------------------------------------------- helpers


def save_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def merge_stored(ours: dict, stored: dict) -> None:
    """Add to `ours`, in place, what `stored` (the results on disk) has and `ours` lacks: nested
    dicts merge key by key, lists keep the stored items then ours, any other value stays ours.
    In place, so the row dicts a running stage holds stay part of `ours`."""
    for key, value in stored.items():
        mine = ours.get(key)
        if key not in ours:
            ours[key] = value
        elif isinstance(mine, dict) and isinstance(value, dict):
            merge_stored(mine, value)
        elif isinstance(mine, list) and isinstance(value, list):
            mine[:] = value + [item for item in mine if item not in value]


def save_shared_json(path: Path, data: dict) -> None:
    """Merge `data` into the JSON file at `path` under an exclusive lock, so several benchmark
    processes can share one work dir (e.g. two student runs on two cores) without one
    overwriting the rows of the other; `data` becomes the merged result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = json.loads(path.read_text()) if path.is_file() else {}
        merge_stored(data, stored)
        save_json(path, data)


def score(samples: Tensor, oracle: GaussianMixtureOracle) -> dict:
    return {
        "frechet": exact_frechet(samples, oracle),
        "mode_tv": mode_weight_tv(samples, oracle),
    }


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# --------------------------------------------------------------------------- stage: teacher


def grid_label(sampler: str) -> str:
    """The name of `sampler`'s default grid (`difflab.sampling.DEFAULT_GRIDS`)."""
    choice = DEFAULT_GRIDS.get(sampler, "uniform_t")
    return getattr(choice, "label", str(choice))


def run_sampler(denoise, sampler: str, logsnrs: Tensor, shape, args) -> Tensor:
    """`args.samples` samples from the same initial noise (seed `args.seed`), in batches
    (inference mode unless the sampler takes JVPs)."""
    gen = torch.Generator().manual_seed(args.seed)
    z = torch.randn(args.samples, *shape, generator=gen)
    spec = get_sampler(sampler)
    with torch.inference_mode(mode=not spec.jvps(len(logsnrs) - 1)):
        return torch.cat([spec.fn(denoise, b, logsnrs, generator=gen) for b in z.split(1000)])


def teacher_rows(oracle, schedule, results: dict, args, save) -> None:
    """The oracle with every sampler on its default grid; rows are recomputed when a sampler's
    default grid changes."""
    rows = results.setdefault("teacher", {})
    plan = [(s, n) for n in TEACHER_NFES for s in TEACHER_SAMPLERS]
    plan += [(s, 256) for s in TEACHER_LONG]
    for sampler, nfe in plan:
        key = f"{sampler}@{nfe}"
        if rows.get(key, {}).get("grid") == grid_label(sampler):
            continue
        spec = get_sampler(sampler)
        steps = max(s for s in range(1, nfe + 1) if spec.nfe(s) <= nfe)
        start = time.perf_counter()
        logsnrs = default_grid(sampler, schedule, steps)
        x = run_sampler(oracle.denoise, sampler, logsnrs, oracle.shape, args)
        rows[key] = {
            "sampler": sampler, "nfe": spec.nfe(steps), "steps": steps,
            "grid": grid_label(sampler), **score(x.float(), oracle),
            "seconds": time.perf_counter() - start,
        }  # fmt: skip
        print(f"teacher {key:>14}: FD {rows[key]['frechet']:.4f}  TV {rows[key]['mode_tv']:.3f}")
        save()
    if "exact_samples" not in results:
        x, _ = oracle.sample(args.samples, torch.Generator().manual_seed(args.seed))
        results["exact_samples"] = score(x.float(), oracle)
        save()


# --------------------------------------------------------------------------- stage: init


def run_config(out_dir: Path, steps: int, args, **optim) -> TrainConfig:
    """A `TrainConfig` on the oracle's samples (`gaussian_mixture`, the same mixture)."""
    return config_from_dict(
        {
            "data": {
                "name": "gaussian_mixture",
                "kwargs": {"num_samples": 50_000, **ORACLE, "shape": list(ORACLE["shape"])},
                "batch_size": args.batch,
            },
            "diffusion": {"prediction": "v", "weighting": WEIGHTING["name"],
                          "weighting_kwargs": {"bias": WEIGHTING["bias"]}},
            "optim": {"warmup_steps": 50, "grad_clip": 1.0, **optim},
            "train": {
                "steps": steps, "seed": args.seed, "ckpt_every": 250, "log_every": 50,
                "keep_last": 1, "out_dir": str(out_dir), "precision": "fp32", "compile": False,
                "tensorboard": False, "progress": False,
            },
        }
    )  # fmt: skip


def regression_loss_fn(oracle: GaussianMixtureOracle, schedule):
    """Regress the net's `x_hat` onto the oracle's exact one (v-MSE weighting, `t ~ U(0, 1)`):
    the same optimum as the diffusion loss on the oracle's samples, without its target noise."""

    def loss_fn(models, batch, generator):
        x, _ = batch
        t = torch.rand(x.shape[0], generator=generator, dtype=torch.float64)
        level = schedule.logsnr(t).float()
        z = diffuse(x, torch.randn(x.shape, generator=generator), level)
        with torch.no_grad():
            target = oracle.denoise(z, level)
        x_hat = as_denoiser(models["net"], "v")(z, level)
        return weighted_x_loss(target, x_hat, level, 1.0 / torch.sigmoid(level))

    return loss_fn


def sample_net(denoise, oracle, schedule, sampler: str, steps: int, args) -> Tensor:
    return generate(
        lambda labels=None: denoise, oracle.shape, schedule, num=args.samples, sampler=sampler,
        steps=steps, seed=args.seed, batch_size=2000, progress=False,
    ).samples  # fmt: skip


def init_stage(oracle, schedule, results: dict, args, save) -> nn.Module:
    """Train (or resume) the MLP that every student starts from; score it with DDIM/DDPM."""
    run = Path(args.work_dir) / "init"
    cfg = run_config(run, args.init_steps, args, lr=1e-3, ema_decays=[0.999])
    torch.manual_seed(args.seed)
    net = MLPNet(MLPConfig(width=args.width, depth=args.depth))
    dataset = make_dataset(cfg.data.name, cfg.data.split, **cfg.data.kwargs)
    trainer = Trainer(cfg, net, dataset, loss_fn=regression_loss_fn(oracle, schedule),
                      sample_fn=lambda *a: None)  # fmt: skip
    ckpt = list_checkpoints(run)
    trained = not ckpt or int(ckpt[-1].name.split("_")[1]) < args.init_steps
    if trained:
        start = time.perf_counter()
        trainer.fit(resume=True)
        results.setdefault("init_meta", {})["train_seconds_last_call"] = time.perf_counter() - start
    else:
        trainer.load(Checkpoint(ckpt[-1]))
    init = trainer.ema.average().eval()
    rows = results.setdefault("init", {})
    denoise = as_denoiser(init, "v")
    earlier = results.get("init_meta", {}).get("scored_samples", args.samples)
    for key in args.init_rows:
        sampler, steps = key.split("@")
        if key in rows and rows[key].get("samples", earlier) == args.samples:
            continue  # scored at this sample count already
        with torch.inference_mode():
            x = sample_net(denoise, oracle, schedule, sampler, int(steps), args)
        rows[key] = score(x, oracle) | {"samples": args.samples}
        print(f"init {key:>10}: FD {rows[key]['frechet']:.4f}  TV {rows[key]['mode_tv']:.3f}")
        save()
    meta = {"steps": args.init_steps, "batch": args.batch, "width": args.width,
            "depth": args.depth, "parameters": sum(p.numel() for p in init.parameters()),
            "lr": 1e-3, "ema": 0.999}  # fmt: skip
    stored = results.setdefault("init_meta", {})
    # a loaded init keeps the record of how it was trained (a students run may use another batch)
    stored.update(meta if trained else {k: v for k, v in meta.items() if k not in stored})
    save()
    return init


# --------------------------------------------------------------------------- stage: students


def student_methods(args) -> dict:
    """Name -> (k -> method config). MCM anneals `N_teacher` 64 -> `--n-teacher-end` (paper:
    1280) over the whole budget."""
    anneal = {"n_teacher_start": 64, "n_teacher_end": args.n_teacher_end,
              "anneal_steps": args.student_budget}  # fmt: skip
    return {
        "mcm-cd": lambda k: MCMConfig(k, "cd", **anneal),
        "mcm-ct": lambda k: MCMConfig(k, "ct", **anneal),
        "mmd": lambda k: MMDConfig(
            k, "alternating", aux_teacher_weight=args.aux_teacher_weight, aux_steps=args.aux_steps
        ),
        "mmd-anchored": lambda k: MMDConfig(k, "alternating", aux_teacher_weight=1.0),
        "mmd-param-adam": lambda k: MMDConfig(k, "param", preconditioner="adam"),
        "mmd-param": lambda k: MMDConfig(k, "param", preconditioner="none"),
    }


def students_key(budget: int, decay: str = "constant") -> str:
    """Where the students of a training budget and learning-rate decay are stored."""
    suffix = "" if decay == "constant" else f"_{decay}"
    return "students" if (budget, suffix) == (GRID_BUDGET, "") else f"students_{budget}{suffix}"


def method_lr(args, name: str) -> float:
    """The learning rate of method `name`: `--method-lr name=lr`, else `--student-lr`."""
    for item in args.method_lr:
        key, _, value = item.partition("=")
        if key == name:
            return float(value)
    return args.student_lr


def students_stage(oracle, schedule, init: nn.Module, results: dict, args, save) -> None:
    oracle_teacher = Teacher(
        OracleTeacher(oracle), "x", schedule, sigmoid_weight(WEIGHTING["bias"])
    )
    # The parameter-space version needs a teacher network: its moment conditions are the
    # gradients of the teacher's loss, one per parameter. The oracle's own parameters (mixture
    # means, log-variances, logits: ~1k) are too few to pin the student down, so by default it
    # matches the init MLP (1.7M parameters), which was trained to the oracle's denoiser with
    # the v-MSE weighting, its stationary point (see results/distill.md).
    net_teacher = Teacher(copy.deepcopy(init), "v", schedule, v_mse_weight)
    rows = results.setdefault(students_key(args.student_budget, args.lr_decay), {})
    methods = student_methods(args)
    for name in args.methods:
        use_net = name.startswith("mmd-param") and args.param_teacher == "net"
        teacher = net_teacher if use_net else oracle_teacher
        for k in args.ks:
            key = f"{name}@{k}"
            lr = method_lr(args, name)
            method_cfg = methods[name](k)
            done = rows.get(key, {})
            setting = (args.student_budget, lr, dataclasses.asdict(method_cfg),
                       "init-net" if use_net else "oracle", args.lr_decay)  # fmt: skip
            if setting == (done.get("budget"), done.get("lr"), done.get("config"),
                           done.get("teacher"), done.get("decay", "constant")):  # fmt: skip
                continue
            tag = "_net" if use_net else ""
            if args.student_budget != GRID_BUDGET:
                tag += f"_s{args.student_budget}"
            if args.lr_decay != "constant":
                tag += f"_{args.lr_decay}"
            if name.startswith("mcm") and args.n_teacher_end != N_TEACHER_END:
                tag += f"_nt{args.n_teacher_end}"
            run = Path(args.work_dir) / "students" / f"{name}{tag}_k{k}_lr{lr:g}_b{args.batch}"
            cfg = run_config(
                run,
                args.student_budget,
                args,
                lr=lr,
                betas=[0.0, 0.99],
                eps=1e-12,
                ema_decays=[args.student_ema],
                decay=args.lr_decay,
            )
            torch.manual_seed(args.seed)
            dataset = make_dataset(cfg.data.name, cfg.data.split, **cfg.data.kwargs)
            trainer = build_distillation(method_cfg, teacher, init, dataset, cfg)
            start = time.perf_counter()
            trainer.fit(resume=True)
            seconds = time.perf_counter() - start
            row = {"budget": args.student_budget, "train_seconds": seconds, "lr": lr,
                   "ema": args.student_ema, "config": dataclasses.asdict(method_cfg),
                   "teacher": "init-net" if use_net else "oracle",
                   "decay": args.lr_decay}  # fmt: skip
            for which, net in (("ema", trainer.ema.average()), ("raw", trainer.net)):
                net.eval()
                gen = torch.Generator().manual_seed(args.seed)
                z = torch.randn(args.samples, *oracle.shape, generator=gen)
                with torch.inference_mode():
                    x = sample_student(method_cfg, as_denoiser(net, "v"), z, schedule,
                                       generator=gen)  # fmt: skip
                row[which] = score(x, oracle)
            rows[key] = row
            print(
                f"student {key:>16}: FD {row['ema']['frechet']:.4f} "
                f"(raw {row['raw']['frechet']:.4f})  TV {row['ema']['mode_tv']:.3f}  "
                f"[{seconds:.0f} s]"
            )
            save()


# --------------------------------------------------------------------------- report


def best_teacher(results: dict, nfe: int, standard: bool = False) -> tuple[str, dict]:
    """The teacher's best row at `nfe`; `standard`: among the published ODE/SDE samplers only
    (without difflab's covariance-aware DDIM, which the targets were not written against)."""
    rows = [
        (k, r)
        for k, r in results.get("teacher", {}).items()
        if r["nfe"] == nfe and not (standard and r["sampler"].startswith("cov_ddim"))
    ]
    return min(rows, key=lambda kr: kr[1]["frechet"], default=("none", {"frechet": math.nan}))


def student_table(students: dict, results: dict) -> list[str]:
    lines = ["| student | lr | 1 step | 2 steps | 4 steps | 8 steps |", "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(key.split("@")[0] for key in students):
        cells, lrs = [], set()
        for k in STUDENT_STEPS:
            r = students.get(f"{name}@{k}")
            cells.append(
                "" if r is None else f"{r['ema']['frechet']:.4f} / {r['ema']['mode_tv']:.3f}"
            )
            lrs |= set() if r is None else {f"{r['lr']:g}"}
        lines.append(f"| {name} | {', '.join(sorted(lrs))} | " + " | ".join(cells) + " |")
    for standard, label in ((False, "best sampler"), (True, "best standard sampler")):
        cells = []
        for k in STUDENT_STEPS:
            key, r = best_teacher(results, k, standard)
            cells.append(f"{r['frechet']:.4f} ({key})")
        lines.append(f"| teacher, {label} at the same NFE | | " + " | ".join(cells) + " |")
    return lines


def verdict(fd: float, ref: float, tolerance: float) -> str:
    """`met` / `missed`, or a tie when the two distances differ by less than `tolerance` (the
    exact samples' own distance: the sampling-noise scale of the estimate)."""
    if abs(fd - ref) <= tolerance:
        return "tie (within the exact-sample distance)"
    return "met" if fd < ref else "missed"


def target_lines(students: dict, results: dict) -> list[str]:
    """The issue's targets: 8-step MMD/MCM-CD students no worse than the teacher's best sampler
    at 32 NFE; 4-step students better than its best at 8 NFE."""
    lines = []
    tolerance = results.get("exact_samples", {}).get("frechet", 0.0)
    for name in ("mmd", "mcm-cd"):
        for k, nfe in ((8, 32), (4, 8)):
            r = students.get(f"{name}@{k}")
            if r is None:
                continue
            fd = r["ema"]["frechet"]
            ref_key, ref = best_teacher(results, nfe)
            std_key, std = best_teacher(results, nfe, standard=True)
            lines.append(
                f"- {name} at {k} steps: FD {fd:.4f} vs teacher best at {nfe} NFE "
                f"{ref['frechet']:.4f} ({ref_key}): "
                f"**{verdict(fd, ref['frechet'], tolerance)}**"
                f"; vs the best standard sampler {std['frechet']:.4f} ({std_key}): "
                f"{'better' if fd <= std['frechet'] else 'worse'}"
                + own_architecture(fd, results, nfe)
            )
    return lines


def own_architecture(fd: float, results: dict, nfe: int) -> str:
    """The student against its own architecture trained as a diffusion model (the init net) at
    `nfe`: the paper's comparison, where the teacher is a network of the same kind."""
    rows = [(k, r) for k, r in results.get("init", {}).items() if k.endswith(f"@{nfe}")]
    if not rows:
        return ""
    key, r = min(rows, key=lambda kr: kr[1]["frechet"])
    return (f"; vs the init net (the students' architecture) {r['frechet']:.4f} ({key}): "
            f"{'better' if fd <= r['frechet'] else 'worse'}")  # fmt: skip


def oracle_report(results: dict, args) -> str:
    exact = results.get("exact_samples", {}).get("frechet", math.nan)
    lines = [
        "# Distillation on the exact-oracle teacher",
        "",
        f"Teacher: `GaussianMixtureOracle.image_like({ORACLE})` closed-form posterior mean "
        "(cosine schedule, logsnr in [-15, 15]). Metric: exact Frechet distance of "
        f"{args.samples} samples to the mixture's exact moments (lower is better; exact samples "
        f"give {exact:.4f} from sampling noise alone) and the mode-"
        "weight total variation (TV). Same initial noise (seed "
        f"{args.seed}) for every row. Machine: {results['machine']['processor']}, "
        f"{results['machine']['cpu_count']} shared cores, torch {results['machine']['torch']}.",
        "",
        "## Teacher (the exact denoiser) by sampler and NFE",
        "",
        "| sampler | " + " | ".join(f"NFE {n}" for n in (*TEACHER_NFES, 256)) + " |",
        "|---|" + "---|" * (len(TEACHER_NFES) + 1),
    ]
    for sampler in TEACHER_SAMPLERS:
        cells = []
        for n in (*TEACHER_NFES, 256):
            r = results.get("teacher", {}).get(f"{sampler}@{n}")
            cells.append("" if r is None else f"{r['frechet']:.4f} / {r['mode_tv']:.3f}")
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: Frechet distance / mode TV.", ""]
    meta = results.get("init_meta", {})
    budget_text = f"{GRID_BUDGET} steps" if results.get("students") else "the steps below"
    lines += [
        "## Students (1/2/4/8 steps) vs the teacher's best sampler",
        "",
        f"Students start from an MLP ({meta.get('parameters', '?')} parameters, width "
        f"{meta.get('width')}, depth {meta.get('depth')}) regressed onto the oracle's denoiser for "
        f"{meta.get('steps')} steps (batch {meta.get('batch')}); its own samples"
        + (f" ({meta['scored_samples']} each unless marked)" if "scored_samples" in meta else "")
        + ": "
        + ", ".join(
            f"{k} FD {v['frechet']:.4f}" + (f" ({v['samples']} samples)" if "samples" in v else "")
            for k, v in results.get("init", {}).items()
        )
        + f". Each student then trains for {budget_text} (batch {args.batch}, Adam "
        f"beta = (0, 0.99), the learning rate in the table, EMA {args.student_ema}); cells show "
        "the EMA student's Frechet distance / mode TV (raw weights in the JSON).",
        "",
    ]
    extra = sorted(k for k in results if k.startswith("students_"))
    extra.sort(key=lambda k: (int(k.split("_")[1]), k))
    for key in ("students", *extra):
        students = results.get(key, {})
        if not students:
            continue
        if key != "students":
            budget, _, decay = key.removeprefix("students_").partition("_")
            decay = f", {decay} learning-rate decay to 0" if decay else ""
            lines += [f"### Longer training: {budget} steps{decay}", ""]
        ends = {r["config"]["n_teacher_end"] for r in students.values()
                if "n_teacher_end" in r.get("config", {})}  # fmt: skip
        if ends - {N_TEACHER_END}:
            ends_text = ", ".join(str(n) for n in sorted(ends))
            lines += [f"MCM anneals `N_teacher` from 64 to {ends_text} here "
                      f"(paper: {N_TEACHER_END}).", ""]  # fmt: skip
        lines += student_table(students, results)
        lines += ["", f"Targets (a difference below the exact samples' own distance, {exact:.4f}, "
                  "is a tie):", ""] + target_lines(students, results) + [""]  # fmt: skip
    lines += [
        "Reproduce (runs and numbers are cached under `--work-dir`, so the commands resume):",
        "",
        *[f"    {c}" for c in results.get("commands", [])],
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- setting 2: MNIST


MNIST_PLAN = (("mmd", "alternating", 8), ("mmd", "alternating", 4), ("mcm", "cd", 4),
              ("mcm", "cd", 8), ("mcm", "ct", 4), ("mmd", "alternating", 1),
              ("mcm", "cd", 1))  # fmt: skip
MNIST_TEACHER = (("ddim", 8), ("ddpm", 8), ("ddim", 32), ("ddim", 256))


def mnist_scores(samples: Tensor, features: dict, real: dict) -> dict:
    """Frechet distances in each feature space against the cached MNIST test-set statistics
    (`difflab eval refstats mnist --split test`), and precision/recall (k = 3) in LeNet features
    against the test images."""
    from difflab.eval.metrics import feature_stats, frechet_distance_from_stats, precision_recall

    out = {}
    for name, extractor in features.items():
        feats = extractor(samples.clamp(-1, 1), progress=False)
        mu, cov, _ = feature_stats(feats)
        ref = real[name]
        out[name] = frechet_distance_from_stats(mu, cov, ref.mu, ref.cov)
        if name == "fd-lenet":
            pr = precision_recall(real["test-lenet"], feats)
            out["precision"], out["recall"] = pr.precision, pr.recall
    return out


def mnist_setting(args) -> dict:
    """Teacher rows and students of a trained MNIST checkpoint (`--teacher`)."""
    from difflab.eval.features import get_feature_extractor
    from difflab.eval.reference import DATASETS, load_reference_stats
    from difflab.methods.distill import run_distillation, student_sampling
    from difflab.train import load_denoiser

    if not args.teacher:
        raise SystemExit("the mnist setting needs --teacher CKPT")
    work = Path(args.work_dir) / "mnist"
    store = work / "mnist.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    results["machine"] = machine()
    command = " ".join(["python", *sys.argv])
    if command not in results.setdefault("commands", []):
        results["commands"].append(command)
    features, real = {}, {}
    for name in args.features:
        try:
            features[name] = get_feature_extractor(name)
            real[name] = load_reference_stats("mnist", "test", features[name])
        except (FileNotFoundError, ImportError, ValueError) as err:
            print(f"skipping {name}: {err}")
            features.pop(name, None)
    if "fd-lenet" in features:
        test = torch.from_numpy(DATASETS["mnist"]("test")[: args.samples])
        real["test-lenet"] = features["fd-lenet"](test, progress=False)

    def evaluate(path, sampler, steps, grid="default") -> dict:
        make, cfg = load_denoiser(path)
        net = make.net
        labels = torch.arange(args.samples) % net.config.num_classes
        shape = (net.config.in_channels, net.config.resolution, net.config.resolution)
        gen = generate(make, shape, cfg.diffusion.build_schedule(), num=args.samples,
                       sampler=sampler, steps=steps, grid=grid, labels=labels, seed=args.seed,
                       progress=False)  # fmt: skip
        return {"nfe": gen.nfe, **mnist_scores(gen.samples, features, real)}

    def first_samples(path, sampler, steps, grid="default", num=20) -> Tensor:
        """The first `num` samples of a row (same noise and labels as `evaluate`)."""
        make, cfg = load_denoiser(path)
        net = make.net
        shape = (net.config.in_channels, net.config.resolution, net.config.resolution)
        return generate(make, shape, cfg.diffusion.build_schedule(), num=num, sampler=sampler,
                        steps=steps, grid=grid, labels=torch.arange(num) % net.config.num_classes,
                        seed=args.seed, progress=False).samples  # fmt: skip

    rows = results.setdefault("teacher", {})
    teacher_plan = [(r.split("@")[0], int(r.split("@")[1])) for r in args.mnist_teacher]
    student_plan = [(m.split("-")[0], m.split("-")[1].split("@")[0], int(m.split("@")[1]))
                    for m in args.mnist_students]  # fmt: skip
    for sampler, steps in teacher_plan:
        if f"{sampler}@{steps}" not in rows:
            rows[f"{sampler}@{steps}"] = evaluate(args.teacher, sampler, steps)
            print(f"teacher {sampler}@{steps}: {rows[f'{sampler}@{steps}']}")
            save_json(store, results)
    rows = results.setdefault("students", {})
    for method, variant, k in student_plan:
        key = f"{method}-{variant}@{k}"
        lr = method_lr(args, f"{method}-{variant}")
        run = work / f"{method}_{variant}_k{k}_lr{lr:g}"
        options = {"aux_teacher_weight": args.aux_teacher_weight} if method == "mmd" else {}
        done = [int(c.name.split("_")[1]) for c in list_checkpoints(run)]
        trained = bool(done) and max(done) >= args.student_budget  # a resume only re-scores it
        start = time.perf_counter()
        run_distillation(
            method,
            args.teacher,
            k,
            variant=variant,
            out_dir=run,
            resume=True,
            options=options,
            overrides=[
                f"train.steps={args.student_budget}",
                f"data.batch_size={args.batch}",
                f"optim.lr={lr}",
                "train.progress=false",
                "train.tensorboard=false",
            ],
        )
        spec = student_sampling(run)
        seconds = time.perf_counter() - start
        before = rows.get(key, {})
        if trained and "train_seconds" in before:
            seconds = before["train_seconds"]  # keep the time of the run that trained it
        elif before.get("budget", math.inf) < args.student_budget:
            seconds += before.get("train_seconds", 0.0)  # resumed to a longer budget
        scores = evaluate(run, spec["sampler"], spec["steps"], spec["grid"])
        rows[key] = {"budget": args.student_budget, "train_seconds": seconds, "lr": lr,
                     "options": options, **scores}  # fmt: skip
        print(f"student {key}: {rows[key]}")
        save_json(store, results)
    out = Path(args.out + "_mnist")
    from difflab.eval.plots import plot_sample_rows

    images = {f"teacher {s}@{k}": first_samples(args.teacher, s, k) for s, k in teacher_plan}
    for key, row in results.get("students", {}).items():  # every student trained so far
        name, k = key.split("@")[0], int(key.split("@")[1])
        method, variant = name.split("-")
        run = work / f"{method}_{variant}_k{k}_lr{row['lr']:g}"
        spec = student_sampling(run)
        images[f"{method}-{variant} student, {k} steps"] = first_samples(
            run, spec["sampler"], spec["steps"], spec["grid"]
        )
    title = "Shipped MNIST teacher vs distilled students (same noise and labels, seed 0)"
    plot_sample_rows(images, f"{out}.png", title=title)
    save_json(Path(f"{out}.json"), {"mnist": results, "args": vars(args)})
    Path(f"{out}.md").write_text(mnist_report(results, args))
    print(f"wrote {out}.md and {out}.json")
    return results


def mnist_report(results: dict, args) -> str:
    rows = [r for part in ("teacher", "students") for r in results.get(part, {}).values()]
    names = [n for n in ("fd-lenet", "fid", "precision", "recall") if any(n in r for r in rows)]
    lines = [
        "# Distillation of the MNIST teacher",
        "",
        f"Teacher: `{args.teacher}`. {args.samples} class-balanced samples per row (seed "
        f"{args.seed}); Frechet distances against the MNIST test-set statistics, precision/recall "
        f"(k = 3) in LeNet features against the test images. Students: batch {args.batch}, "
        "their training budgets below.",
        "",
        "| model | NFE | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for part in ("teacher", "students"):
        for key, r in results.get(part, {}).items():
            cells = [f"{r[n]:.3f}" if n in r else "" for n in names]
            lines.append(f"| {part[:-1] if part == 'students' else part} {key} | {r['nfe']} | "
                         + " | ".join(cells) + " |")  # fmt: skip
    lines += ["", "Student training (shared 2-core CPU, one torch thread each):", ""]
    for key, r in results.get("students", {}).items():
        lines.append(
            f"- {key}: {r['budget']} steps, lr {r['lr']:g}, {r['train_seconds'] / 60:.0f} min"
        )
    lines += ["", "Targets (fd-lenet; the issue states them for Inception FID):", ""]
    lines += mnist_targets(results)
    lines += ["", f"Samples: `{Path(args.out).name}_mnist.png`.", "", "Reproduce:", ""]
    lines += [f"    {c}" for c in results.get("commands", [])]
    return "\n".join(lines) + "\n"


def mnist_targets(results: dict) -> list[str]:
    """8-step MMD within 10% of the teacher at 256 DDIM steps; 4-step MCM-CD better than the
    teacher at 8 DDPM and 8 DDIM steps."""
    teacher, students, out = results.get("teacher", {}), results.get("students", {}), []
    mmd, ref = students.get("mmd-alternating@8"), teacher.get("ddim@256")
    if mmd and ref:
        ok = mmd["fd-lenet"] <= 1.1 * ref["fd-lenet"]
        out.append(
            f"- MMD 8 steps {mmd['fd-lenet']:.1f} vs teacher DDIM 256 steps {ref['fd-lenet']:.1f}"
            f" (within 10%: **{'met' if ok else 'missed'}**)"
        )
    mcm = students.get("mcm-cd@4")
    refs = [(k, teacher[k]) for k in ("ddim@8", "ddpm@8") if k in teacher]
    if mcm and refs:
        ok = all(mcm["fd-lenet"] < r["fd-lenet"] for _, r in refs)
        vs = ", ".join(f"{k} {r['fd-lenet']:.1f}" for k, r in refs)
        out.append(
            f"- MCM-CD 4 steps {mcm['fd-lenet']:.1f} vs teacher {vs} "
            f"(better than both: **{'met' if ok else 'missed'}**)"
        )
    return out


# --------------------------------------------------------------------------- main


def oracle_setting(args) -> dict:
    work = Path(args.work_dir)
    oracle = GaussianMixtureOracle.image_like(**ORACLE)
    schedule = CosineSchedule()
    store = work / "oracle.json"
    results = json.loads(store.read_text()) if store.is_file() else {}

    def save() -> None:
        save_shared_json(store, results)

    results["machine"] = machine()
    if "command" in results:  # the single-command format of earlier runs
        results.setdefault("commands", []).insert(0, results.pop("command"))
    command = " ".join(["python", *sys.argv])
    if command not in results.setdefault("commands", []):
        results["commands"].append(command)
    if "teacher" in args.stages:
        teacher_rows(oracle, schedule, results, args, save)
    if "init" in args.stages or "students" in args.stages:
        init = init_stage(oracle, schedule, results, args, save)
    if "students" in args.stages:
        students_stage(oracle, schedule, init, results, args, save)
    if "report" in args.stages:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.md").write_text(oracle_report(results, args))
        save_json(Path(f"{out}.json"), {"oracle": results, "args": vars(args)})
        print(f"wrote {out}.md and {out}.json")
    return results


def main(argv: list[str] | None = None) -> int:
    apply_malloc_fix()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("setting", choices=("oracle", "mnist"))
    p.add_argument("--stages", nargs="+", default=["teacher", "init", "students", "report"])
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default="runs/bench_distill")
    p.add_argument("--out", default=str(ROOT / "results" / "distill"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--init-steps", type=int, default=4000)
    p.add_argument("--init-rows", nargs="*", default=["ddim@8", "ddim@32", "ddim@256", "ddpm@8"],
                   help="the init net's own samples to score, sampler@steps (re-scored when "
                   "--samples changes)")  # fmt: skip
    p.add_argument("--student-budget", type=int, default=1000)
    p.add_argument("--student-lr", type=float, default=2e-4)
    p.add_argument("--method-lr", nargs="*", default=[], help="per method: name=lr")
    p.add_argument("--student-ema", type=float, default=0.99)
    p.add_argument("--lr-decay", choices=("constant", "cosine", "linear"), default="constant",
                   help="students' learning rate after warmup (optim.decay)")  # fmt: skip
    p.add_argument("--n-teacher-end", type=int, default=N_TEACHER_END,
                   help="MCM: the annealed teacher discretisation's final N_teacher")  # fmt: skip
    # 0 here (the library default is 1, as in PAPERS.md): 3.5x lower FD at this budget, see md
    p.add_argument("--aux-teacher-weight", type=float, default=0.0)
    p.add_argument("--aux-steps", type=int, default=1)
    p.add_argument(
        "--methods",
        nargs="+",
        default=["mcm-cd", "mcm-ct", "mmd", "mmd-param-adam", "mmd-param", "mmd-anchored"],
    )
    p.add_argument("--ks", nargs="+", type=int, default=list(STUDENT_STEPS))
    p.add_argument("--param-teacher", choices=("net", "oracle"), default="net")
    p.add_argument("--teacher", default=None, help="mnist: the teacher checkpoint/model")
    p.add_argument("--features", nargs="+", default=["fd-lenet", "fid"])
    p.add_argument(
        "--mnist-teacher",
        nargs="+",
        default=[f"{s}@{k}" for s, k in MNIST_TEACHER],
        help="mnist: teacher rows as sampler@steps",
    )
    p.add_argument(
        "--mnist-students",
        nargs="+",
        default=[f"{m}-{v}@{k}" for m, v, k in MNIST_PLAN],
        help="mnist: students as method-variant@steps (mmd-alternating@8, mcm-cd@4, ...)",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.setting == "oracle":
        oracle_setting(args)
    else:
        mnist_setting(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
