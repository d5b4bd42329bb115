"""The training loop: AdamW + warmup + clipping + EMA, mixed precision, DDP, exact resume.

`train_step` is one optimisation step of any per-example loss; `Trainer` runs it over a dataset
with logging, sampling and checkpointing; `run_training(cfg)` builds and runs it for a config
(`difflab train` reaches it through `train.runs.launch_training`).
A method (e.g. distillation) reuses the loop by passing its own

    loss_fn(models: Mapping[str, nn.Module], batch: (x, labels | None), generator) -> loss [B]

where `models["net"]` is the network being trained (DDP-wrapped when distributed) and the other
entries are `extra_modules` (a frozen teacher, or further trainable nets: any module with
trainable parameters is optimised, averaged into nothing, and checkpointed).

Reproducibility: data order is a function of `(seed, epoch)`, the loss's noise/time generator is
reseeded from `(seed, rank, step)` every step, and the global RNGs (used by dropout and the
nets' label dropout) are saved in every checkpoint, so a resumed run repeats an uninterrupted
one exactly (bitwise on CPU in fp32).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..allocator import malloc_fix_applied
from ..config import DiffusionConfig, TrainConfig, config_to_dict, config_to_yaml
from ..diffusion.losses import diffusion_loss
from ..diffusion.parameterization import as_denoiser
from ..fileio import write_text_atomic
from ..images import save_image_grid
from .checkpoint import (
    Checkpoint,
    CheckpointWriteError,
    find_resume_checkpoint,
    list_checkpoints,
    optimizer_from_tensors,
    optimizer_to_tensors,
    remove_stale_temporaries,
    save_checkpoint,
)
from .distributed import (
    SEED_GLOBAL,
    SEED_NOISE,
    SEED_SAMPLE,
    DistInfo,
    ShardedBatchSampler,
    all_gather_object,
    all_reduce_mean,
    barrier,
    derive_seed,
    parameter_hash,
)
from .ema import EMA
from .monitor import METRICS_FILE, MetricsLogger, plot_loss_curve, truncate_metrics

Batch = tuple[Tensor, Tensor | None]
LossFn = Callable[[Mapping[str, nn.Module], Batch, torch.Generator], Tensor]


PLOT_INTERVAL_S = 300.0  # re-plot the loss curve at checkpoints at most this often (and at the end)


class TrainingDiverged(RuntimeError):
    """Raised after `train.max_nan_steps` consecutive non-finite losses or gradients."""


# --------------------------------------------------------------------------- precision


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16): then bf16 autocast
    speeds training up; on AVX2-only CPUs it is emulated and slower than fp32."""
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if "AMX" in capability or "BF16" in capability:
        return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """`"auto"` -> bf16 on CUDA and on CPUs with native bf16, else fp32."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_native_bf16():
            warnings.warn(
                "bf16 requested on a CPU without native bf16: expect it to be slower", stacklevel=2
            )
        return torch.bfloat16
    if precision == "auto":
        native = device.type == "cuda" or cpu_has_native_bf16()
        return torch.bfloat16 if native else torch.float32
    raise ValueError(f"train.precision must be fp32, bf16 or auto, got {precision!r}")


def resolve_compile(option: bool | str, device: torch.device) -> bool:
    """`"auto"` -> torch.compile on CUDA only (compiling costs more than it saves on a CPU)."""
    return device.type == "cuda" if option == "auto" else bool(option)


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# --------------------------------------------------------------------------- one step


@dataclass(frozen=True)
class StepResult:
    loss: float
    grad_norm: float
    skipped: bool


def learning_rate(step: int, optim, total_steps: int) -> float:
    """The learning rate of step `step` (0-based) under `optim` (an `OptimConfig`): linear warmup
    from `lr / warmup_steps` to `lr`, then `constant`, or a `cosine` / `linear` decay from `lr` to
    `min_lr` reached at `decay_steps` (default `total_steps`) and held after it."""
    lr, warmup = optim.lr, optim.warmup_steps
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if optim.decay == "constant":
        return lr
    end = optim.decay_steps or total_steps
    progress = min(1.0, max(0, step - warmup) / max(1, end - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if optim.decay == "cosine" else 1 - progress
    return optim.min_lr + (lr - optim.min_lr) * shape


def train_step(
    loss_fn: LossFn,
    models: Mapping[str, nn.Module],
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    *,
    generator: torch.Generator,
    grad_clip: float | None = None,
    precision: torch.dtype = torch.float32,
    ema: EMA | None = None,
    ema_source: nn.Module | None = None,
    ema_step: int | None = None,
    dist_info: DistInfo | None = None,
) -> StepResult:
    """One step: mean per-example loss -> backward -> clip -> AdamW -> EMA update.

    A non-finite loss (averaged over ranks, so every rank agrees) skips the backward pass and
    the update; a non-finite gradient norm skips the update. Either returns `skipped=True`.
    `ema_source` is the unwrapped net the EMA tracks (default `models["net"]`); `ema_step` the
    0-based step that drives its warm-up."""
    optimizer.zero_grad(set_to_none=True)
    device = batch[0].device
    with autocast(device, precision):
        losses = loss_fn(models, batch, generator)
    if losses.ndim != 1 or losses.shape[0] != batch[0].shape[0]:
        raise ValueError(f"loss_fn must return per-example losses [B], got {tuple(losses.shape)}")
    loss = losses.float().mean()
    loss_value = float(all_reduce_mean(loss.detach(), dist_info or DistInfo()))
    if not math.isfinite(loss_value):
        return StepResult(loss_value, math.nan, True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    max_norm = grad_clip if grad_clip is not None else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_value, grad_norm, True)
    optimizer.step()
    if ema is not None:
        ema.update(ema_source if ema_source is not None else models["net"], ema_step)
    return StepResult(loss_value, grad_norm, False)


def diffusion_loss_fn(cfg: DiffusionConfig) -> LossFn:
    """The standard objective: `diffusion_loss` of `models["net"]` wrapped by `as_denoiser`."""
    schedule, weighting = cfg.build_schedule(), cfg.build_weighting()

    def loss_fn(models: Mapping[str, nn.Module], batch: Batch, generator: torch.Generator):
        x, labels = batch
        cond = {} if labels is None else {"labels": labels}
        return diffusion_loss(
            as_denoiser(models["net"], cfg.prediction, **cond),
            x,
            schedule,
            weighting,
            time_sampling=cfg.time_sampling,
            generator=generator,
            multiscale_min_resolution=cfg.multiscale_min_resolution,
        )

    return loss_fn


def make_optimizer(modules: list[nn.Module], cfg) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices/kernels (not on biases, norms, embeddings' scales).
    `torch.optim` imports `torch._dynamo` (about 1.5 s) when an optimizer is built: a cost of
    training only, paid on use."""
    decay, no_decay = [], []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


# --------------------------------------------------------------------------- RNG state


# The legacy global numpy/python RNGs are saved and restored on purpose: data transforms and
# user code may draw from them, and exact resume needs them back where they were.


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *map(_plain, np_state[2:])],
        "torch": torch.get_rng_state().numpy().tobytes(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()]
    return state


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _set_rng_state(state: Mapping[str, Any], tensors: Mapping[str, Tensor], rank: int) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(tensors[f"rank{rank}.torch"])
    cuda = sorted(k for k in tensors if k.startswith(f"rank{rank}.cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping) and key != "kwargs":
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    random.seed(seed)


# --------------------------------------------------------------------------- the loop


class Trainer:
    """Trains `net` on `dataset` with `loss_fn` (default: the diffusion loss of `cfg.diffusion`).

    `extra_modules`: further modules handed to `loss_fn`; those with trainable parameters are
    optimised and checkpointed too (`extra_<name>.safetensors`), frozen ones (a teacher) are put
    in eval mode and not saved: a method rebuilds them from its own config when it resumes.
    `sample_fn(net, noise, labels) -> images` makes the PNG grids (default: DDIM with
    `train.sample_steps` steps on the training schedule).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        net: nn.Module,
        dataset: Dataset,
        *,
        loss_fn: LossFn | None = None,
        extra_modules: Mapping[str, nn.Module] | None = None,
        sample_fn: Callable[[nn.Module, Tensor, Tensor | None], Tensor] | None = None,
        dist_info: DistInfo | None = None,
    ) -> None:
        self.cfg, self.dataset = cfg, dataset
        self.dist = dist_info or DistInfo()
        self.device = self.dist.device
        self.run_dir = Path(cfg.train.out_dir)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.net = net.to(self.device)
        self.conditional = getattr(getattr(net, "config", None), "num_classes", 0) > 0
        self._check_data_matches_net()
        self.extras = {k: m.to(self.device) for k, m in (extra_modules or {}).items()}
        self.trainable_extras = {
            k: m for k, m in self.extras.items() if any(p.requires_grad for p in m.parameters())
        }
        for name, module in self.extras.items():
            if name not in self.trainable_extras:
                module.eval()  # a frozen teacher runs without dropout
        self.ema = (
            EMA(self.net, cfg.optim.ema_decays, warmup=cfg.optim.ema_warmup)
            if cfg.optim.ema_decays
            else None
        )
        self.optimizer = make_optimizer([self.net, *self.trainable_extras.values()], cfg.optim)
        self.models = {"net": self._wrap(self.net), **self.extras}
        for name, module in self.trainable_extras.items():
            self.models[name] = self._wrap(module)
        self.loss_fn = loss_fn or diffusion_loss_fn(cfg.diffusion)
        self.sample_fn = sample_fn or self._ddim_sample_fn()
        self.generator = torch.Generator(self.device)
        self.step = 0
        self.nan_skipped = 0
        self.nan_consecutive = 0

    # ---- setup helpers

    def _check_data_matches_net(self) -> None:
        net_cfg = getattr(self.net, "config", None)
        shape = getattr(self.dataset, "image_shape", None)
        if net_cfg is not None and shape is not None and hasattr(net_cfg, "resolution"):
            expected = (net_cfg.in_channels, net_cfg.resolution, net_cfg.resolution)
            if tuple(shape) != expected:
                raise ValueError(
                    f"data images have shape {tuple(shape)} but the net expects {expected}: set "
                    "model.kwargs.in_channels/resolution or data.kwargs (e.g. pad_to) to match"
                )
        classes = getattr(self.dataset, "num_classes", None)
        if self.conditional and not classes:
            raise ValueError(
                "model.kwargs.num_classes > 0 but the dataset has no labels: set num_classes=0"
            )
        if self.conditional and classes and classes > net_cfg.num_classes:
            raise ValueError(
                f"the dataset has {classes} classes but model.kwargs.num_classes="
                f"{net_cfg.num_classes}"
            )

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=ids)
        if resolve_compile(self.cfg.train.compile, self.device):
            module = torch.compile(module)
        return module

    def _ddim_sample_fn(self):
        from ..sampling import sample_ddim, uniform_t_grid

        schedule = self.cfg.diffusion.build_schedule()
        steps = max(1, self.cfg.train.sample_steps)

        def sample(net: nn.Module, noise: Tensor, labels: Tensor | None) -> Tensor:
            cond = {} if labels is None else {"labels": labels}
            denoise = as_denoiser(net, self.cfg.diffusion.prediction, clip_x=1.0, **cond)
            return sample_ddim(denoise, noise, uniform_t_grid(schedule, steps))

        return sample

    def _loader(self, start: int) -> DataLoader:
        sampler = ShardedBatchSampler(
            len(self.dataset),
            self.cfg.data.batch_size,
            seed=self.cfg.train.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            start=start,
        )
        self.sampler = sampler
        # an explicit generator keeps DataLoader from drawing its base seed from the global RNG
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.train.seed, self.dist.rank, start))
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=gen,
        )

    def _to_device(self, batch) -> Batch:
        x, labels = batch
        x = x.to(self.device, non_blocking=True)
        if not self.conditional:
            return x, None
        labels = labels.to(self.device, non_blocking=True)
        if bool((labels < 0).any()):
            raise ValueError("a class-conditional net got unlabeled examples (label -1)")
        return x, labels

    # ---- checkpoints

    def _modules_to_save(self) -> dict[str, nn.Module]:
        out = {"model": self.net}
        if self.ema is not None:
            out.update({EMA.key(d): m for d, m in zip(self.ema.decays, self.ema.averages)})
        out.update({f"extra_{k}": m for k, m in self.trainable_extras.items()})
        return out

    def save(self) -> Path | None:
        """Checkpoint the current step (collective under DDP: every rank must call it)."""
        states = all_gather_object(_rng_state(), self.dist)
        path = failed = None
        if self.dist.is_main:
            opt_tensors, opt_meta = optimizer_to_tensors(self.optimizer)
            rng = {}
            for r, s in enumerate(states):
                rng[f"rank{r}.torch"] = torch.frombuffer(bytearray(s["torch"]), dtype=torch.uint8)
                for i, c in enumerate(s.get("cuda", [])):
                    rng[f"rank{r}.cuda{i:03d}"] = torch.frombuffer(bytearray(c), dtype=torch.uint8)
            files = {name: m.state_dict() for name, m in self._modules_to_save().items()}
            files["optimizer"], files["rng"] = opt_tensors, rng
            state = {
                "world_size": self.dist.world_size,
                "data": {
                    **self.sampler.position(self.step),
                    "permutation_seed": self.cfg.train.seed,
                    "global_batch": self.cfg.data.batch_size,
                },
                "nan": {"skipped": self.nan_skipped, "consecutive": self.nan_consecutive},
                "rng": [{k: s[k] for k in ("python", "numpy")} for s in states],
                "optimizer": opt_meta,
                "ema_decays": list(self.ema.decays) if self.ema else [],
                "trainable_extras": sorted(self.trainable_extras),
            }
            try:
                path = save_checkpoint(
                    self.run_dir, self.step, files, state, self.cfg, self.cfg.train.keep_last
                )
            except CheckpointWriteError as err:
                failed = str(err)
        # instead of a barrier: every rank learns whether the write failed, and stops with it
        failed = all_gather_object(failed if self.dist.is_main else None, self.dist)[0]
        if failed is not None:
            raise CheckpointWriteError(failed)
        return path

    def load(self, ckpt: Checkpoint) -> None:
        """Restore everything `save` wrote; the run then continues exactly."""
        for name, module in self._modules_to_save().items():
            module.load_state_dict(ckpt.tensors(name), strict=True)
        self.optimizer.load_state_dict(
            optimizer_from_tensors(ckpt.tensors("optimizer"), ckpt.state["optimizer"])
        )
        changed = _changed_keys(config_to_dict(ckpt.config), config_to_dict(self.cfg))
        changed = [k for k in changed if k not in ("train.steps", "train.out_dir")]
        if changed and self.dist.is_main:
            warnings.warn(
                f"resuming {ckpt.path} with a changed config ({', '.join(changed)}): the run "
                "continues, but not as the original run would have",
                stacklevel=2,
            )
        self.step = ckpt.step
        self.nan_skipped = ckpt.state["nan"]["skipped"]
        self.nan_consecutive = ckpt.state["nan"]["consecutive"]
        if ckpt.state["world_size"] == self.dist.world_size:
            _set_rng_state(ckpt.state["rng"][self.dist.rank], ckpt.tensors("rng"), self.dist.rank)
        else:
            warnings.warn(
                f"checkpoint {ckpt.path} was written by {ckpt.state['world_size']} processes, "
                f"resuming with {self.dist.world_size}: RNG streams are reseeded, so the run "
                "continues correctly but not bit-for-bit",
                stacklevel=2,
            )
            seed_everything(
                derive_seed(self.cfg.train.seed, SEED_GLOBAL, self.dist.rank, self.step)
            )

    # ---- sampling

    @torch.no_grad()
    def sample_grid(self) -> Path | None:
        """A PNG grid of `train.sample_num` samples from the first EMA (or the raw net)."""
        n = self.cfg.train.sample_num
        shape = getattr(self.dataset, "image_shape", None)
        if n <= 0 or shape is None:
            return None
        net = self.ema.average() if self.ema is not None else self.net
        was_training = net.training
        net.eval()
        gen = torch.Generator(self.device).manual_seed(
            derive_seed(self.cfg.train.seed, SEED_SAMPLE)
        )
        noise = torch.randn((n, *shape), generator=gen, device=self.device)
        classes = getattr(self.dataset, "num_classes", 0) or 0
        labels = torch.arange(n, device=self.device) % classes if self.conditional else None
        try:
            with torch.random.fork_rng(devices=[]):  # sampling must not move the training RNG
                images = self.sample_fn(net, noise, labels)
        except FloatingPointError as err:  # a sampler's non-finite output: no grid, train on
            warnings.warn(f"step {self.step}: no sample grid: {err}", stacklevel=2)
            return None
        finally:
            net.train(was_training)
        if not bool(torch.isfinite(images).all()):  # a custom sample_fn that does not check
            warnings.warn(f"step {self.step}: no sample grid: non-finite samples", stacklevel=2)
            return None
        scale = max(1, 128 // shape[-1])
        path = self.run_dir / "samples" / f"step_{self.step:07d}.png"
        nrow = classes if self.conditional and n >= classes else None  # one class per column
        return save_image_grid(images, path, nrow=nrow, scale=scale)

    # ---- the run

    def _prepare_run_dir(self, resume: bool, ckpt: Checkpoint | None) -> Checkpoint | None:
        if resume and ckpt is None:
            ckpt = find_resume_checkpoint(self.run_dir)
        elif not resume and list_checkpoints(self.run_dir):
            raise ValueError(
                f"train.out_dir {str(self.run_dir)!r} already has checkpoints: pass --resume to "
                "continue that run, or choose another train.out_dir"
            )
        barrier(self.dist)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.run_dir)
            write_text_atomic(self.run_dir / "config.yaml", config_to_yaml(self.cfg))
            if ckpt is not None:
                truncate_metrics(self.run_dir / METRICS_FILE, ckpt.step)
                print(
                    f"resumed from step {ckpt.step} of {self.cfg.train.steps} "
                    f"(checkpoint {ckpt.path})"
                )
            else:  # a fresh run, or a resumed one that never wrote a checkpoint
                (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
                start = self.cfg.train.init_from or "scratch"  # init_from: fine-tuning
                if resume:
                    print(f"no checkpoint in {self.run_dir} yet; starting from {start}")
        return ckpt

    def fit(self, resume: bool = False, checkpoint: Checkpoint | None = None) -> Path:
        """Train to `train.steps` (continuing from `checkpoint`, default the newest valid one,
        if `resume`); returns the run directory. A resumed run that has already reached
        `train.steps` says so and changes nothing; one whose checkpoints are all unusable
        raises `CheckpointError` naming them."""
        if resume and checkpoint is None:
            checkpoint = find_resume_checkpoint(self.run_dir)
        if resume and finished(checkpoint, self.cfg, announce=self.dist.is_main):
            return self.run_dir
        t = self.cfg.train
        ckpt = self._prepare_run_dir(resume, checkpoint)
        seed_everything(derive_seed(t.seed, SEED_GLOBAL, self.dist.rank))
        if ckpt is not None:
            self.load(ckpt)
        logger = MetricsLogger(self.run_dir, t.tensorboard) if self.dist.is_main else None
        loader = iter(self._loader(self.step))
        self._log_start(logger, resumed_from=ckpt)
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            disable=not (self.dist.is_main and t.progress),
            dynamic_ncols=True,
            desc="train",
        )
        losses, last_time, last_step = [], time.perf_counter(), self.step
        last_plot = time.monotonic()
        deadline = time.monotonic() + 60 * t.max_minutes if t.max_minutes else math.inf
        self.net.train()
        try:
            while self.step < t.steps:
                batch = self._to_device(next(loader))
                self.generator.manual_seed(
                    derive_seed(t.seed, SEED_NOISE, self.dist.rank, self.step)
                )
                lr = learning_rate(self.step, self.cfg.optim, t.steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                result = train_step(
                    self.loss_fn,
                    self.models,
                    batch,
                    self.optimizer,
                    generator=self.generator,
                    grad_clip=self.cfg.optim.grad_clip,
                    precision=self.precision,
                    ema=self.ema,
                    ema_source=self.net,
                    ema_step=self.step,
                    dist_info=self.dist,
                )
                self.step += 1
                bar.update(1)
                self._count_nan(result, logger)
                if not result.skipped:
                    losses.append(result.loss)
                if t.log_every and (self.step % t.log_every == 0 or self.step == t.steps):
                    now = time.perf_counter()
                    rate = (self.step - last_step) * self.cfg.data.batch_size / (now - last_time)
                    record = {
                        "step": self.step,
                        "loss": float(np.mean(losses)) if losses else math.nan,
                        "grad_norm": result.grad_norm,
                        "lr": lr,
                        "images_per_s": rate,
                        "epoch": self.sampler.position(self.step)["epoch"],
                        "nan_skipped": self.nan_skipped,
                    }
                    if logger is not None:
                        logger.log(record)
                    bar.set_postfix(
                        loss=f"{record['loss']:.4g}", img_s=f"{rate:.0f}", refresh=False
                    )
                    losses, last_time, last_step = [], now, self.step
                out_of_time = self._past(deadline)
                if (
                    (t.ckpt_every and self.step % t.ckpt_every == 0)
                    or self.step == t.steps
                    or out_of_time
                ):
                    self.save()
                    if self.step == t.steps or time.monotonic() - last_plot > PLOT_INTERVAL_S:
                        self._plot()
                        last_plot = time.monotonic()
                if self.dist.is_main and (
                    (t.sample_every and self.step % t.sample_every == 0)
                    or (t.sample_every and self.step == t.steps)
                ):
                    self.sample_grid()
                if out_of_time:
                    if logger is not None:
                        logger.log({"step": self.step, "event": "time_limit",
                                    "max_minutes": t.max_minutes})  # fmt: skip
                    break
            self._log_end(logger)
        finally:
            bar.close()
            if logger is not None:
                logger.close()
        return self.run_dir

    def _plot(self) -> None:
        if self.dist.is_main:
            plot_loss_curve(self.run_dir / METRICS_FILE, self.run_dir / "loss.png")

    def _count_nan(self, result: StepResult, logger: MetricsLogger | None) -> None:
        if not result.skipped:
            self.nan_consecutive = 0
            return
        self.nan_skipped += 1
        self.nan_consecutive += 1
        what = "loss" if not math.isfinite(result.loss) else "gradient norm"
        if logger is not None:
            logger.log({"step": self.step, "event": "nonfinite", "what": what})
        if self.nan_consecutive >= self.cfg.train.max_nan_steps:
            self._plot()
            last = list_checkpoints(self.run_dir)
            raise TrainingDiverged(
                f"training stopped at step {self.step}: {self.nan_consecutive} consecutive "
                f"non-finite {what} values (train.max_nan_steps="
                f"{self.cfg.train.max_nan_steps}; {self.nan_skipped} steps skipped in total). "
                f"The last good checkpoint is {last[-1] if last else 'none (none was written)'}; "
                "lower optim.lr or check the data, then resume with --resume"
            )
        if self.dist.is_main:
            warnings.warn(
                f"step {self.step}: non-finite {what}, step skipped "
                f"({self.nan_consecutive} in a row, {self.nan_skipped} in total)",
                stacklevel=2,
            )

    def _log_start(self, logger: MetricsLogger | None, resumed_from: Checkpoint | None) -> None:
        if logger is None:
            return
        logger.log(
            {
                "step": self.step,
                "event": "resume" if resumed_from is not None else "start",
                "checkpoint": str(resumed_from.path) if resumed_from is not None else None,
                "init_from": self.cfg.train.init_from or None,
                "world_size": self.dist.world_size,
                "global_batch": self.cfg.data.batch_size,
                "local_batch": self.cfg.data.batch_size // self.dist.world_size,
                "device": str(self.device),
                "precision": str(self.precision).removeprefix("torch."),
                "compile": resolve_compile(self.cfg.train.compile, self.device),
                "malloc_fix": malloc_fix_applied(),
                "parameters": sum(p.numel() for p in self.net.parameters()),
            }
        )

    def _past(self, deadline: float) -> bool:
        """Whether `train.max_minutes` is used up; every replica stops at the same step (rank
        0's clock decides)."""
        past = time.monotonic() > deadline
        if deadline == math.inf or not self.dist.enabled:
            return past  # no tensor, no device sync
        flag = torch.tensor(float(past), device=self.device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag)

    def _log_end(self, logger: MetricsLogger | None) -> None:
        """Check that all replicas hold identical weights (EDM-style consistency check)."""
        hashes = all_gather_object(parameter_hash(self.net), self.dist)
        if logger is not None:
            logger.log(
                {
                    "step": self.step,
                    "event": "end",
                    "nan_skipped": self.nan_skipped,
                    "replica_hashes": hashes,
                }
            )
        if len(set(hashes)) != 1:
            raise RuntimeError(f"DDP replicas diverged: parameter hashes {hashes}")


def finished(checkpoint: Checkpoint | None, cfg: TrainConfig, announce: bool = True) -> bool:
    """Whether a resumed run has nothing left to do: its checkpoint is at `train.steps` or
    beyond. Prints so (when `announce`) with the way to continue."""
    if checkpoint is None or checkpoint.step < cfg.train.steps:
        return False
    if announce:
        print(
            f"run {cfg.train.out_dir} is already finished at step {checkpoint.step} of "
            f"{cfg.train.steps}; raise train.steps to continue (e.g. train.steps="
            f"{2 * checkpoint.step})"
        )
    return True
