"""Few-step students by distillation (MCM, moment matching) against their many-step teacher,
on the exact oracle (CPU).

The teacher is the exact posterior mean of an image-like Gaussian mixture
(`GaussianMixtureOracle.image_like((1, 8, 8))`, 8 components, DCT power-law spectra), so teacher
rows need no training and every metric is exact: the Frechet distance of the samples' moments to
the mixture's exact mean/covariance (`exact_frechet`) and the total variation between the
mixture weights and the samples' component frequencies (`mode_weight_tv`). Stages:

    teacher   the oracle with each sampler at NFE 1-32 (and 256 for DDIM/DPM-Solver++(2M))
    init      a small MLP net regressed onto the oracle's denoiser: the students' starting point
              (it plays the role of the pretrained diffusion model a student is copied from)
    students  MCM-CD, MCM-CT, MMD (alternating) and MMD (parameter space, Adam / no
              preconditioner) at 1/2/4/8 steps, each for `--student-budget` training steps;
              one-step EMD (`emd-k<K>`: K Langevin steps; `-nocancel`, `-xz`, `-eps` ablations)
    report    `<out>/README.md` and `<out>/results.json`

Every stage caches its runs under `--work-dir` (checkpointed, resumable) and its numbers in
`<work-dir>/oracle.json` (merged under a lock, so two student runs can share it), so the script
can be re-run after an interruption.

    python benchmarks/distill_oracle.py                    # all stages -> results/distill/
    python benchmarks/distill_oracle.py --stages teacher   # only the teacher rows
    python benchmarks/distill_oracle.py --stages report    # re-render from <work-dir>/oracle.json
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from common import (
    ROOT,
    locked_update,
    machine,
    named_value,
    read_json,
    study_folder,
)
from distill_reports import (
    GRID_BUDGET,
    N_TEACHER_END,
    ORACLE,
    STUDENT_STEPS,
    TEACHER_NFES,
    TEACHER_SAMPLERS,
    parse,
    save_study,
    study_arguments,
)
from torch import Tensor, nn

from difflab.allocator import apply_malloc_fix
from difflab.config import TrainConfig, config_from_dict
from difflab.data import make_dataset
from difflab.diffusion.losses import sigmoid_weight, v_mse_weight, weighted_x_loss
from difflab.diffusion.oracle import GaussianMixtureOracle
from difflab.diffusion.parameterization import as_denoiser, diffuse
from difflab.diffusion.schedules import CosineSchedule
from difflab.eval.oracle_metrics import exact_frechet, mode_weight_tv
from difflab.methods.consistency import MCMConfig
from difflab.methods.distill import OracleTeacher, Teacher, build_distillation, sample_student
from difflab.methods.em_distill import EMDConfig
from difflab.methods.moment_matching import MMDConfig
from difflab.nets.layers import fourier_features
from difflab.sampling import DEFAULT_GRIDS, default_grid, get_sampler
from difflab.sampling.generate import generate
from difflab.train import Checkpoint, Trainer, list_checkpoints

TEACHER_LONG = ("ddim", "dpmpp_2m")  # also at 256 NFE (the near-exact reference)
WEIGHTING = {"name": "sigmoid", "bias": -2.0}


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


def score(samples: Tensor, oracle: GaussianMixtureOracle) -> dict:
    return {
        "frechet": exact_frechet(samples, oracle),
        "mode_tv": mode_weight_tv(samples, oracle),
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
        **{f"emd-k{n}": (lambda k, n=n: EMDConfig(k, mcmc_steps=n)) for n in (0, 4, 8, 16)},
        "emd-k4-nocancel": lambda k: EMDConfig(k, mcmc_steps=4, noise_cancel=False),
        "emd-k4-xz": lambda k: EMDConfig(k, "x_z", mcmc_steps=4),
        "emd-k4-eps": lambda k: EMDConfig(k, "eps", mcmc_steps=4),
    }


def students_key(budget: int, decay: str = "constant") -> str:
    """Where the students of a training budget and learning-rate decay are stored."""
    suffix = "" if decay == "constant" else f"_{decay}"
    return "students" if (budget, suffix) == (GRID_BUDGET, "") else f"students_{budget}{suffix}"


def method_lr(args, name: str) -> float:
    """The learning rate of method `name`: `--method-lr name=lr`, else `--student-lr`."""
    return float(named_value(args.method_lr, name, args.student_lr))


def students_stage(oracle, schedule, init: nn.Module, results: dict, args, save) -> None:
    oracle_teacher = Teacher(
        OracleTeacher(oracle), "x", schedule, sigmoid_weight(WEIGHTING["bias"])
    )
    # The parameter-space version needs a teacher network: its moment conditions are the
    # gradients of the teacher's loss, one per parameter. The oracle's own parameters (mixture
    # means, log-variances, logits: ~1k) are too few to pin the student down, so by default it
    # matches the init MLP (1.7M parameters), which was trained to the oracle's denoiser with
    # the v-MSE weighting, its stationary point (see results/distill/README.md).
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


# --------------------------------------------------------------------------- main


def oracle_setting(args) -> dict:
    work = Path(args.work_dir)
    oracle = GaussianMixtureOracle.image_like(**ORACLE)
    schedule = CosineSchedule()
    store = work / "oracle.json"
    results = read_json(store, {})

    def save() -> None:
        locked_update(store, results, sort_keys=True)

    results["machine"] = machine()
    if "command" in results:  # the single-command format of earlier runs
        results.setdefault("commands", []).insert(0, results.pop("command"))
    command = args.command
    if command not in results.setdefault("commands", []):
        results["commands"].append(command)
    if "teacher" in args.stages:
        teacher_rows(oracle, schedule, results, args, save)
    if "init" in args.stages or "students" in args.stages:
        init = init_stage(oracle, schedule, results, args, save)
    if "students" in args.stages:
        students_stage(oracle, schedule, init, results, args, save)
    if "report" in args.stages:
        save_study(study_folder(args.out), "oracle", results, args)
    return results


def main(argv: list[str] | None = None) -> int:
    apply_malloc_fix()
    p = study_arguments(__doc__.splitlines()[0], ROOT / "results" / "distill")
    p.add_argument("--stages", nargs="+", default=["teacher", "init", "students", "report"])
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
    # 0 here (the library default is 1, as in the paper): 3.5x lower FD at this budget
    p.add_argument("--aux-teacher-weight", type=float, default=0.0)
    p.add_argument("--aux-steps", type=int, default=1)
    p.add_argument(
        "--methods",
        nargs="+",
        default=["mcm-cd", "mcm-ct", "mmd", "mmd-param-adam", "mmd-param", "mmd-anchored"],
    )
    p.add_argument("--ks", nargs="+", type=int, default=list(STUDENT_STEPS))
    p.add_argument("--param-teacher", choices=("net", "oracle"), default="net")
    oracle_setting(parse(p, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
