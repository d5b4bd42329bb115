"""The library API: load a trained model, sample it, evaluate it (layer L5, above `methods`).

    from difflab import api

    model = api.load("runs/mnist_uvit")          # run dir, checkpoint folder or exported file
    gen = api.sample(model, num=16, steps=8)     # -> sampling.generate.Generation
    record = api.evaluate(model, metrics=["fd-lenet"], num=1000)

`load` returns a `LoadedModel`: the frozen network, its `TrainConfig`, schedule and
parameterization, where the weights came from, and its sampling defaults: a distilled student's
own recorded sampler, steps and exact logsnr levels, else DDIM with 32 steps on the sampler's
default grid. The `difflab sample|demo|eval` commands are thin parsers over these functions.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import TrainConfig
from .diffusion.guidance import guided_denoiser
from .diffusion.parameterization import Denoise
from .diffusion.schedules import Schedule
from .fileio import append_json_record, read_json, write_json_atomic
from .images import save_image_grid, save_images
from .interop import diffusers_folders
from .methods.discrete_diffusion import DISCRETE_METHODS
from .methods.discrete_diffusion import sample_to_folder as discrete_sample_to_folder
from .methods.distill import read_student_spec, spec_logsnrs
from .methods.rolling import sample_rollouts_to_folder
from .methods.unified_latents import UL_METHODS, evaluate_ul
from .methods.unified_latents import sample_to_folder as ul_sample_to_folder
from .sampling.dual_rate import DualRateFactory
from .sampling.generate import Generation, describe_grid, generate, resolve_grid
from .shipped import SHIPPED_MODELS as SHIPPED_MODELS
from .shipped import resolve_model_path as resolve_model_path
from .shipped import shipped_model_path as shipped_model_path
from .train.checkpoint import NetDenoiser, net_from_weights, read_weights

DEFAULT_SAMPLER = "ddim"
DEFAULT_STEPS = 32
SAMPLES_RECORD = "samples.json"
"""What `sample_to_folder` writes next to the images: how they were made."""
GRID_FILE = "grid.png"
IMAGE_PATTERN = "{:05d}.png"
_IMAGE_FILE = re.compile(r"^\d{5,}\.png$")
NO_INTERVAL = (-math.inf, math.inf)


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """A trained network ready to sample: `net`, `config`, `schedule`, `prediction`, where the
    weights came from (`source`), and the sampling defaults `sampler`, `steps`, `grid` (a
    student's recorded sampler/steps/levels, else `ddim`, 32, `"default"`)."""

    path: Path
    net: nn.Module
    config: TrainConfig
    source: dict[str, Any]
    student: dict[str, Any] | None = None
    clip_x: float | None = 1.0
    schedule: Schedule = field(init=False)
    sampler: str = field(init=False)
    steps: int = field(init=False)
    grid: str | Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.schedule = self.config.diffusion.build_schedule()
        if self.student is None:
            self.sampler, self.steps, self.grid = DEFAULT_SAMPLER, DEFAULT_STEPS, "default"
        else:
            self.sampler, self.steps = self.student["sampler"], int(self.student["steps"])
            self.grid = spec_logsnrs(self.student)

    @property
    def prediction(self) -> str:
        return self.config.diffusion.prediction

    @property
    def shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` of one sample."""
        cfg = self.net.config
        return (cfg.in_channels, cfg.resolution, cfg.resolution)

    @property
    def num_classes(self) -> int:
        return int(getattr(self.net.config, "num_classes", 0))

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def make_denoise(self) -> NetDenoiser | DualRateFactory:
        """The factory `make_denoise(labels=None) -> Denoise` that `generate` takes (for a
        dual-rate net a `DualRateDenoise`, which `dual_rate_ddpm` needs and every other sampler
        uses as the composed net)."""
        if hasattr(self.net, "encode") and hasattr(self.net, "denoise_light"):
            return DualRateFactory(self.net, self.prediction, self.clip_x)
        return NetDenoiser(self.net, self.prediction, self.clip_x)

    def denoiser(
        self,
        labels: Tensor | None = None,
        *,
        guidance: float = 0.0,
        interval: tuple[float, float] = NO_INTERVAL,
    ) -> Denoise:
        """The `Denoise` for a batch of `labels` (None: unconditional), with classifier-free
        guidance of weight `guidance` within the logsnr `interval`."""
        cond = self.make_denoise(labels)
        if guidance == 0:
            return cond
        if labels is None:
            raise ValueError("guidance needs class labels (a class-conditional model)")
        return guided_denoiser(cond, self.make_denoise(), guidance, interval)


def load(
    path: str | Path, *, ema: float | bool = True, device: str | torch.device = "cpu",
    clip_x: float | None = 1.0,
) -> LoadedModel:  # fmt: skip
    """Load an exported `.safetensors` model, a checkpoint folder, a run directory (its newest
    valid checkpoint) or a shipped model by name (`SHIPPED_MODELS`: `"mnist_uvit"`,
    `"fashion_mnist_uvit"`), a distilled student included, onto `device` (`devices.resolve_device`
    names). `ema`: True for the first EMA decay, a float for that decay, False for the raw
    weights; `clip_x` clamps `x_hat` to the data range. A diffusers model folder is read by
    `load_diffusers_model` (`ema` does not apply: the folder holds one set of weights)."""
    from .devices import resolve_device

    device = resolve_device(device)
    path = resolve_model_path(path)  # a shipped model's name stands for its file
    if diffusers_folders(path) is not None:  # a diffusers model folder (difflab.interop)
        return load_diffusers_model(path, device=device, clip_x=clip_x)
    tensors, cfg, source = read_weights(path, ema)
    net = net_from_weights(tensors, cfg, str(device), path)
    return LoadedModel(Path(path), net, cfg, source, read_student_spec(path), clip_x)


@dataclass
class DiffusersLoadedModel(LoadedModel):
    """A diffusers model folder as a `LoadedModel`: `net` is `interop.DiffusersNet` (the model
    as a difflab network), the schedule and prediction are its scheduler's; `config` is the
    default `TrainConfig` (no training recipe is known)."""

    def __post_init__(self) -> None:
        self.schedule = self.net.schedule
        self.sampler, self.steps, self.grid = DEFAULT_SAMPLER, DEFAULT_STEPS, "default"

    @property
    def prediction(self) -> str:
        return self.net.prediction


def load_diffusers_model(
    path: str | Path, *, device: str | torch.device = "cpu", clip_x: float | None = 1.0
) -> LoadedModel:
    """A diffusers model folder (`config.json` + `diffusion_pytorch_model.safetensors`, or a
    pipeline's `unet/` + `scheduler/`), read with safetensors only (`interop.load_diffusers`)."""
    import hashlib

    from .interop import load_diffusers

    model = load_diffusers(path, device=device)
    weights = diffusers_folders(path)[0] / "diffusion_pytorch_model.safetensors"
    source = {
        "path": str(path), "format": "diffusers", "class": type(model.model).__name__,
        "scheduler": type(model.scheduler).__name__,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }  # fmt: skip
    return DiffusersLoadedModel(Path(path), model.net, TrainConfig(), source, None, clip_x)


def _as_model(model: LoadedModel | str | Path) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load(model)


# ----------------------------------------------------------------------------- sampling


def class_labels(model: LoadedModel, num: int, label: int | str | Tensor | None) -> Tensor | None:
    """Labels of `num` samples: None or `"all"` cycles through the classes, an integer (or its
    string) repeats that class, a tensor is used as given; None for an unconditional model."""
    if isinstance(label, Tensor):
        return label
    if model.num_classes == 0:
        if label is not None:
            raise ValueError(f"label {label!r} given, but the model is unconditional")
        return None
    if label is None or label == "all":
        return torch.arange(num) % model.num_classes
    try:
        value = int(label)
    except ValueError:
        raise ValueError(f"label must be an integer class or 'all', got {label!r}") from None
    if not 0 <= value < model.num_classes:
        raise ValueError(f"label must be in [0, {model.num_classes}), got {value}")
    return torch.full((num,), value)


def sampling_settings(
    model: LoadedModel, sampler: str | None, steps: int | None, grid: str | Tensor | None
) -> tuple[str, int, str | Tensor]:
    """`(sampler, steps, grid)` with the model's defaults filled in: a student samples on its
    exact recorded levels only when none of the three is given; otherwise a missing sampler or
    step count is the model's own and a missing grid the sampler's default."""
    if sampler is None and steps is None and grid is None:
        return model.sampler, model.steps, model.grid
    steps = model.steps if steps is None else steps
    return sampler or model.sampler, steps, "default" if grid is None else grid


def sample(
    model: LoadedModel | str | Path,
    *,
    num: int,
    sampler: str | None = None,
    steps: int | None = None,
    grid: str | Tensor | None = None,
    options: Mapping[str, Any] | None = None,
    label: int | str | Tensor | None = None,
    guidance: float = 0.0,
    interval: tuple[float, float] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
) -> Generation:
    """Draw `num` samples (on the model's device, in batches of `batch_size`; returned on the
    CPU) with `sampler`/`steps`/`grid` (None: the model's defaults, `sampling_settings`) and
    sampler `options`; `label` as in `class_labels`; classifier-free guidance of weight
    `guidance` within the logsnr `interval` (which needs `guidance != 0`)."""
    model = _as_model(model)
    if interval is not None and guidance == 0:
        raise ValueError(f"interval {interval} has no effect without guidance; give a weight")
    sampler, steps, grid = sampling_settings(model, sampler, steps, grid)
    if sampler == "dual_rate_ddpm":  # it reuses encoder features: a dual-rate net, unguided
        if not isinstance(model.make_denoise, DualRateFactory):
            raise ValueError(f"sampler dual_rate_ddpm needs a dual-rate model (model.name "
                             f"dual_rate), got {model.config.model.name!r}; use ddpm")  # fmt: skip
        if guidance != 0:
            raise ValueError("sampler dual_rate_ddpm does not support guidance (a guided "
                             "denoiser has no features to reuse); use ddpm")  # fmt: skip
    return generate(
        model.make_denoise,
        model.shape,
        model.schedule,
        num=num,
        sampler=sampler,
        steps=steps,
        grid=grid,
        options=dict(options or {}),
        labels=class_labels(model, num, label),
        guidance=guidance,
        interval=interval or NO_INTERVAL,
        seed=seed,
        batch_size=batch_size,
        device=model.device,
        progress=progress,
        data_bound=model.clip_x,
    )


METHOD_SAMPLERS: dict[str, Callable[..., dict[str, Any]]] = {}
"""How `difflab sample` draws from a model trained by a paper-level method whose samples are not
one Gaussian image batch (`config.method.name` -> function). Each entry is called as
`fn(model, folder, *, num, seed, overwrite, **sampling_kwargs) -> record`: it checks and writes
`folder` itself (`check_output_folder`) and returns the record it wrote, with a one-line
`"summary"` for the command to print."""
METHOD_SAMPLERS.update(dict.fromkeys(UL_METHODS, ul_sample_to_folder))  # latents -> decoder
METHOD_SAMPLERS.update(dict.fromkeys(("rolling", "block"), sample_rollouts_to_folder))  # GIFs
METHOD_SAMPLERS.update(dict.fromkeys(DISCRETE_METHODS, discrete_sample_to_folder))  # text


def method_sampler(model: LoadedModel) -> Callable[..., dict[str, Any]] | None:
    """The `METHOD_SAMPLERS` entry for `model`'s training method, or None (plain diffusion)."""
    return METHOD_SAMPLERS.get(model.config.method.name)


def earlier_samples(folder: str | Path) -> list[Path]:
    """The files a previous `sample_to_folder` left in `folder` (images, grid, record)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = (SAMPLES_RECORD, GRID_FILE)
    return sorted(p for p in folder.iterdir() if p.name in names or _IMAGE_FILE.match(p.name))


def check_output_folder(folder: str | Path, *, overwrite: bool = False, needed_bytes: int = 0):
    """Create `folder` and check, before any sampling, that it can take new samples: it is a
    writable folder (a probe file is written and removed) with `needed_bytes` free, and holds no
    earlier samples unless `overwrite` (`sample_to_folder` then replaces them)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output folder {folder} is a file")
    probe = folder / f".difflab-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"\0" * 4096)
    except OSError as err:
        raise ValueError(f"output folder {folder} is not writable: {err.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise ValueError(
            f"output folder {folder}: {free / 2**20:.1f} MiB free, the samples need about "
            f"{needed_bytes / 2**20:.1f} MiB"
        )
    old = earlier_samples(folder)
    if old and not overwrite:
        raise ValueError(
            f"output folder {folder} holds {len(old)} files of earlier samples "
            f"({old[0].name}, ...); pass --overwrite to replace them, or choose another folder"
        )
    return folder


def output_bytes(shape: Sequence[int], num: int) -> int:
    """An upper bound on the bytes `sample_to_folder` writes: raw pixels plus PNG overhead."""
    return (num + 1) * (math.prod(shape) * 4 + 1024) + 65536


def sample_to_folder(
    model: LoadedModel, folder: str | Path, *, num: int, overwrite: bool = False, **kwargs
) -> tuple[Generation, dict[str, Any]]:
    """`sample(model, num=num, **kwargs)`, then write `00000.png`, ... , `grid.png` (the first
    256) and `samples.json` (`samples_record`) to `folder` (checked first, `check_output_folder`;
    with `overwrite`, earlier samples there are removed once the new ones are drawn). Nothing is
    written when sampling fails (e.g. `FloatingPointError` on a NaN model)."""
    folder = check_output_folder(
        folder, overwrite=overwrite, needed_bytes=output_bytes(model.shape, num)
    )
    gen = sample(model, num=num, **kwargs)
    for old in earlier_samples(folder):
        old.unlink()
    save_images(gen.samples, folder, IMAGE_PATTERN)
    save_image_grid(gen.samples[:256], folder / GRID_FILE, scale=2)
    record = samples_record(model, gen, num=num, **kwargs)
    write_json_atomic(folder / SAMPLES_RECORD, record)
    return gen, record


def samples_record(model: LoadedModel, gen: Generation, **kwargs) -> dict[str, Any]:
    """How `gen` was made: the model (path and sha256 or checkpoint step), sampler, steps, grid
    and its levels, options, guidance, interval, seed, num, NFE and JVPs per sample, versions,
    device and seconds."""
    from importlib.metadata import PackageNotFoundError, version

    sampler, steps, grid = sampling_settings(
        model, kwargs.get("sampler"), kwargs.get("steps"), kwargs.get("grid")
    )
    levels = resolve_grid(grid, sampler, model.schedule, steps)
    try:
        difflab_version = version("difflab")
    except PackageNotFoundError:
        difflab_version = "unknown"
    interval = kwargs.get("interval")
    return {
        "checkpoint": {
            **model.source,
            "path": str(Path(model.source["path"]).resolve()),
            "student": model.student is not None,
        },
        "sampler": sampler,
        "steps": steps,
        "grid": describe_grid(grid, sampler),
        "grid_logsnrs": [float(v) if math.isfinite(v) else str(float(v)) for v in levels],
        "options": dict(gen.options),  # as used: with the model's data range, where it applies
        "guidance": kwargs.get("guidance", 0.0),
        "interval": None if interval is None else [float(v) for v in interval],
        "label": None if isinstance(kwargs.get("label"), Tensor) else kwargs.get("label"),
        "seed": kwargs.get("seed", 0),
        "num": len(gen.samples),
        "nfe": gen.nfe,
        "jvps": gen.jvps,
        **sample_cost(model, gen, kwargs.get("guidance", 0.0)),
        "difflab_version": difflab_version,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(model.device),
        "seconds": round(gen.seconds, 3),
    }


def sample_cost(model: LoadedModel, gen: Generation, guidance: float = 0.0) -> dict[str, Any]:
    """`{"calls": {part: calls per sample}, "gflops_per_sample": ...}` of `gen` (FLOPs counted
    from shapes, `difflab.nets.cost`; a dual-rate net prices encoder and light calls apart);
    empty for a net the counter cannot run."""
    from .nets.cost import flops_per_sample
    from .sampling.registry import get_sampler

    calls = get_sampler(gen.sampler).part_calls(gen.steps, **gen.options)
    try:
        jvps = gen.jvps // (2 if guidance != 0 else 1)  # gen.jvps counts both guided passes
        flops = flops_per_sample(model.net, calls, jvps=jvps, guidance=guidance != 0)
    except (TypeError, ValueError):
        return {}
    return {"calls": calls, "gflops_per_sample": round(flops / 1e9, 6)}


# ----------------------------------------------------------------------------- evaluation


def check_results_file(path: str | Path) -> Path:
    """Check, before the work, that `path` can take a results record: its folder is created and
    writable, and an existing file is a JSON list (`fileio.append_json_record` then appends)."""
    path = Path(path)
    if path.exists():
        if not path.is_file():
            raise ValueError(f"results file {path} is a folder")
        if not isinstance(read_json(path), list):
            raise ValueError(f"results file {path} does not hold a JSON list of records")
    check_output_folder(path.parent)
    return path


ELBO_DECODER_LEVELS = tuple(float(level) for level in range(6, 16))
"""The decoder levels that `model_elbo(..., logsnr_max="best")` scans (those inside the
model's schedule, plus its end)."""


def model_elbo(
    model: LoadedModel, *, dataset: str, split: str, num: int, seed: int = 0,
    logsnr_max: float | str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`{"elbo_bits_per_dim", "elbo_logsnr_max"}`: the mean ELBO in bits/dim
    (`eval.likelihood.elbo`) of the first `num` reference images (8-bit, discretized decoder at
    `logsnr_max`, default the schedule's end), evaluated without class labels (the unconditional
    model of a CFG-trained net). `x_hat` is clipped to the data range [-1, 1]: the bound holds
    for any function `x_hat(z)`, and clipping only moves it towards the data.

    `logsnr_max="best"` chooses the decoder level on other images than those it reports on:
    the level of `ELBO_DECODER_LEVELS` with the lowest bound on training images `num..2 num`
    (never the first `num`, so not the reported ones when `split="train"`), then the bound at
    that level on `split`; the scan is returned as `elbo_level_scan` ({level: bits/dim})."""
    from .eval.reference import reference_images

    if logsnr_max == "best":
        s = model.schedule
        levels = [lv for lv in ELBO_DECODER_LEVELS if s.logsnr_min < lv < s.logsnr_max]
        held_out = reference_images(dataset, "train", 2 * num)[num:]
        scan = {lv: _elbo_bits(model, held_out, lv, seed) for lv in [*levels, s.logsnr_max]}
        best = min(scan, key=scan.get)
        return {**model_elbo(model, dataset=dataset, split=split, num=num, seed=seed,
                             logsnr_max=best), "elbo_level_scan": scan}  # fmt: skip
    top = _elbo_top(model, logsnr_max)
    images = reference_images(dataset, split, num)
    return {"elbo_bits_per_dim": _elbo_bits(model, images, top, seed), "elbo_logsnr_max": top}


def _elbo_bits(model: LoadedModel, images: torch.Tensor, top: float, seed: int) -> float:
    """The mean clipped ELBO (bits/dim) of uint8 `images` with the decoder at logsnr `top`."""
    from .eval.likelihood import elbo

    device = model.device
    x = images.float().to(device) / 127.5 - 1
    gen = torch.Generator(device).manual_seed(seed)
    denoise = NetDenoiser(model.net, model.prediction, 1.0)()
    s = model.schedule
    with torch.inference_mode():
        values = [
            elbo(denoise, b, logsnr_min=s.logsnr_min, logsnr_max=top, num_t=4, generator=gen)
            .bits_per_dim for b in x.split(250)
        ]  # fmt: skip
    return float(torch.cat(values).mean())


def _elbo_top(model: LoadedModel, logsnr_max: float | str | None) -> float | str:
    """The decoder level `logsnr_max` stands for (`"best"` passes), checked against the
    schedule's range."""
    s = model.schedule
    if logsnr_max == "best":
        return logsnr_max
    top = s.logsnr_max if logsnr_max is None else logsnr_max
    if isinstance(top, str) or not s.logsnr_min < top <= s.logsnr_max:
        raise ValueError(
            f"--elbo-logsnr-max must be 'best' or lie in ({s.logsnr_min}, {s.logsnr_max}], "
            f"got {top!r}"
        )
    return top


def default_reference(model: LoadedModel) -> str:
    """The reference data of `evaluate`: the model's training data when it has reference
    statistics (`eval.reference.DATASETS`), else MNIST (a diffusers folder records no data)."""
    from .eval.reference import DATASETS

    name = model.config.data.name
    return name if name in DATASETS else "mnist"


def evaluate(
    model: LoadedModel | str | Path,
    *,
    metrics: Sequence[str] | str = ("fd-lenet",),
    num: int = 10_000,
    dataset: str | None = None,
    split: str = "test",
    ref_num: int = 10_000,
    elbo_logsnr_max: float | str | None = None,
    out: str | Path | None = None,
    **sample_kwargs,
) -> dict[str, Any]:
    """Score `num` samples (`sample(model, **sample_kwargs)`) with feature `metrics` against
    `dataset`/`split` (`eval.scores`; `dataset` defaults to `default_reference(model)`) and/or
    the model's `elbo` on `min(num, ref_num)` reference images; returns the record (appended to
    the JSON list `out` when given). Metric names, dataset, split, feature shapes, optional
    extras, the ELBO level and `out` are all checked before the first sample is drawn."""
    from .eval.reference import check_dataset, reference_images
    from .eval.scores import FeatureScorer, parse_metrics

    model = _as_model(model)
    metrics = parse_metrics(metrics if isinstance(metrics, str) else ",".join(metrics))
    dataset = dataset or default_reference(model)
    check_dataset(dataset)
    if out is not None:
        check_results_file(out)
    sampler, steps, grid = sampling_settings(
        model, sample_kwargs.pop("sampler", None), sample_kwargs.pop("steps", None),
        sample_kwargs.pop("grid", None),
    )  # fmt: skip
    interval = sample_kwargs.get("interval")
    record: dict[str, Any] = {
        "checkpoint": str(model.path),
        "model": {k: v for k, v in model.source.items() if k != "path"},  # sha256 or step
        "sampler": sampler,
        "steps": steps,
        "grid": describe_grid(grid, sampler),
        "options": dict(sample_kwargs.get("options") or {}),
        "guidance": sample_kwargs.get("guidance", 0.0),
        "interval": None if interval is None else [float(v) for v in interval],
        "num": num,
        "seed": sample_kwargs.get("seed", 0),
        "reference": f"{dataset}/{split}",
        "device": str(model.device),
    }
    if model.config.method.name in UL_METHODS:  # Unified Latents: PSNR, bits, then samples
        record.update(evaluate_ul(
            model, metrics=metrics, num=num, dataset=dataset, split=split, ref_num=ref_num,
            seed=record["seed"], sampler=sampler, steps=steps,
            options=sample_kwargs.get("options"), batch_size=sample_kwargs.get("batch_size", 256),
        ))  # fmt: skip
        if out is not None:
            append_json_record(out, record)
        return record
    sample_metrics = [m for m in metrics if m != "elbo"]
    if "elbo" in metrics:
        top = _elbo_top(model, elbo_logsnr_max)
        reference_images(dataset, split, 1)  # the split exists
    if sample_metrics:
        scorer = FeatureScorer(
            sample_metrics, dataset=dataset, split=split, ref_num=ref_num, device=model.device
        )
        scorer.check_shape(model.shape, f"samples of {model.path}")
        gen = sample(model, num=num, sampler=sampler, steps=steps, grid=grid, **sample_kwargs)
        record.update(nfe=gen.nfe, jvps=gen.jvps, sampling_seconds=round(gen.seconds, 2))
        record["options"] = dict(gen.options)  # with the model's data range, where used
        record.update(sample_cost(model, gen, sample_kwargs.get("guidance", 0.0)))
        start = time.perf_counter()
        record.update(scorer(gen.samples))
        record["feature_seconds"] = round(time.perf_counter() - start, 2)
    if "elbo" in metrics:
        seed = sample_kwargs.get("seed", 0)
        n = min(num, ref_num)
        record.update(
            model_elbo(model, dataset=dataset, split=split, num=n, seed=seed, logsnr_max=top)
        )
    if out is not None:
        append_json_record(out, record)
    return record


def evaluate_real(
    dataset: str,
    *,
    split: str = "train",
    ref_split: str = "test",
    num: int = 10_000,
    metrics: Sequence[str] | str = ("fd-lenet",),
    ref_num: int = 10_000,
    device: str | torch.device = "cpu",
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Real images of `dataset`/`split` scored against `ref_split`: the floor of each feature
    metric at that sample size (`elbo` is skipped)."""
    from .devices import resolve_device
    from .eval.reference import reference_images
    from .eval.scores import FeatureScorer, parse_metrics

    names = parse_metrics(metrics if isinstance(metrics, str) else ",".join(metrics))
    if names == ["elbo"]:
        raise ValueError("--metric elbo needs a model (difflab eval checkpoint); real images "
                         "are scored with feature metrics only")  # fmt: skip
    if out is not None:
        check_results_file(out)
    device = resolve_device(device)
    scorer = FeatureScorer(names, dataset=dataset, split=ref_split, ref_num=ref_num, device=device)
    images = reference_images(dataset, split, num)
    record: dict[str, Any] = {
        "real": f"{dataset}/{split}",
        "num": len(images),
        "reference": f"{dataset}/{ref_split}",
        "device": str(device),
    }
    start = time.perf_counter()
    record.update(scorer(images.float() / 127.5 - 1))
    record["feature_seconds"] = round(time.perf_counter() - start, 2)
    if out is not None:
        append_json_record(out, record)
    return record
