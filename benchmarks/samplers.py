"""Few-step samplers against diffusers' schedulers on the same denoiser.

Two denoisers (one per run):

- `--denoiser oracle` (default): the exact posterior mean of an image-like Gaussian mixture
  (`GaussianMixtureOracle.image_like((1, 16, 16))`: 8 components, DCT power-law spectra). Metrics
  against the *exact* moments: Frechet distance (`exact_frechet`), per radial DCT band variance
  ratio (sample / exact; the highest band is reported), mode-weight total variation.
- `--denoiser checkpoint PATH`: a trained model (`difflab.train.load_denoiser`); metrics: Frechet
  distances in the features of `--features` (fd-lenet and/or fid) against cached MNIST statistics.

Every sampler runs at each NFE of `--nfe` (paper convention: a forward pass with its JVP is one
evaluation; Heun takes the largest `2 steps - 1 <= NFE`) from the same initial noise. Peers are
diffusers' DDIM, DPM-Solver++(2M) with and without Karras sigmas, UniPC and Heun on the same
denoiser through `difflab.sampling.diffusers_adapter`. The run also measures the cost of a JVP in
forward passes (oracle and a small U-ViT), compares at equal compute and at equal measured wall
time, checks that our DPM-Solver++(2M) agrees with diffusers' on the same grid, studies the grid
families and the covariance-aware sampler's options, and measures the per-step sampler overhead.

    python benchmarks/samplers.py                                   # the oracle, 4000 samples
    python benchmarks/samplers.py --num 500 --nfe 4 8 --no-ablations  # a quick smoke run
    python benchmarks/samplers.py --denoiser checkpoint runs/mnist_uvit --num 10000 \\
        --nfe 8 10 --features fd-lenet fid --out results/samplers_mnist

Writes `<out>.md`, `<out>.json` and `<out>.png` (default `results/samplers`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from difflab.diffusion.dct import dct_matrix
from difflab.diffusion.guidance import guided_denoiser
from difflab.diffusion.oracle import GaussianMixtureOracle
from difflab.diffusion.parameterization import Denoise, alpha_sigma
from difflab.diffusion.schedules import CosineSchedule, Schedule
from difflab.eval.oracle_metrics import oracle_report
from difflab.sampling import (
    DEFAULT_GRIDS,
    GridChoice,
    VarianceTable,
    get_sampler,
    measure_posterior_spectrum,
    sample_cov_ddim,
)

NFES = (4, 6, 8, 10, 16, 32)
GRID_FAMILIES = ("uniform_t", "edm", "uniform_logsnr")
F64 = torch.float64


# ----------------------------------------------------------------------------- the exact denoiser
class MixtureDenoiser:
    """`oracle.denoise` for one level per call, by matrix products: per component `k` the
    Gaussian log-likelihood of the DCT coefficients `c` is a quadratic form
    `sum_i (c_i - a m_ki)^2 w_ki` with `w = 1 / (a^2 lam + s^2)`, i.e. `c^2 @ w^T - 2 a c @ (m w)^T
    + a^2 sum m^2 w`, and `E[x|z] = F^T (r @ (m - a g m) + c * (r @ g))`, `g = a lam w`. Equal to
    `oracle.denoise` (checked at start-up) and about 50x faster at a batch of 4000; it is
    forward-mode differentiable, so `cov_ddim`'s JVP goes through it."""

    def __init__(self, oracle: GaussianMixtureOracle):
        if oracle.basis != "dct":
            raise ValueError("MixtureDenoiser needs a DCT-basis oracle")
        self.oracle = oracle
        self.m, self.lam = oracle._m, oracle._lam  # [K, d] in the basis
        self.log_w = torch.log(oracle.weights)
        h, w = oracle.shape[-2:]
        self.mh, self.mw = dct_matrix(h), dct_matrix(w)

    def __call__(self, z: Tensor, logsnr: Tensor) -> Tensor:
        level = logsnr.reshape(-1)[0].double()
        a, s = alpha_sigma(level)
        c = (self.mh @ z.double() @ self.mw.T).flatten(1)
        w = 1.0 / (a**2 * self.lam + s**2)
        quad = (c * c) @ w.T - 2 * a * c @ (self.m * w).T + a**2 * (self.m**2 * w).sum(1)
        log_lik = -0.5 * (quad - torch.log(w).sum(1)) + self.log_w
        resp = torch.softmax(log_lik, dim=-1)
        gain = a * self.lam * w
        x_c = resp @ (self.m - a * gain * self.m) + c * (resp @ gain)
        x = self.mh.T @ x_c.view(z.shape) @ self.mw
        return x.to(z.dtype)


def check_mixture_denoiser(den: MixtureDenoiser) -> float:
    """Max deviation from `oracle.denoise` over a few levels (must be round-off)."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for level in (-12.0, -2.0, 0.5, 4.0, 11.0):
        x, _ = den.oracle.sample(64, gen)
        a, s = alpha_sigma(torch.tensor(level, dtype=F64))
        z = a * x + s * torch.randn(x.shape, generator=gen, dtype=F64)
        lv = torch.full((64,), level, dtype=F64)
        worst = max(worst, float((den(z, lv) - den.oracle.denoise(z, lv)).abs().max()))
    if worst > 1e-8:
        raise RuntimeError(f"MixtureDenoiser deviates from the oracle by {worst}")
    return worst


# ----------------------------------------------------------------------------- grids
GRID_CANDIDATES = (
    GridChoice("uniform_t"),
    GridChoice("uniform_t", shift=-1.0),
    GridChoice("uniform_t", shift=-2.0),
    GridChoice("edm", edm_range=True),
    GridChoice("uniform_logsnr", edm_range=True),
)
"""The grids studied. Over the schedule's full range, EDM's and uniform-logsnr grids lose to
these at every NFE (they spend evaluations at logsnr +-15 where nothing happens; measured in a
first study, docs/samplers.md), so they are left out."""


# ----------------------------------------------------------------------------- the setup
@dataclass
class Setup:
    """What a run samples from and how it is judged."""

    kind: str  # "oracle" | "checkpoint"
    make_denoise: Callable[[Tensor | None], Denoise]  # labels -> Denoise (guidance bound in)
    schedule: Schedule
    shape: tuple[int, ...]
    num_classes: int
    evaluate: Callable[[Tensor], dict]  # samples -> metrics (the first key is the headline)
    headline: str  # the metric the tables and plots rank by
    data: Tensor  # real data for the measured aDDIM variance table
    description: str
    oracle: GaussianMixtureOracle | None = None
    device: torch.device = torch.device("cpu")  # where the denoiser runs (checkpoints only)


def oracle_setup(args) -> Setup:
    oracle = GaussianMixtureOracle.image_like((1, 16, 16), seed=args.oracle_seed)
    den = MixtureDenoiser(oracle)
    deviation = check_mixture_denoiser(den)
    data, _ = oracle.sample(args.table_num, torch.Generator().manual_seed(args.seed + 7))
    return Setup(
        kind="oracle",
        make_denoise=lambda labels: den,
        schedule=CosineSchedule(),
        shape=oracle.shape,
        num_classes=0,
        evaluate=lambda x: oracle_report(x, oracle),
        headline="frechet_exact",
        data=data,
        description=(
            f"exact oracle GaussianMixtureOracle.image_like((1, 16, 16), seed={args.oracle_seed})"
            f": {len(oracle.weights)} components, DCT power-law spectra; cosine schedule logsnr "
            f"[-15, 15]; the matrix-product denoiser equals oracle.denoise to {deviation:.1e}"
        ),
        oracle=oracle,
    )


def checkpoint_setup(args) -> Setup:
    from difflab.data.mnist import load_mnist
    from difflab.devices import resolve_device
    from difflab.eval.features import get_feature_extractor
    from difflab.eval.metrics import feature_stats, frechet_distance
    from difflab.eval.reference import compute_reference_stats, load_reference_stats
    from difflab.train import load_denoiser

    device = resolve_device(args.device)
    make, cfg = load_denoiser(args.denoiser[1], device=str(device))
    net = make.net
    num_classes = net.config.num_classes
    shape = (net.config.in_channels, net.config.resolution, net.config.resolution)

    def make_denoise(labels):
        cond = make(labels=labels) if labels is not None else make()
        if args.guidance == 0 or labels is None:
            return cond
        return guided_denoiser(cond, make(), args.guidance, tuple(args.interval))

    extractors = {name: get_feature_extractor(name, device) for name in args.features}
    refs = {}
    for name, ex in extractors.items():
        try:
            refs[name] = load_reference_stats("mnist", args.ref_split, ex)
        except FileNotFoundError:
            compute_reference_stats("mnist", args.ref_split, name)
            refs[name] = load_reference_stats("mnist", args.ref_split, ex)

    def evaluate(x: Tensor) -> dict:
        images = x.clamp(-1, 1).float()
        out = {}
        for name, ex in extractors.items():
            feats = feature_stats(ex(images, progress=False), "samples")
            out[f"fd_{name}"] = frechet_distance(feats, refs[name])
        return out

    images, _ = load_mnist("train")
    data = torch.from_numpy(images[: args.table_num]).float()[:, None].to(device) / 127.5 - 1
    return Setup(
        kind="checkpoint",
        make_denoise=make_denoise,
        schedule=cfg.diffusion.build_schedule(),
        shape=shape,
        num_classes=num_classes,
        evaluate=evaluate,
        headline=f"fd_{args.features[0]}",
        data=data,
        description=(
            f"checkpoint {args.denoiser[1]} ({cfg.model.name}, {cfg.diffusion.prediction}-"
            f"prediction, schedule {cfg.diffusion.schedule}), guidance {args.guidance}; "
            f"metrics {', '.join('fd_' + n for n in args.features)} vs MNIST {args.ref_split} "
            f"statistics; device {device}"
        ),
        device=device,
    )


# ----------------------------------------------------------------------------- the methods
@dataclass
class Method:
    """One sampler configuration: ours (a registry name, options, a grid) or a diffusers peer."""

    name: str
    family: str  # "difflab" | "diffusers"
    sampler: str = ""
    options: dict = field(default_factory=dict)
    grid: GridChoice | None = None
    peer: str = ""
    hybrid_last_cov: bool = False  # run `sampler` to the last level, then one cov_ddim step

    def steps(self, nfe: int) -> int:
        """Steps whose paper-convention NFE is at most `nfe` (Heun: `2 steps - 1`)."""
        two_per_step = self.sampler == "heun" or self.peer.startswith("diffusers_heun")
        return max(1, (nfe + 1) // 2) if two_per_step else nfe

    def counts(self, steps: int) -> tuple[int, int]:
        """(NFE in the paper convention, JVPs) for `steps`."""
        if self.peer:
            return (2 * steps - 1 if self.peer.startswith("diffusers_heun") else steps), 0
        if self.hybrid_last_cov:
            return steps, 1
        spec = get_sampler(self.sampler)
        return spec.nfe(steps, **self.options), spec.jvps(steps, **self.options)

    def run(self, setup: Setup, denoise: Denoise, z: Tensor, steps: int, seed: int) -> Tensor:
        gen = torch.Generator(z.device).manual_seed(seed)
        if self.peer:
            from difflab.sampling.diffusers_adapter import make_scheduler, sample_with_scheduler

            scheduler = make_scheduler(self.peer, setup.schedule, **self.options)
            return sample_with_scheduler(scheduler, denoise, z, steps, generator=gen)
        grid = (self.grid or DEFAULT_GRIDS.get(self.sampler, GridChoice())).build(
            setup.schedule, steps
        )
        fn = get_sampler(self.sampler).fn
        if self.hybrid_last_cov:
            z = fn(denoise, z, grid[:-1], generator=gen, **self.options)
            return sample_cov_ddim(denoise, z, grid[-2:], generator=gen, **COV_BEST)
        with torch.inference_mode(mode=not get_sampler(self.sampler).jvps(steps)):
            return fn(denoise, z, grid, generator=gen, **self.options)


COV_VARIANTS = ("cov_ddim", "cov_ddim_table", "cov_ddim_mean_last", "cov_ddim_table_mean_last")
"""The covariance-aware rows the checkpoint targets are reported for (every one, not the best)."""

COV_BEST: dict = {}
"""cov_ddim's options for the hybrid's last step (its defaults: the best measured)."""


def difflab_methods(setup: Setup, table_levels: int) -> list[Method]:
    """Our samplers; the measured tables come from one pass over `setup.data`: the DCT spectrum
    of the denoiser's error per level (`cov_ddim_table`), whose mean over frequencies times
    eta = 0.75 is aDDIM's measured `x_var` (Parseval)."""
    levels = torch.linspace(setup.schedule.logsnr_min, setup.schedule.logsnr_max, table_levels)
    spectrum = measure_posterior_spectrum(
        _unconditional(setup), setup.data, levels, generator=torch.Generator().manual_seed(3)
    )
    x_var = VarianceTable(levels.double(), 0.75 * spectrum.values.flatten(1).mean(1))
    zero_table = VarianceTable(spectrum.logsnrs, torch.zeros_like(spectrum.values))
    return [
        Method("ddim", "difflab", "ddim"),
        Method("ddpm", "difflab", "ddpm"),
        Method("heun", "difflab", "heun"),
        Method("dpmpp_2m", "difflab", "dpmpp_2m"),
        Method("dpmpp_2m_sde", "difflab", "dpmpp_2m_sde"),
        Method("dpmpp_3m", "difflab", "dpmpp_3m"),
        Method("unipc", "difflab", "unipc"),
        Method("unipc_3", "difflab", "unipc", {"order": 3}),
        Method("addim", "difflab", "addim"),
        Method("addim_measured", "difflab", "addim", {"x_var": x_var}),
        Method("cov_ddim", "difflab", "cov_ddim"),
        Method("cov_ddim_bands8", "difflab", "cov_ddim", {"pooling": "example", "num_bands": 8}),
        Method("cov_ddim_profile", "difflab", "cov_ddim", {"pooling": "profile", "num_bands": 8}),
        Method(
            "cov_ddim_det",
            "difflab",
            "cov_ddim",
            {"variant": "deterministic", "final": "stochastic"},
        ),
        Method("cov_ddim_table", "difflab", "cov_ddim_table", {"table": spectrum}),
        Method("cov_ddim_mean_last", "difflab", "cov_ddim", {"final": "mean"}),
        Method(
            "cov_ddim_table_mean_last",
            "difflab",
            "cov_ddim_table",
            {"table": spectrum, "final": "mean"},
        ),
        Method("unipc+cov_last", "difflab", "unipc", grid=GridChoice(), hybrid_last_cov=True),
        Method("cov_dpmpp_2m", "difflab", "cov_dpmpp_2m"),
        Method("cov_dpmpp_2m_table", "difflab", "cov_dpmpp_2m_table", {"table": spectrum}),
        # SDE-DPM-Solver++(2M) (eta = 1) with the covariance correction, and without it (a zero
        # table): the control that separates the covariance's effect from the SDE's
        Method(
            "cov_dpmpp_2m_table_eta1",
            "difflab",
            "cov_dpmpp_2m_table",
            {"table": spectrum, "eta": 1.0, "order2_weight": 1.0},
        ),
        Method(
            "sde_dpmpp_2m",
            "difflab",
            "cov_dpmpp_2m_table",
            {"table": zero_table, "eta": 1.0, "order2_weight": 1.0},
        ),
        Method(
            "cov_dpmpp_2m_table_w1",
            "difflab",
            "cov_dpmpp_2m_table",
            {"table": spectrum, "order2_weight": 1.0},
        ),
        Method(
            "cov_dpmpp_2m_table_t-2",
            "difflab",
            "cov_dpmpp_2m_table",
            {"table": spectrum},
            grid=GridChoice("uniform_t", shift=-2.0),
        ),
    ]


def _unconditional(setup: Setup) -> Denoise:
    return setup.make_denoise(None)


def diffusers_methods() -> list[Method]:
    from difflab.sampling.diffusers_adapter import PEERS

    return [Method(name, "diffusers", peer=name) for name in PEERS]


# ----------------------------------------------------------------------------- running
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


class Runner:
    """Runs methods on the fixed initial noise (and labels), in batches, and evaluates."""

    def __init__(self, setup: Setup, num: int, batch: int, seed: int):
        self.setup, self.batch, self.seed = setup, batch, seed
        gen = torch.Generator().manual_seed(seed)
        self.z = torch.randn(num, *setup.shape, generator=gen, dtype=F64)
        self.labels = None
        if setup.num_classes:
            self.labels = torch.randint(0, setup.num_classes, (num,), generator=gen)

    def samples(self, method: Method, steps: int) -> tuple[Tensor, float]:
        out, start = [], time.perf_counter()
        for k, lo in enumerate(range(0, self.z.shape[0], self.batch)):
            z = self.z[lo : lo + self.batch]
            if self.setup.kind == "checkpoint":
                z = z.float().to(self.setup.device)
            labels = None if self.labels is None else self.labels[lo : lo + self.batch]
            if labels is not None:
                labels = labels.to(self.setup.device)
            denoise = self.setup.make_denoise(labels)
            x = method.run(self.setup, denoise, z, steps, self.seed + 1000 + k)
            out.append(x.double().cpu())
        if self.setup.device.type == "cuda":
            torch.cuda.synchronize()
        return torch.cat(out), time.perf_counter() - start

    def row(self, method: Method, nfe: int, *, steps: int | None = None) -> Row:
        steps = method.steps(nfe) if steps is None else steps
        x, seconds = self.samples(method, steps)
        n, jvps = method.counts(steps)
        grid = (
            "diffusers"
            if method.peer
            else (method.grid or DEFAULT_GRIDS.get(method.sampler, GridChoice())).label
        )
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        if bad:  # a diverged run is reported, not fatal
            log(f"  {method.name}: {bad} of {len(x)} samples are not finite")
            metrics = {self.setup.headline: math.inf, "nonfinite_samples": bad}
        else:
            metrics = self.setup.evaluate(x)
        return Row(method.name, method.family, nfe, steps, n, jvps, seconds, metrics, grid)


def log(msg: str) -> None:
    print(msg, flush=True)


def fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.3e}"


# ----------------------------------------------------------------------------- cost of a JVP
def median_ratio(slow: Callable[[], object], fast: Callable[[], object], reps: int) -> dict:
    """Median over interleaved repetitions of time(slow) / time(fast), after one warm-up (CUDA
    work is waited for inside each timing)."""

    def timed(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(slow), timed(fast)
    ratios, t_fast = [], []
    for _ in range(reps):
        t_f = timed(fast)
        ratios.append(timed(slow) / t_f)
        t_fast.append(t_f)
    return {"ratio": statistics.median(ratios), "forward_s": statistics.median(t_fast)}


def cost_of_jvp(den: Denoise, z: Tensor, reps: int) -> dict:
    """(forward+JVP) time over forward time; the JVP under math attention (fused attention has
    no forward-mode AD), the forward both with math attention and with the default (SDPA) path
    a forward-only sampler uses."""
    from difflab.nets import math_attention

    level = torch.full((z.shape[0],), 0.5, dtype=z.dtype, device=z.device)
    v = torch.randn_like(z)

    def fwd():
        with torch.no_grad():
            return den(z, level)

    def jvp():
        with math_attention():
            return torch.func.jvp(lambda y: den(y, level), (z,), (v,))

    def fwd_math():
        with math_attention():
            return fwd()

    vs_math = median_ratio(jvp, fwd_math, reps)
    vs_sdpa = median_ratio(jvp, fwd, reps)
    return {
        "vs_math": vs_math["ratio"],
        "vs_sdpa": vs_sdpa["ratio"],
        "forward_math_s": vs_math["forward_s"],
        "forward_sdpa_s": vs_sdpa["forward_s"],
        "batch": z.shape[0],
    }


UVIT16 = dict(
    in_channels=1,
    resolution=16,
    channels=(32,),
    num_blocks=1,
    stem="haar",
    patch_size=2,
    transformer_width=128,
    transformer_depth=2,
    heads=2,
    emb_dim=64,
)


def jvp_costs(setup: Setup, reps: int) -> dict:
    """The cost of a JVP for the run's denoiser and for a small U-ViT (random weights)."""
    from difflab.diffusion.parameterization import as_denoiser
    from difflab.nets import build_net

    dtype = F64 if setup.kind == "oracle" else torch.float32
    z = torch.randn(256 if setup.kind == "oracle" else 64, *setup.shape, dtype=dtype)
    out = {setup.kind: cost_of_jvp(setup.make_denoise(None), z.to(setup.device), reps)}
    torch.manual_seed(0)
    net = build_net("uvit", **UVIT16).eval()
    out["uvit16"] = cost_of_jvp(as_denoiser(net, "v"), torch.randn(64, 1, 16, 16), reps)
    out["uvit16"] |= {"config": UVIT16, "params": sum(p.numel() for p in net.parameters())}
    return out


# ----------------------------------------------------------------------------- checks and studies
def agreement(setup: Setup, runner: Runner, num: int = 256) -> list[dict]:
    """Our DPM-Solver++(2M) / UniPC vs diffusers' on the same grid and noise: max |difference|."""
    from difflab.sampling.diffusers_adapter import (
        make_scheduler,
        sample_with_scheduler,
        scheduler_grid,
    )

    z = runner.z[:num] if setup.kind == "oracle" else runner.z[:num].float().to(setup.device)
    labels = None if runner.labels is None else runner.labels[:num].to(setup.device)
    den = setup.make_denoise(labels)
    out = []
    for peer, ours in (
        ("diffusers_dpmpp_2m", "dpmpp_2m"),
        ("diffusers_dpmpp_2m_karras", "dpmpp_2m"),
        ("diffusers_unipc", "unipc"),
    ):
        for steps in (8, 20):
            sched = make_scheduler(peer, setup.schedule)
            theirs = sample_with_scheduler(sched, den, z, steps)
            with torch.no_grad():
                mine = get_sampler(ours).fn(den, z, scheduler_grid(sched, steps))
            out.append(
                {
                    "peer": peer,
                    "ours": ours,
                    "steps": steps,
                    "max_abs_diff": float((mine - theirs).abs().max()),
                    "sample_std": float(theirs.std()),
                }
            )
    return out


def grid_study(setup, runner, nfes, methods: list[Method]) -> dict:
    """FD of each sampler on each candidate grid; the best grid by geometric mean over NFE."""
    table = {}
    samplers = [m.name for m in methods]
    for method in methods:
        name, method = method.name, Method(method.name, "difflab", method.sampler, method.options)
        table[name] = {}
        for choice in GRID_CANDIDATES:
            method.grid = choice
            values = []
            for nfe in nfes:
                values.append(runner.row(method, nfe).metrics[setup.headline])
            table[name][choice.label] = values
            log(f"  grid {name:9s} {choice.label:28s} " + " ".join(fmt(v) for v in values))
    best = {
        name: min(rows, key=lambda g: sum(math.log(max(v, 1e-12)) for v in rows[g]))
        for name, rows in table.items()
    }
    return {
        "nfe": list(nfes),
        "num_samples": runner.z.shape[0],
        "fd": table,
        "best": best,
        "default": {n: DEFAULT_GRIDS[n].label for n in samplers},
    }


def cov_ablation_configs(setup: Setup) -> list[tuple[str, dict]]:
    x = setup.data.double()
    from difflab.diffusion.dct import dct2

    data_var = dct2(x).var(0).mean(0, keepdim=True)  # per coefficient, channels pooled
    return [
        ("default: stochastic, batch pooling per coefficient", {}),
        ("pooling=example, num_bands=1", {"pooling": "example", "num_bands": 1}),
        ("pooling=example, num_bands=4", {"pooling": "example", "num_bands": 4}),
        ("pooling=example, num_bands=8", {"pooling": "example", "num_bands": 8}),
        ("pooling=example, num_bands=16", {"pooling": "example", "num_bands": 16}),
        ("pooling=example, per coefficient", {"pooling": "example", "num_bands": None}),
        ("pooling=batch, num_bands=8", {"pooling": "batch", "num_bands": 8}),
        ("pooling=profile, num_bands=1", {"pooling": "profile", "num_bands": 1}),
        ("pooling=profile, num_bands=8", {"pooling": "profile", "num_bands": 8}),
        ("gaussian probes", {"probe": "gaussian"}),
        (
            "gaussian probes, example, 8 bands",
            {"probe": "gaussian", "pooling": "example", "num_bands": 8},
        ),
        ("variant=deterministic", {"variant": "deterministic"}),
        (
            "variant=deterministic, final=stochastic",
            {"variant": "deterministic", "final": "stochastic"},
        ),
        ("final=mean", {"final": "mean"}),
        ("prior_var = data variance per coefficient", {"prior_var": data_var}),
        ("grid uniform_t (no shift)", {"_grid": GridChoice("uniform_t")}),
    ]


def cov_ablation(setup, runner, nfes) -> list[dict]:
    out = []
    for label, options in cov_ablation_configs(setup):
        opts = dict(options)
        grid = opts.pop("_grid", None)
        method = Method("cov_ddim", "difflab", "cov_ddim", opts, grid)
        rows = [runner.row(method, nfe) for nfe in nfes]
        out.append({"config": label, "rows": [r.__dict__ for r in rows]})
        log(f"  cov {label:52s} " + " ".join(f"{fmt(r.metrics[setup.headline])}" for r in rows))
    return out


def sampler_overhead(reps: int = 5) -> dict:
    """Seconds per step of each sampler around a free denoiser, vs one forward of a 32x32 U-ViT
    (cifar config, batch 16, SDPA attention), on this CPU."""
    from difflab.diffusion.parameterization import as_denoiser
    from difflab.nets import build_net, cifar_uvit_config
    from difflab.sampling.grids import uniform_t_grid

    torch.manual_seed(0)
    net = build_net("uvit", **cifar_uvit_config().__dict__).eval()
    den = as_denoiser(net, "v")
    z = torch.randn(16, 3, 32, 32)
    level = torch.full((16,), 0.5)
    with torch.no_grad():
        den(z, level)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            den(z, level)
            times.append(time.perf_counter() - t0)
    forward = statistics.median(times)
    x0 = torch.zeros_like(z)

    def free(zz, lv):
        return x0 + 0.5 * zz  # a denoiser that costs (almost) nothing

    steps = 32
    grid = uniform_t_grid(CosineSchedule(), steps)
    out = {"uvit32_forward_s": forward, "batch": 16, "per_step": {}}
    for name in ("ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "addim", "cov_ddim"):
        fn = get_sampler(name).fn
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            with torch.inference_mode(mode=name != "cov_ddim"):
                fn(free, z, grid, generator=torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - t0)
        per_step = statistics.median(times) / get_sampler(name).nfe(steps)
        out["per_step"][name] = {"seconds": per_step, "fraction_of_forward": per_step / forward}
    return out


# ----------------------------------------------------------------------------- comparisons
def best_of(rows: list[Row], family: str, nfe: int, key: str) -> Row | None:
    pool = [r for r in rows if r.family == family and r.nfe_target == nfe]
    return min(pool, key=lambda r: r.metrics[key]) if pool else None


def equal_compute(setup, runner, rows, peers, jvp_cost: float, max_nfe: int) -> list[dict]:
    """cov_ddim at `s` steps costs `s + (c - 1) s` forwards (c: the U-ViT's forward+JVP cost);
    every peer gets the next integer NFE at or above that, i.e. at least as much compute."""
    key, out = setup.headline, []
    method = Method("cov_ddim", "difflab", "cov_ddim")
    for steps in range(1, max_nfe + 1):
        n, jvps = method.counts(steps)
        budget = n + (jvp_cost - 1.0) * jvps
        if budget > max_nfe:
            break
        cov = runner.row(method, steps, steps=steps)
        peer_nfe = math.ceil(budget - 1e-9)
        best = None
        for peer in peers:
            cached = [r for r in rows if r.method == peer.name and r.nfe_target == peer_nfe]
            row = cached[0] if cached else runner.row(peer, peer_nfe)
            if not cached:
                rows.append(row)
            if best is None or row.metrics[key] < best.metrics[key]:
                best = row
        out.append(
            {
                "cov_steps": steps,
                "compute_nfe": budget,
                "cov": cov.metrics[key],
                "cov_seconds": cov.seconds,
                "peer_nfe": peer_nfe,
                "best_peer": best.method,
                "best_peer_value": best.metrics[key],
                "best_peer_seconds": best.seconds,
            }
        )
        log(
            f"  equal compute: cov_ddim {steps} steps (= {budget:.1f} forwards) "
            f"{fmt(cov.metrics[key])} vs {best.method} @ NFE {peer_nfe}: {fmt(best.metrics[key])}"
        )
    return out


def equal_time(rows: list[Row], key: str, method: str) -> list[dict]:
    """Measured seconds on this run's denoiser: each run of `method` against the best diffusers
    run that took no longer."""
    out = []
    for cov in sorted((r for r in rows if r.method == method), key=lambda r: r.seconds):
        pool = [r for r in rows if r.family == "diffusers" and r.seconds <= cov.seconds]
        best = min(pool, key=lambda r: r.metrics[key]) if pool else None
        out.append(
            {
                "method": method,
                "cov_nfe": cov.nfe,
                "cov_seconds": cov.seconds,
                "cov": cov.metrics[key],
                "best_peer": best and best.method,
                "best_peer_nfe": best and best.nfe,
                "best_peer_seconds": best and best.seconds,
                "best_peer_value": best and best.metrics[key],
            }
        )
    return out


# ----------------------------------------------------------------------------- reports
def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or "?",
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    return info


def targets(rows: list[Row], key: str, setup: Setup) -> list[str]:
    """The issue's quality targets, as measured (met or missed)."""
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


def table(rows: list[Row], key: str, setup: Setup, jvp_cost: float) -> list[str]:
    cols = ["method", "family", "grid", "steps", "NFE", "JVPs", "NFE (compute)", key]
    if setup.kind == "oracle":
        cols += ["high band var ratio", "mode TV"]
    cols += ["seconds"]
    out = []
    for nfe in sorted({r.nfe_target for r in rows if r.nfe_target in NFES_RUN}):
        out += [f"\n### NFE {nfe}\n", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in sorted(
            (r for r in rows if r.nfe_target == nfe and r.method in MAIN_METHODS),
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
            ]
            if setup.kind == "oracle":
                vals += [
                    f"{r.metrics.get('high_band_variance_ratio', math.nan):.2f}",
                    f"{r.metrics.get('mode_weight_tv', math.nan):.3f}",
                ]
            vals += [f"{r.seconds:.1f}"]
            out.append("| " + " | ".join(vals) + " |")
    return out


NFES_RUN: tuple[int, ...] = NFES
STUDIED = ("ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "addim", "cov_ddim", "cov_ddim_table")
MAIN_METHODS: set[str] = set()


def plot(rows: list[Row], key: str, jvp_cost: float, floor: float | None, path: Path) -> None:
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
        for name in sorted(MAIN_METHODS):
            pts = sorted(
                (r.nfe_compute(jvp_cost) if compute else r.nfe, r.metrics[key])
                for r in rows
                if r.method == name and r.nfe_target in NFES_RUN and math.isfinite(r.metrics[key])
            )
            if not pts:
                continue
            fam = next(r.family for r in rows if r.method == name)
            style = "--" if fam == "diffusers" else "-"
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
        f"difflab samplers (solid) vs diffusers schedulers (dashed); axis capped at {cap:.3g}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--denoiser", nargs="+", default=["oracle"], metavar="oracle|checkpoint PATH")
    p.add_argument("--num", type=int, default=4000, help="samples per (sampler, NFE)")
    p.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--seed", type=int, default=0, help="initial noise and sampler seeds")
    p.add_argument("--oracle-seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=4000, help="samples per sampler call")
    p.add_argument("--threads", type=int, default=1, help="torch threads (2 shared cores: 1)")
    p.add_argument("--grid-num", type=int, default=2000, help="samples per grid-study point")
    p.add_argument("--ablation-nfe", type=int, nargs="+", default=[4, 8])
    p.add_argument("--grid-nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--no-ablations", action="store_true", help="skip grid study and ablations")
    p.add_argument(
        "--grid-study-only", action="store_true", help="only the grid study (to set defaults)"
    )
    p.add_argument("--grid-study-file", help="reuse the JSON a --grid-study-only run wrote")
    p.add_argument("--no-diffusers", action="store_true")
    p.add_argument("--methods", nargs="+", help="run only these methods (names as in the tables)")
    p.add_argument(
        "--no-equal-compute", action="store_true", help="skip the extra equal-compute rows"
    )
    p.add_argument("--jvp-reps", type=int, default=7)
    p.add_argument("--table-levels", type=int, default=121, help="levels of the measured tables")
    p.add_argument("--table-num", type=int, default=2000, help="data examples for the tables")
    p.add_argument("--features", nargs="+", default=["fd-lenet"], help="checkpoint metrics")
    p.add_argument("--ref-split", default="train", help="MNIST split of the reference statistics")
    p.add_argument(
        "--device", default="cpu", help="checkpoint denoiser and feature nets: cpu, cuda"
    )
    p.add_argument("--guidance", type=float, default=0.0)
    p.add_argument("--interval", type=float, nargs=2, default=[-math.inf, math.inf])
    p.add_argument("--out", default="results/samplers")
    args = p.parse_args(argv)
    if args.denoiser[0] not in ("oracle", "checkpoint") or (
        args.denoiser[0] == "checkpoint" and len(args.denoiser) != 2
    ):
        p.error("--denoiser takes `oracle` or `checkpoint PATH`")
    return args


def main(argv=None) -> int:
    global NFES_RUN
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    NFES_RUN = tuple(args.nfe)
    started = time.time()
    setup = oracle_setup(args) if args.denoiser[0] == "oracle" else checkpoint_setup(args)
    key = setup.headline
    log(f"setup: {setup.description}")
    runner = Runner(setup, args.num, args.batch, args.seed)
    log("measuring the posterior spectrum table on data ...")
    methods = difflab_methods(setup, args.table_levels)
    peers = [] if args.no_diffusers else diffusers_methods()
    if args.methods:
        known = {m.name for m in methods + peers}
        if unknown := set(args.methods) - known:
            raise SystemExit(f"--methods: unknown {sorted(unknown)}; known: {sorted(known)}")
        methods = [m for m in methods if m.name in args.methods]
        peers = [m for m in peers if m.name in args.methods]
    MAIN_METHODS.update(m.name for m in methods + peers)
    report: dict = {
        "command": "python benchmarks/samplers.py "
        + " ".join(os.sys.argv[1:] if argv is None else argv),
        "setup": setup.description,
        "machine": machine(),
        "num_samples": args.num,
        "seed": args.seed,
        "nfe": args.nfe,
        "headline": key,
    }

    if args.grid_study_only:
        small = Runner(setup, min(args.grid_num, args.num), args.batch, args.seed)
        study = grid_study(setup, small, args.grid_nfe, [m for m in methods if m.name in STUDIED])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + "_grids.json").write_text(json.dumps(study, indent=1))
        log(json.dumps(study["best"], indent=1))
        return 0
    log("cost of a JVP (forward+JVP time / forward time) ...")
    costs = jvp_costs(setup, args.jvp_reps)
    jvp_cost = costs["checkpoint" if setup.kind == "checkpoint" else "uvit16"]["vs_sdpa"]
    report["jvp_cost"] = costs
    log(f"  {json.dumps({k: round(v['vs_sdpa'], 2) for k, v in costs.items()})}")

    rows: list[Row] = []
    floor = None
    if setup.oracle is not None:
        x, _ = setup.oracle.sample(args.num, torch.Generator().manual_seed(args.seed + 5))
        floor_metrics = setup.evaluate(x)
        floor = floor_metrics[key]
        report["exact_samples"] = floor_metrics
        log(f"exact samples ({args.num}): {key} {fmt(floor)}")
    for method in methods + peers:
        for nfe in args.nfe:
            row = runner.row(method, nfe)
            rows.append(row)
            log(
                f"{method.name:22s} NFE {nfe:3d} (steps {row.steps:2d}, NFE {row.nfe:2d}, "
                f"JVPs {row.jvps:2d}): {key} {fmt(row.metrics[key])}  [{row.seconds:.1f} s]"
            )

    if peers:
        log("agreement with diffusers on the same grid ...")
        report["agreement"] = agreement(setup, runner)
        if not args.no_equal_compute:
            log("equal compute ...")
            report["equal_compute"] = equal_compute(
                setup, runner, rows, peers, jvp_cost, max_nfe=max(args.nfe)
            )
        report["equal_time"] = equal_time(rows, key, "cov_ddim") + equal_time(
            rows, key, "cov_ddim_table"
        )
    if not args.no_ablations:
        log("grid study ...")
        small = Runner(setup, min(args.grid_num, args.num), args.batch, args.seed)
        chosen = [m for m in methods if m.name in STUDIED]
        if args.grid_study_file:
            report["grid_study"] = json.loads(Path(args.grid_study_file).read_text())
            report["grid_study"]["from"] = args.grid_study_file
            report["grid_study"]["default"] = {n: DEFAULT_GRIDS[n].label for n in STUDIED}
        else:
            report["grid_study"] = grid_study(setup, small, args.grid_nfe, chosen)
        log("cov_ddim ablation ...")
        report["cov_ablation"] = cov_ablation(setup, runner, args.ablation_nfe)
    log("sampler overhead ...")
    report["overhead"] = sampler_overhead()
    report["rows"] = [r.__dict__ for r in rows]
    report["seconds"] = time.time() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    plot(rows, key, jvp_cost, floor, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(markdown(report, rows, setup, jvp_cost, floor, out))
    log(f"wrote {out}.md, .json, .png in {report['seconds'] / 60:.1f} min")
    return 0


def markdown(report, rows, setup, jvp_cost, floor, out: Path) -> str:
    key = setup.headline
    m = report["machine"]
    lines = [
        "# Few-step samplers vs diffusers' schedulers",
        "",
        f"Command: `{report['command']}` ({report['seconds'] / 60:.0f} min). Written by "
        "`benchmarks/samplers.py`; raw numbers in "
        f"`{out.with_suffix('.json').name}`, plot `{out.with_suffix('.png').name}`.",
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
        f"- Machine: {m['processor']} ({m['cpus']} CPUs shared with other jobs, "
        f"{m['torch_threads']} torch thread), {m['platform']}; torch {m['torch']}, diffusers "
        f"{m['diffusers']}.",
        "- NFE: paper convention (a forward with its JVP is one evaluation); Heun runs the "
        "largest `2 steps - 1 <= NFE`. NFE (compute) charges each JVP its measured cost on a "
        f"small U-ViT: {jvp_cost:.2f} forwards (see below).",
        "- difflab samplers use their default grid (`difflab.sampling.DEFAULT_GRIDS`); diffusers "
        "schedulers their own timesteps on the same schedule (`diffusers_adapter`). `euler` is "
        "not listed: it equals `ddim` to round-off (tested).",
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
            f"| cov_ddim steps | forwards | cov_ddim {key} | peer NFE | best diffusers "
            f"| its {key} |",
            "|---|---|---|---|---|---|",
        ]
        for e in ec:
            lines.append(
                f"| {e['cov_steps']} | {e['compute_nfe']:.1f} | {fmt(e['cov'])} | "
                f"{e['peer_nfe']} | `{e['best_peer']}` | {fmt(e['best_peer_value'])} |"
            )
    if report.get("equal_time"):
        lines += [
            "",
            "## Equal wall time (measured on this denoiser)",
            "",
            f"| method | NFE | seconds | {key} | best diffusers no slower | NFE | seconds "
            f"| {key} |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in report["equal_time"]:
            head = (
                f"| `{e['method']}` | {e['cov_nfe']} | {e['cov_seconds']:.1f} | {fmt(e['cov'])} |"
            )
            if e["best_peer"]:
                lines.append(
                    f"{head} `{e['best_peer']}` | {e['best_peer_nfe']} | "
                    f"{e['best_peer_seconds']:.1f} | {fmt(e['best_peer_value'])} |"
                )
            else:
                lines.append(f"{head} (none as fast) | | | |")
    if report.get("agreement"):
        lines += [
            "",
            "## Agreement with diffusers on the same grid",
            "",
            "Our sampler on the levels the scheduler visits (`scheduler_grid`), same noise "
            "and denoiser, 256 samples:",
            "",
            "| diffusers | ours | steps | max abs difference | sample std |",
            "|---|---|---|---|---|",
        ]
        for a in report["agreement"]:
            lines.append(
                f"| `{a['peer']}` | `{a['ours']}` | {a['steps']} | "
                f"{a['max_abs_diff']:.1e} | {a['sample_std']:.2f} |"
            )
    gs = report.get("grid_study")
    if gs:
        labels = [g.label for g in GRID_CANDIDATES]
        lines += [
            "",
            "## Grid study",
            "",
            f"`{key}` at NFE {', '.join(map(str, gs['nfe']))} "
            f"({gs.get('num_samples', '?')} samples; geometric mean over NFE decides "
            "the best; **bold**: the default).",
            "",
            "| sampler | " + " | ".join(labels) + " | best |",
            "|" + "---|" * (len(labels) + 2),
        ]
        for name, by_grid in gs["fd"].items():
            cells = []
            for label in labels:
                text = " / ".join(fmt(v) for v in by_grid[label])
                cells.append(f"**{text}**" if label == gs["default"][name] else text)
            lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {gs['best'][name]} |")
    ab = report.get("cov_ablation")
    if ab:
        nfes = [r["nfe_target"] for r in ab[0]["rows"]]
        head = " | ".join(f"{key} @ NFE {n}" for n in nfes)
        extra = " | ".join(f"high band @ {n}" for n in nfes) if setup.kind == "oracle" else ""
        lines += [
            "",
            "## cov_ddim ablation",
            "",
            "Default grid unless stated.",
            "",
            f"| configuration | {head}" + (f" | {extra}" if extra else "") + " |",
            "|---|" + "---|" * (len(nfes) * (2 if extra else 1)),
        ]
        for a in ab:
            vals = [fmt(r["metrics"][key]) for r in a["rows"]]
            if extra:
                vals += [
                    f"{r['metrics'].get('high_band_variance_ratio', math.nan):.2f}"
                    for r in a["rows"]
                ]
            lines.append(f"| {a['config']} | " + " | ".join(vals) + " |")
    ov = report["overhead"]
    lines += [
        "",
        "## Per-step sampler overhead",
        "",
        f"Seconds per denoiser call spent outside the denoiser (a free denoiser, 32 steps, "
        f"batch {ov['batch']} at 3x32x32) over one forward of the 32x32 U-ViT "
        f"(`cifar_uvit_config`, SDPA, {ov['uvit32_forward_s'] * 1e3:.0f} ms):",
        "",
        "| sampler | overhead per call | fraction of a forward |",
        "|---|---|---|",
    ]
    for name, o in ov["per_step"].items():
        lines.append(
            f"| `{name}` | {o['seconds'] * 1e3:.2f} ms | {100 * o['fraction_of_forward']:.2f}% |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
