"""Typed training configs: frozen dataclasses filled from YAML plus `key=value` overrides.

Loading goes through OmegaConf structured configs (`OmegaConf.structured` + `merge`), so an unknown
key or a value of the wrong type is rejected with the key's dotted name; the result is converted
back to these plain dataclasses. Keyword dictionaries that are forwarded to a registry
(`model.kwargs`, `data.kwargs`, `diffusion.schedule_kwargs`, `diffusion.weighting_kwargs`) are
checked against the signature of what they configure, so `model.kwargs.dpeth=4` names the key too.

    cfg = load_config("configs/mnist_uvit.yaml", ["optim.lr=1e-4", "train.steps=2000"])
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass(frozen=True)
class ModelConfig:
    """A network from `difflab.nets` by registry name; `kwargs` are its config dataclass fields."""

    name: str = "uvit"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    """A dataset from `difflab.data.make_dataset(name, split, **kwargs)`.
    `batch_size` is the global batch: under DDP each of N ranks gets `batch_size / N`."""

    name: str = "digits"
    split: str = "train"
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    num_workers: int = 0


@dataclass(frozen=True)
class DiffusionConfig:
    """The training objective: schedule (t -> logsnr), network parameterization, loss weighting
    (`difflab.diffusion.losses.WEIGHTINGS`), time sampling and the optional multiscale loss."""

    schedule: str = "cosine"
    schedule_kwargs: dict[str, Any] = field(default_factory=dict)
    prediction: Literal["x", "eps", "v"] = "v"
    weighting: str = "sigmoid"
    weighting_kwargs: dict[str, Any] = field(default_factory=dict)
    time_sampling: Literal["uniform", "antithetic", "stratified"] = "uniform"
    multiscale_min_resolution: int | None = None

    def build_schedule(self):
        from .diffusion.schedules import make_schedule

        return make_schedule(self.schedule, **self.schedule_kwargs)

    def build_weighting(self):
        from .diffusion.losses import make_weighting

        return make_weighting(self.weighting, **self.weighting_kwargs)


LR_DECAYS = ("constant", "cosine", "linear")  # shapes of `difflab.train.trainer.learning_rate`


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup to `lr`, then `decay` (`constant`, or `cosine` / `linear` down to
    `min_lr` at step `decay_steps`, default `train.steps`; a pure function of the step, so a
    resume continues it exactly), global-norm clipping and EMA copies (`ema_warmup`: decay
    `min(d, (1 + n) / (10 + n))` at step `n`, see `train.ema.EMA`; on by default since issue 15,
    while a stored config written before has it off, `config_from_stored`)."""

    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    decay: str = "constant"
    decay_steps: int | None = None
    min_lr: float = 0.0
    grad_clip: float | None = 1.0
    ema_decays: list[float] = field(default_factory=lambda: [0.999])
    ema_warmup: bool = True


@dataclass(frozen=True)
class RunConfig:
    """The training loop. `*_every = 0` switches that action off (a checkpoint is still written
    at the last step). Label dropout for classifier-free guidance is a net field
    (`model.kwargs.label_dropout`): the net drops labels itself in training mode.
    `precision`/`compile` `"auto"`: bf16 + torch.compile on CUDA, bf16 on CPUs with native bf16
    (AVX512-BF16/AMX), else fp32 and eager. `max_nan_steps` consecutive non-finite losses stop
    the run (single ones are skipped and counted). `max_minutes > 0` ends the run early, with a
    checkpoint, once that much wall time has passed in this invocation (resume continues it).
    `init_from` fine-tunes: a fresh run starts from those weights (the first EMA of a model
    file, checkpoint, run directory or shipped model name; the net's config must match) with a
    new optimizer, EMA and step count; a resumed run takes its own checkpoint instead."""

    steps: int = 10_000
    seed: int = 0
    log_every: int = 50
    sample_every: int = 0
    sample_num: int = 64
    sample_steps: int = 32
    ckpt_every: int = 1000
    keep_last: int = 3
    precision: Literal["fp32", "bf16", "auto"] = "auto"
    compile: bool | str = "auto"
    out_dir: str = "runs/default"
    max_nan_steps: int = 5
    max_minutes: float = 0.0
    init_from: str = ""
    tensorboard: bool = True
    progress: bool = True


@dataclass(frozen=True)
class MethodConfig:
    """What is trained: a method of `difflab.train.methods.TRAINING_METHODS` by name (the plain
    Gaussian `diffusion` objective of the `diffusion` section by default); `kwargs` are the fields
    of that method's options dataclass, checked when the method is built."""

    name: str = "diffusion"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)


def _structured_error(err: OmegaConfBaseException, source: str) -> ValueError:
    key = getattr(err, "full_key", None) or "?"
    msg = str(err).splitlines()[0]
    return ValueError(f"config key {key!r} ({source}): {msg}")


def _apply_override(merged, item: str):
    """Merge one `key=value` override. A whole keyword dict (`method.kwargs`, `model.kwargs`,
    `data.kwargs`, `diffusion.schedule_kwargs`, `diffusion.weighting_kwargs`) given as
    `key={...}` replaces the recipe's dict, so `diffusion.weighting_kwargs={}` clears it;
    `key.name=value` merges."""
    key = item.split("=", 1)[0].strip()
    patch = OmegaConf.from_dotlist([item])
    value = OmegaConf.select(patch, key)
    if key.endswith("kwargs") and OmegaConf.is_dict(value):
        *parents, last = key.split(".")
        data = node = OmegaConf.to_container(merged)
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            node[last] = OmegaConf.to_container(value)  # the schema's kwargs default to {}
            return OmegaConf.merge(OmegaConf.structured(TrainConfig), data)
    return OmegaConf.merge(merged, patch)


def config_from_dict(data: Mapping[str, Any] | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Merge a nested dict and dotlist overrides into `TrainConfig`, then validate it."""
    schema = OmegaConf.structured(TrainConfig)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(dict(data or {})))
    except OmegaConfBaseException as err:
        raise _structured_error(err, "config file") from None
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must have the form key=value")
        try:
            merged = _apply_override(merged, item)
        except OmegaConfBaseException as err:
            raise _structured_error(err, f"override {item!r}") from None
        except Exception as err:  # YAML syntax errors from the value part
            raise ValueError(f"override {item!r} could not be parsed: {err}") from None
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _structured_error(err, "config") from None
    validate_config(cfg)
    return cfg


def load_config(
    path: str | Path, overrides: Sequence[str] = (), *, stored: bool = False
) -> TrainConfig:
    """Load a YAML recipe with `key=value` overrides (OmegaConf dotlist syntax); `stored`: the
    file is a run's own record of its config (`config_from_stored`), not a recipe."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping at the top level")
    return (config_from_stored if stored else config_from_dict)(data or {}, overrides)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_to_json(cfg: TrainConfig) -> str:
    return json.dumps(config_to_dict(cfg), sort_keys=True)


def config_from_json(text: str) -> TrainConfig:
    return config_from_stored(json.loads(text))


STORED_DEFAULTS = {("optim", "ema_warmup"): False}
"""Keys a config stored by an older difflab may lack -> the value it was trained with (the
EMA warm-up became the default in issue 15; runs stored before it averaged without)."""


def config_from_stored(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    """`config_from_dict` for a config read back from a run, checkpoint or model file: a key it
    lacks (`STORED_DEFAULTS`) keeps the behaviour of the run that wrote it, not today's default,
    so an old run resumes and averages exactly as it began."""
    data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for (section, key), value in STORED_DEFAULTS.items():
        data.setdefault(section, {}).setdefault(key, value)
    return config_from_dict(data, overrides)


def config_to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# --------------------------------------------------------------------------- validation


def _accepted_names(target: Callable[..., Any]) -> tuple[set[str], bool]:
    """Keyword names `target` accepts (a function or a dataclass), and whether it takes **kw."""
    if dataclasses.is_dataclass(target):
        return {f.name for f in dataclasses.fields(target) if f.init}, False
    params = inspect.signature(target).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def check_kwargs(
    target: Callable[..., Any],
    kwargs: Mapping[str, Any],
    key: str,
    skip: Sequence[str] = (),
    what: str | None = None,
) -> None:
    """Reject keys of `kwargs` that `target` (described as `what`) does not accept, naming
    `key.<name>`."""
    names, var_kw = _accepted_names(target)
    if var_kw:
        return
    unknown = sorted(set(kwargs) - names - set(skip))
    if unknown:
        hint = f". Keys a recipe set for another choice are cleared by {key}={{}}" if what else ""
        raise ValueError(
            f"unknown config key {key}.{unknown[0]!s} (not accepted by "
            f"{what or getattr(target, '__name__', target)}); known: {sorted(names)}{hint}"
        )


def _positive(value: float, key: str, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"config key {key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate_config(cfg: TrainConfig) -> None:
    """Range checks and registry-name/keyword checks; raises `ValueError` naming the key."""
    from .diffusion.losses import WEIGHTINGS
    from .diffusion.schedules import SCHEDULES

    d = cfg.diffusion
    if d.schedule not in SCHEDULES:
        raise ValueError(
            f"config key diffusion.schedule: unknown {d.schedule!r}; known: {sorted(SCHEDULES)}"
        )
    check_kwargs(
        SCHEDULES[d.schedule],
        d.schedule_kwargs,
        "diffusion.schedule_kwargs",
        what=f"schedule {d.schedule!r}",
    )
    if d.weighting not in WEIGHTINGS:
        raise ValueError(
            f"config key diffusion.weighting: unknown {d.weighting!r}; known: {sorted(WEIGHTINGS)}"
        )
    check_kwargs(
        WEIGHTINGS[d.weighting],
        d.weighting_kwargs,
        "diffusion.weighting_kwargs",
        what=f"weighting {d.weighting!r}",
    )
    if d.multiscale_min_resolution is not None:
        _positive(d.multiscale_min_resolution, "diffusion.multiscale_min_resolution")

    o = cfg.optim
    _positive(o.lr, "optim.lr")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ValueError(f"config key optim.betas must be two numbers in [0, 1), got {o.betas}")
    _positive(o.weight_decay, "optim.weight_decay", allow_zero=True)
    _positive(o.warmup_steps, "optim.warmup_steps", allow_zero=True)
    if o.decay not in LR_DECAYS:
        raise ValueError(f"config key optim.decay: unknown {o.decay!r}; known: {list(LR_DECAYS)}")
    if o.decay_steps is not None:
        _positive(o.decay_steps, "optim.decay_steps")
        if o.decay_steps <= o.warmup_steps:
            raise ValueError(
                f"config key optim.decay_steps ({o.decay_steps}) must exceed optim.warmup_steps "
                f"({o.warmup_steps}): the decay starts after the warmup"
            )
    _positive(o.min_lr, "optim.min_lr", allow_zero=True)
    if o.min_lr > o.lr:
        raise ValueError(f"config key optim.min_lr ({o.min_lr}) must not exceed optim.lr ({o.lr})")
    if o.grad_clip is not None:
        _positive(o.grad_clip, "optim.grad_clip")
    for decay in o.ema_decays:
        if not 0 < decay < 1:
            raise ValueError(
                f"config key optim.ema_decays: each decay must lie in (0, 1), got {decay}"
            )

    t = cfg.train
    _positive(t.steps, "train.steps")
    for key in ("log_every", "sample_every", "ckpt_every", "sample_steps"):
        _positive(getattr(t, key), f"train.{key}", allow_zero=True)
    _positive(t.keep_last, "train.keep_last")
    _positive(t.max_nan_steps, "train.max_nan_steps")
    _positive(t.max_minutes, "train.max_minutes", allow_zero=True)
    if isinstance(t.compile, str) and t.compile != "auto":
        raise ValueError(
            f"config key train.compile must be true, false or 'auto', got {t.compile!r}"
        )

    _positive(cfg.data.batch_size, "data.batch_size")
    _positive(cfg.data.num_workers, "data.num_workers", allow_zero=True)
    validate_data_config(cfg.data)
    validate_model_config(cfg.model)


def validate_model_config(model: ModelConfig) -> None:
    """Check `model.name` against the net registry and `model.kwargs` against (and by
    constructing) the net's config dataclass, so bad values are caught before training."""
    from .nets import NETS

    if model.name not in NETS:
        raise ValueError(
            f"config key model.name: unknown net {model.name!r}; known: {sorted(NETS)}"
        )
    config_class = NETS[model.name].config_class
    check_kwargs(config_class, model.kwargs, "model.kwargs")
    try:
        config_class(**model.kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config key model.kwargs: {err}") from None


def validate_data_config(data: DataConfig) -> None:
    from .data import DATASETS

    if data.name not in DATASETS:
        raise ValueError(
            f"config key data.name: unknown dataset {data.name!r}; known: {sorted(DATASETS)}"
        )
    check_kwargs(DATASETS[data.name], data.kwargs, "data.kwargs", skip=("split",))
