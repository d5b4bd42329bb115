"""Shared pieces of the sampler study scripts (`samplers_*.py`): the denoiser a run samples
from (`--denoiser oracle`, the exact posterior mean of an image-like Gaussian mixture, or
`--denoiser checkpoint PATH`, a trained model), the sampler configurations (ours; diffusers'
schedulers and k-diffusion's samplers as peers), the runner that samples them all from the same
initial noise, and the measured cost of a JVP. Each script answers one question and stores its
keys in the study folder's `results.json` (`--out`, default `results/samplers`);
`samplers_report.py` renders the report from that file alone.

- `--denoiser oracle` (default): `GaussianMixtureOracle.named(--oracle)`, by default
  `image_like` ((1, 16, 16), 8 components, DCT power-law spectra). Metrics against the *exact*
  distribution: Frechet distance to the exact moments (`exact_frechet`), per radial DCT band
  variance ratio (sample / exact; the highest band is reported), mode-weight total variation,
  the exact cross-entropy gap and a kernel MMD to an exact reference sample of `--num` examples.
- `--denoiser checkpoint PATH`: a trained model; metrics: Frechet distances in the features of
  `--features` (fd-lenet and/or fid) against cached MNIST statistics.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from common import RAW, command_line, locked_update, record_run, study_folder
from samplers_report import Row, render_folder
from torch import Tensor

from difflab.diffusion.dct import dct_matrix
from difflab.diffusion.guidance import guided_denoiser
from difflab.diffusion.oracle import GaussianMixtureOracle
from difflab.diffusion.parameterization import Denoise, alpha_sigma
from difflab.diffusion.schedules import CosineSchedule, Schedule
from difflab.eval.oracle_metrics import ExactReference, oracle_report
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
first study, results/samplers/notes.md), so they are left out."""


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
    data_bound: float | None = None  # the data range [-b, b] a checkpoint clips x_hat to


def oracle_setup(args) -> Setup:
    name = getattr(args, "oracle", "image_like")
    oracle = GaussianMixtureOracle.named(name, seed=args.oracle_seed)
    den = MixtureDenoiser(oracle)
    deviation = check_mixture_denoiser(den)
    data, _ = oracle.sample(args.table_num, torch.Generator().manual_seed(args.seed + 7))
    reference = ExactReference.of(oracle, n=args.num, seed=args.seed + 11)
    return Setup(
        kind="oracle",
        make_denoise=lambda labels: den,
        schedule=CosineSchedule(),
        shape=oracle.shape,
        num_classes=0,
        evaluate=lambda x: oracle_report(x, oracle, reference=reference),
        headline="frechet_exact",
        data=data,
        description=(
            f"exact oracle GaussianMixtureOracle.named({name!r}, seed={args.oracle_seed}), shape "
            f"{oracle.shape}: {len(oracle.weights)} components, DCT power-law spectra (`ORACLES` "
            "in difflab/diffusion/oracle.py); cosine schedule logsnr "
            f"[-15, 15]; the matrix-product denoiser equals oracle.denoise to {deviation:.1e}"
        ),
        oracle=oracle,
    )


def checkpoint_setup(args) -> Setup:
    """A trained model, scored against the test (`--ref-split`) statistics of the data set it
    was trained on (MNIST or Fashion-MNIST; `--features` names the feature nets, e.g.
    `fd-lenet-fashion` for the Fashion LeNet); its training images feed the measured tables."""
    from difflab.data.datasets import uint8_to_unit
    from difflab.devices import resolve_device
    from difflab.eval.features import get_feature_extractor
    from difflab.eval.metrics import feature_stats, frechet_distance
    from difflab.eval.reference import (
        check_dataset,
        compute_reference_stats,
        load_reference_stats,
        reference_images,
    )
    from difflab.train import load_denoiser

    device = resolve_device(args.device)
    make, cfg = load_denoiser(args.denoiser[1], device=str(device))
    dataset = cfg.data.name
    check_dataset(dataset)
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
            refs[name] = load_reference_stats(dataset, args.ref_split, ex)
        except FileNotFoundError:
            compute_reference_stats(dataset, args.ref_split, name)
            refs[name] = load_reference_stats(dataset, args.ref_split, ex)

    def evaluate(x: Tensor) -> dict:
        images = x.clamp(-1, 1).float()
        out = {}
        for name, ex in extractors.items():
            feats = feature_stats(ex(images, progress=False), "samples")
            out[f"fd_{name}"] = frechet_distance(feats, refs[name])
        return out

    data = uint8_to_unit(reference_images(dataset, "train", args.table_num)).float().to(device)
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
            f"metrics {', '.join('fd_' + n for n in args.features)} vs {dataset} {args.ref_split} "
            f"statistics; device {device}; covariance samplers capped to the data range "
            f"[-{make.clip_x}, {make.clip_x}]"
        ),
        device=device,
        data_bound=make.clip_x,
    )


# ----------------------------------------------------------------------------- the methods
@dataclass
class Method:
    """One sampler configuration: ours (a registry name, options, a grid) or a peer (a diffusers
    scheduler or a k-diffusion sampler)."""

    name: str
    family: str  # "difflab" | "diffusers" | "k-diffusion"
    sampler: str = ""
    options: dict = field(default_factory=dict)
    grid: GridChoice | None = None
    peer: str = ""
    hybrid_last_cov: bool = False  # run `sampler` to the last level, then one cov_ddim step

    @property
    def two_per_step(self) -> bool:
        return self.sampler == "heun" or self.peer.startswith(("diffusers_heun", "k_heun"))

    def steps(self, nfe: int) -> int:
        """Steps whose paper-convention NFE is at most `nfe` (Heun: `2 steps - 1`)."""
        return max(1, (nfe + 1) // 2) if self.two_per_step else nfe

    def counts(self, steps: int) -> tuple[int, int]:
        """(NFE in the paper convention, JVPs) for `steps`."""
        if self.peer:
            return (2 * steps - 1 if self.two_per_step else steps), 0
        if self.hybrid_last_cov:
            return steps, 1
        spec = get_sampler(self.sampler)
        return spec.nfe(steps, **self.options), spec.jvps(steps, **self.options)

    def run(self, setup: Setup, denoise: Denoise, z: Tensor, steps: int, seed: int) -> Tensor:
        gen = torch.Generator(z.device).manual_seed(seed)
        if self.family == "k-diffusion":
            return run_k_diffusion(self.peer, setup.schedule, denoise, z, steps, gen)
        if self.peer:
            from difflab.sampling.diffusers_adapter import make_scheduler, sample_with_scheduler

            scheduler = make_scheduler(self.peer, setup.schedule, **self.options)
            return sample_with_scheduler(scheduler, denoise, z, steps, generator=gen)
        grid = (self.grid or DEFAULT_GRIDS.get(self.sampler, GridChoice())).build(
            setup.schedule, steps
        )
        spec = get_sampler(self.sampler)
        options = spec.with_data_bound(self.options, setup.data_bound)
        if self.hybrid_last_cov:
            z = spec.fn(denoise, z, grid[:-1], generator=gen, **options)
            last = get_sampler("cov_ddim").with_data_bound(COV_BEST, setup.data_bound)
            return sample_cov_ddim(denoise, z, grid[-2:], generator=gen, **last)
        with torch.inference_mode(mode=not spec.jvps(steps)):
            return spec.fn(denoise, z, grid, generator=gen, **options)


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
        # without the data-range cap (before issue 16's trained-net fix): the Jacobian's error at
        # high noise enters the first draw (docs/methods/cov_ddim.md, "Trained nets")
        Method("cov_ddim_unbounded", "difflab", "cov_ddim", {"data_bound": None}),
        Method("cov_ddim_bands8", "difflab", "cov_ddim", {"pooling": "example", "num_bands": 8}),
        # the default before issue 16: one spectrum per level for the whole batch
        Method("cov_ddim_batch", "difflab", "cov_ddim", {"pooling": "batch", "num_bands": None}),
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


K_PEERS: dict[str, tuple[str, str]] = {
    "k_euler": ("sample_euler", "uniform_t"),
    "k_heun": ("sample_heun", "karras"),
    "k_dpmpp_2m": ("sample_dpmpp_2m", "uniform_t"),
    "k_dpmpp_2m_karras": ("sample_dpmpp_2m", "karras"),
    "k_dpmpp_2m_sde": ("sample_dpmpp_2m_sde", "karras"),
}
"""k-diffusion's samplers as peers: (function of `k_diffusion.sampling`, sigma grid). `karras`:
k-diffusion's `get_sigmas_karras` (rho = 7) over the schedule's range, as its users run it;
`uniform_t`: the schedule's uniform-t levels (the grid `ddim`/`euler` use here). The denoiser is
the run's own, through `difflab.interop.to_k_diffusion`; the initial `x = z / alpha_0`."""


def k_sigmas(grid_kind: str, schedule: Schedule, steps: int) -> Tensor:
    """k-diffusion's decreasing sigmas (ending at 0) for `steps` steps on `schedule` (float64)."""
    from difflab.interop import k_diffusion_sampling, sigmas_of_grid
    from difflab.sampling import uniform_t_grid

    if grid_kind == "karras":
        lo, hi = math.exp(-0.5 * schedule.logsnr_max), math.exp(-0.5 * schedule.logsnr_min)
        ks = k_diffusion_sampling()
        return ks.get_sigmas_karras(steps, lo, hi, rho=7.0, device="cpu").double()
    return sigmas_of_grid(uniform_t_grid(schedule, steps))


def run_k_diffusion(
    peer: str, schedule: Schedule, denoise: Denoise, z: Tensor, steps: int, gen: torch.Generator
) -> Tensor:
    """Run k-diffusion's sampler `K_PEERS[peer]` from the difflab noise `z` (at the grid's first
    level) with `denoise`; returns the final sample (sigma = 0: the data). The step noise of the
    stochastic samplers comes from `gen`."""
    from difflab.interop import grid_of_sigmas, k_diffusion_sampling, to_k_diffusion, ve_of_vp

    fn_name, grid_kind = K_PEERS[peer]
    fn = getattr(k_diffusion_sampling(), fn_name)
    sigmas = k_sigmas(grid_kind, schedule, steps)
    x = ve_of_vp(z, grid_of_sigmas(sigmas[:1])[0])
    extra = {}
    if fn_name.endswith("_sde") or "ancestral" in fn_name:
        extra["noise_sampler"] = lambda s, s_next: torch.randn(
            x.shape, generator=gen, device=x.device, dtype=x.dtype
        )
    with torch.inference_mode():
        return fn(to_k_diffusion(denoise), x, sigmas.to(x.device, x.dtype), disable=True, **extra)


def k_diffusion_methods() -> list[Method]:
    """k-diffusion's samplers (`K_PEERS`), or none (with a note) when it is not installed."""
    from difflab.interop import k_diffusion_sampling

    try:
        k_diffusion_sampling()
    except ImportError as err:
        log(f"k-diffusion peers skipped: {err}")
        return []
    return [Method(name, "k-diffusion", peer=name) for name in K_PEERS]


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
        n, jvps = method.counts(steps)
        try:
            x, seconds = self.samples(method, steps)
        except FloatingPointError as err:  # a registered sampler that diverged says so
            log(f"  {method.name}: {err}")
            metrics = {self.setup.headline: math.inf, "nonfinite_samples": str(err)}
            return Row(method.name, method.family, nfe, steps, n, jvps, math.nan, metrics)
        grid = (
            f"k-diffusion {K_PEERS[method.peer][1]}"
            if method.family == "k-diffusion"
            else "diffusers"
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


STUDIED = ("ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "addim", "cov_ddim", "cov_ddim_table")
"""The samplers of the grid study and whose default grid it sets."""


# ----------------------------------------------------------------------------- the scripts' CLI
def setup_arguments(description: str, out: str = "results/samplers") -> argparse.ArgumentParser:
    """A parser with the flags every sampler script shares: the denoiser and its samples."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--denoiser", nargs="+", default=["oracle"], metavar="oracle|checkpoint PATH")
    p.add_argument("--num", type=int, default=4000, help="samples per (sampler, NFE)")
    p.add_argument("--seed", type=int, default=0, help="initial noise and sampler seeds")
    p.add_argument("--oracle", default="image_like", help="GaussianMixtureOracle.named oracle")
    p.add_argument("--oracle-seed", type=int, default=None, help="None: the named oracle's own")
    p.add_argument("--batch", type=int, default=4000, help="samples per sampler call")
    p.add_argument("--threads", type=int, default=1, help="torch threads (2 shared cores: 1)")
    p.add_argument("--table-levels", type=int, default=121, help="levels of the measured tables")
    p.add_argument("--table-num", type=int, default=2000, help="data examples for the tables")
    p.add_argument("--features", nargs="+", default=["fd-lenet"], help="checkpoint metrics")
    p.add_argument("--ref-split", default="train", help="MNIST split of the reference statistics")
    p.add_argument("--device", default="cpu", help="checkpoint denoiser and feature nets")
    p.add_argument("--guidance", type=float, default=0.0)
    p.add_argument("--interval", type=float, nargs=2, default=[-math.inf, math.inf])
    p.add_argument("--out", default=out, help="the study folder (results.json, README.md)")
    return p


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    denoiser = getattr(args, "denoiser", ["oracle"])
    if denoiser[0] not in ("oracle", "checkpoint") or (
        denoiser[0] == "checkpoint" and len(denoiser) != 2
    ):
        parser.error("--denoiser takes `oracle` or `checkpoint PATH`")
    torch.set_num_threads(args.threads)
    args.command = command_line(argv)
    args.started = time.time()
    return args


def open_setup(args) -> Setup:
    setup = oracle_setup(args) if args.denoiser[0] == "oracle" else checkpoint_setup(args)
    log(f"setup: {setup.description}")
    return setup


def store(args, part: dict, *, partial: bool = False) -> None:
    """Put this script's keys into the study's `results.json` (a None value removes the key;
    its command replaces the earlier one of the same script, its wall time is kept by script),
    record the run in `manifest.json` and re-render the report. `partial` (a run of some
    methods, `--methods`): its `rows` replace only the stored rows of the same method and NFE,
    and its command and wall time add to the script's earlier ones."""
    folder = study_folder(args.out)
    script = args.command.split()[1]
    seconds = time.time() - args.started

    def merge(mine: dict, stored: dict) -> dict:
        earlier = stored.get("seconds", {})
        if not isinstance(earlier, dict):  # one number: a run before the study was split
            earlier = {"earlier runs": earlier}
        commands = [c for c in stored.get("commands", [])
                    if c != args.command and (partial or c.split()[1] != script)]  # fmt: skip
        spent = seconds + (earlier.get(script, 0.0) if partial else 0.0)
        merged = {**stored, **mine, "commands": [*commands, args.command],
                  "seconds": {**earlier, script: spent}}  # fmt: skip
        if partial and "rows" in mine:
            new = {(r["method"], r["nfe_target"]) for r in mine["rows"]}
            kept = [r for r in stored.get("rows", []) if (r["method"], r["nfe_target"]) not in new]
            merged["rows"] = kept + mine["rows"]
        return {k: v for k, v in merged.items() if v is not None}  # None: drop a stale key

    locked_update(folder / RAW, part, merge)
    record_run(folder, args.command, device=str(getattr(args, "device", None) or "cpu"))
    render_folder(folder)


def method_names(
    methods: list[Method], peers: list[Method], wanted: list[str] | None
) -> tuple[list[Method], list[Method]]:
    """`methods` and `peers` restricted to `wanted` (all when None); an unknown name is an
    error."""
    if not wanted:
        return methods, peers
    known = {m.name for m in methods + peers}
    if unknown := set(wanted) - known:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; known: {sorted(known)}")
    return [m for m in methods if m.name in wanted], [m for m in peers if m.name in wanted]
