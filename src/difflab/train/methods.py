"""What `difflab train` trains: training methods by name (`TrainConfig.method`).

A method turns a config, its built net and its dataset into the pieces the `Trainer` runs:

    build(cfg, net, dataset) -> MethodParts(loss_fn, extra_modules, sample_fn)

`loss_fn(models, batch, generator) -> [B]` is the per-example loss (`models["net"]` is the net
being trained, EMA'd, checkpointed and exported; the extra modules follow it), `sample_fn(net,
noise, labels) -> images` draws the PNG grids during training (None: the method draws none).
The plain Gaussian objective of the config's `diffusion` section is registered here as
`diffusion`, the default; each paper-level method in `difflab.methods` registers its own when
that package is imported (the `difflab` command does so before training).

`cfg.method.kwargs` are the fields of the method's options dataclass (`config_class`): unknown
keys and bad values are errors naming `method.kwargs.<key>` (`method_options`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..allocator import apply_malloc_fix
from ..config import TrainConfig, check_kwargs
from .checkpoint import find_resume_checkpoint, read_weights
from .distributed import SEED_INIT, derive_seed, init_distributed, shutdown_distributed
from .trainer import LossFn, Trainer, diffusion_loss_fn, finished

SampleFn = Callable[[nn.Module, Tensor, Tensor | None], Tensor]


@dataclass
class MethodParts:
    """What a training method hands the `Trainer` besides the net and the data."""

    loss_fn: LossFn
    extra_modules: dict[str, nn.Module] = field(default_factory=dict)
    sample_fn: SampleFn | None = None


Build = Callable[[TrainConfig, nn.Module, Any], MethodParts]


@dataclass(frozen=True)
class TrainingMethod:
    name: str
    build: Build
    config_class: type | None = None


TRAINING_METHODS: dict[str, TrainingMethod] = {}


def register_training_method(name: str, build: Build, config_class: type | None = None) -> None:
    """Register `build` as the training method `name` (`method.name` in a config);
    `config_class` (a dataclass) types its `method.kwargs`. Registering a name twice with
    another builder is an error (two modules claiming one method)."""
    if config_class is not None and not dataclasses.is_dataclass(config_class):
        raise TypeError(f"config_class of training method {name!r} must be a dataclass")
    old = TRAINING_METHODS.get(name)
    if old is not None and old.build is not build:
        raise ValueError(f"training method {name!r} is already registered by {old.build}")
    TRAINING_METHODS[name] = TrainingMethod(name, build, config_class)


def training_method(name: str) -> TrainingMethod:
    if name not in TRAINING_METHODS:
        raise ValueError(
            f"config key method.name: unknown training method {name!r}; known: "
            f"{sorted(TRAINING_METHODS)} (the paper-level methods register when difflab.methods is "
            "imported: `difflab train`, or `torchrun ... -m difflab.cli train` under DDP)"
        )
    return TRAINING_METHODS[name]


def method_options(cfg: TrainConfig) -> Any:
    """The options dataclass of `cfg.method` built from `method.kwargs` (None for a method
    without options, which then must have empty kwargs); errors name the key."""
    method = training_method(cfg.method.name)
    kwargs: Mapping[str, Any] = cfg.method.kwargs
    if method.config_class is None:
        if kwargs:
            raise ValueError(
                f"config key method.kwargs: training method {method.name!r} takes no options, "
                f"got {sorted(kwargs)}"
            )
        return None
    check_kwargs(method.config_class, kwargs, "method.kwargs", what=f"method {method.name!r}")
    try:
        return method.config_class(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config key method.kwargs: {err}") from None


def build_method(cfg: TrainConfig, net: nn.Module, dataset: Any) -> MethodParts:
    """`cfg.method`'s parts for `net` and `dataset` (options checked first)."""
    method_options(cfg)
    parts = training_method(cfg.method.name).build(cfg, net, dataset)
    if not isinstance(parts, MethodParts):
        raise TypeError(f"training method {cfg.method.name!r} must return MethodParts")
    return parts


def _diffusion(cfg: TrainConfig, net: nn.Module, dataset: Any) -> MethodParts:
    """The Gaussian objective of `cfg.diffusion`; the trainer's DDIM grids."""
    return MethodParts(diffusion_loss_fn(cfg.diffusion))


register_training_method("diffusion", _diffusion)


def load_initial_weights(net: nn.Module, cfg: TrainConfig) -> None:
    """Fine-tuning (`train.init_from`): copy the first EMA (else the raw weights) of that model
    into `net`; its model config must equal `cfg.model`."""
    tensors, source_cfg, _ = read_weights(cfg.train.init_from, ema=True)
    if source_cfg.model != cfg.model:
        raise ValueError(
            f"train.init_from {cfg.train.init_from!r} holds model {source_cfg.model}, "
            f"not this config's {cfg.model}"
        )
    net.load_state_dict(tensors, strict=True)


def run_training(cfg: TrainConfig, resume: bool = False) -> Path:
    """`difflab train`: build the net, dataset and method of `cfg`, train, return the run
    directory. Works unchanged under `torchrun --nproc_per_node N` (DDP, gloo on CPU / NCCL on
    CUDA)."""
    from ..data import make_dataset
    from ..nets import build_net

    training_method(cfg.method.name)  # an unknown method fails before any work
    method_options(cfg)
    apply_malloc_fix()
    info = init_distributed()
    done = False
    try:
        checkpoint = find_resume_checkpoint(cfg.train.out_dir) if resume else None
        if resume and finished(checkpoint, cfg, announce=info.is_main):
            done = True
            return Path(cfg.train.out_dir)  # before building the data set: nothing to do
        torch.manual_seed(derive_seed(cfg.train.seed, SEED_INIT))  # same init on every rank
        net = build_net(cfg.model.name, **cfg.model.kwargs)
        if cfg.train.init_from and checkpoint is None:
            load_initial_weights(net, cfg)
        dataset = make_dataset(cfg.data.name, cfg.data.split, **cfg.data.kwargs)
        parts = build_method(cfg, net, dataset)
        trainer = Trainer(
            cfg,
            net,
            dataset,
            loss_fn=parts.loss_fn,
            extra_modules=parts.extra_modules,
            sample_fn=parts.sample_fn,
            dist_info=info,
        )
        run_dir = trainer.fit(resume, checkpoint)
        done = True
        return run_dir
    finally:
        shutdown_distributed(wait_for_all=done)
