"""Discrete diffusion (masked and uniform) and its autoregressive baseline, trained by `difflab
train`.

Three training methods (`method.name` in a config):

- `masked_diffusion`: the continuous-time NELBO of masked (absorbing) diffusion, MD4 / MDLM in
  logsnr form (`difflab.discrete.masked_nelbo`), on a `token_transformer`;
- `uniform_diffusion`: the continuous-time NELBO of uniform diffusion
  (`difflab.discrete.uniform_nelbo`), on a `token_transformer` without a mask token;
- `autoregressive`: next-token cross-entropy of a same-size `causal_transformer`.

Every loss is reported in nats per token (the per-example bound divided by the number of tokens),
so `loss / ln 2` is bits per character on text. Options (`method.kwargs`,
`DiscreteDiffusionOptions`): `eps` clips the linear masking schedule (`alpha` in
`[eps, 1 - eps]`; 0 = the whole line, the default) and `sample_steps` is the number of ancestral
steps of the PNG grids drawn during training (token images only).

`difflab sample` on such a model (`sample_to_folder`, registered in `api.METHOD_SAMPLERS`) prints
and writes text for `shakespeare_char`, PNGs and a grid for `discrete_mnist`, token ids otherwise.
Derivations: docs/methods/discrete.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import TrainConfig
from ..data.discrete_images import tokens_to_images
from ..data.registry import DATASETS
from ..data.text import decode as decode_text
from ..diffusion.schedules import Schedule
from ..discrete import (
    DiscreteOracle,
    denoiser_from_logits,
    discrete_grid,
    nelbo,
    prior_sample,
    sample_masked,
    sample_uniform,
)
from ..discrete.schedules import LinearMaskingSchedule
from ..fileio import write_json_atomic
from ..train.methods import MethodParts, method_options, register_training_method

DIFFUSION_METHODS = {"masked_diffusion": "masked", "uniform_diffusion": "uniform"}
AUTOREGRESSIVE = "autoregressive"
DISCRETE_METHODS = (*DIFFUSION_METHODS, AUTOREGRESSIVE)
TEXT_FILE = "samples.txt"
RECORD_FILE = "samples.json"


@dataclass(frozen=True)
class DiscreteDiffusionOptions:
    """`method.kwargs` of the discrete methods (module docstring)."""

    eps: float = 0.0
    sample_steps: int = 64

    def __post_init__(self) -> None:
        if not (isinstance(self.eps, (int, float)) and 0.0 <= self.eps < 0.5):
            raise ValueError(f"eps must be in [0, 0.5), got {self.eps!r}")
        if isinstance(self.sample_steps, bool) or not (
            isinstance(self.sample_steps, int) and self.sample_steps >= 1
        ):
            raise ValueError(f"sample_steps must be an int >= 1, got {self.sample_steps!r}")


class DiscreteParts(NamedTuple):
    """What a discrete diffusion model's config says: `process` ("masked", "uniform" or None
    for the autoregressive baseline), `vocab_size` (without the mask) and the training
    `schedule`."""

    process: str | None
    vocab_size: int
    schedule: Schedule


def discrete_parts(cfg: TrainConfig) -> DiscreteParts:
    """The `DiscreteParts` of a config trained with one of this module's methods."""
    name = cfg.method.name
    if name not in DIFFUSION_METHODS and name != AUTOREGRESSIVE:
        raise ValueError(
            f"config key method.name: {name!r} is not a discrete method "
            f"({sorted([*DIFFUSION_METHODS, AUTOREGRESSIVE])})"
        )
    options = method_options(cfg)
    from ..nets import NETS

    net_config = NETS[cfg.model.name].config_class(**cfg.model.kwargs)
    vocab = getattr(net_config, "vocab_size", None)
    if vocab is None:
        raise ValueError(f"config key model.name: {cfg.model.name!r} is not a token net")
    return DiscreteParts(DIFFUSION_METHODS.get(name), vocab, LinearMaskingSchedule(options.eps))


def _check_net(cfg: TrainConfig, net: nn.Module, dataset: Any, process: str | None) -> int:
    want = "causal_transformer" if process is None else "token_transformer"
    if getattr(net, "arch", None) != want:
        raise ValueError(f"config key model.name: method {cfg.method.name!r} needs a {want!r}")
    vocab = net.config.vocab_size
    data_vocab = getattr(dataset, "vocab_size", None)
    if data_vocab is not None and data_vocab != vocab:
        raise ValueError(
            f"config key model.kwargs.vocab_size: {vocab}, but dataset {cfg.data.name!r} has "
            f"{data_vocab} symbols"
        )
    if process == "masked" and not net.config.mask_token:
        raise ValueError("config key model.kwargs.mask_token: masked diffusion needs true")
    return vocab


def tokens_of(batch) -> Tensor:
    """The tokens of a batch `(tokens, labels)` (or a bare tensor)."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _build_diffusion(cfg: TrainConfig, net: nn.Module, dataset: Any) -> MethodParts:
    process = DIFFUSION_METHODS[cfg.method.name]
    options: DiscreteDiffusionOptions = method_options(cfg)
    vocab = _check_net(cfg, net, dataset, process)
    schedule = LinearMaskingSchedule(options.eps)

    def loss_fn(models, batch, generator: torch.Generator) -> Tensor:
        x = tokens_of(batch)
        model = models["net"]
        bound = nelbo(process, model, x, vocab, schedule=schedule, generator=generator)
        return bound / x[0].numel()

    sample_fn = None
    levels = getattr(dataset, "levels", None)
    if getattr(dataset, "image_shape", None) is not None and levels is not None:
        seed = cfg.train.seed

        def sample_fn(model: nn.Module, noise: Tensor, labels: Tensor | None) -> Tensor:
            gen = torch.Generator(noise.device).manual_seed(seed)
            tokens = draw(model, process, vocab, noise.shape, options.sample_steps, generator=gen)
            return tokens_to_images(tokens, levels)

    return MethodParts(loss_fn, sample_fn=sample_fn)


def _build_autoregressive(cfg: TrainConfig, net: nn.Module, dataset: Any) -> MethodParts:
    _check_net(cfg, net, dataset, None)

    def loss_fn(models, batch, generator: torch.Generator) -> Tensor:
        x = tokens_of(batch)
        logp = torch.log_softmax(models["net"](x).float(), dim=-1)  # through the DDP wrapper
        nll = -logp.gather(-1, x.long()[..., None]).squeeze(-1).flatten(1).sum(1)
        return nll / x[0].numel()

    return MethodParts(loss_fn)


def _unwrap(module: nn.Module) -> Any:
    """The net inside a DDP / compiled wrapper."""
    inner = getattr(module, "_orig_mod", module)
    return getattr(inner, "module", inner)


register_training_method("masked_diffusion", _build_diffusion, DiscreteDiffusionOptions)
register_training_method("uniform_diffusion", _build_diffusion, DiscreteDiffusionOptions)
register_training_method("autoregressive", _build_autoregressive, DiscreteDiffusionOptions)


# ----------------------------------------------------------------------------- sampling


@torch.no_grad()
def draw(
    net: nn.Module,
    process: str | None,
    vocab_size: int,
    shape: tuple[int, ...],
    steps: int,
    *,
    generator: torch.Generator | None = None,
    grid: Tensor | None = None,
    temperature: float = 1.0,
    top_p: float | None = None,
) -> Tensor:
    """Tokens of `shape` from a token net: ancestral masked / uniform sampling on `grid`
    (default `discrete_grid(steps)`), or token by token for the autoregressive baseline."""
    device = next(net.parameters()).device
    if process is None:
        out = _unwrap(net).sample(shape[0], generator=generator, temperature=temperature)
        return out.reshape(shape)
    grid = discrete_grid(steps) if grid is None else grid
    denoise = denoiser_from_logits(net, vocab_size, process)
    z = prior_sample(process, tuple(shape), vocab_size, generator=generator, device=device)
    sampler = sample_masked if process == "masked" else sample_uniform
    return sampler(denoise, z, grid, generator=generator, temperature=temperature, top_p=top_p)


def token_shape(net: nn.Module, data_name: str) -> tuple[int, ...]:
    """The shape of one sample: `(1, 28, 28)` for discrete MNIST, else `(seq_len,)`."""
    if data_name == "discrete_mnist":
        return (1, 28, 28)
    return (net.config.seq_len,)


def sample_to_folder(
    model, folder: Path, *, num: int, seed: int = 0, overwrite: bool = False,
    sampler: str | None = None, steps: int | None = None, grid=None, options=None,
    guidance: float = 0.0, interval=None, batch_size: int = 256,
) -> dict[str, Any]:  # fmt: skip
    """`difflab sample` on a discrete model (`api.METHOD_SAMPLERS`; `model` an
    `api.LoadedModel`): text in `samples.txt` (shakespeare_char), PNGs and `grid.png`
    (discrete_mnist) or token ids, plus `samples.json`. `--opt temperature=T`, `--opt top_p=P`;
    `--steps` (default: a distilled student's own, else 128)."""
    from ..images import save_image_grid, save_images

    cfg = model.config
    parts = discrete_parts(cfg)
    if guidance != 0 or interval is not None:
        raise ValueError("--guidance: discrete models are unconditional")
    if sampler is not None:
        raise ValueError("--sampler: discrete models use their own ancestral sampler")
    options = dict(options or {})
    unknown = sorted(set(options) - {"temperature", "top_p"})
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; discrete options: temperature, top_p")
    if grid not in (None, "default"):
        raise ValueError("--grid: discrete models sample uniform-t levels of their schedule")
    student = getattr(model, "student", None)
    levels = None
    if student is not None and steps is None:
        steps, levels = int(model.steps), model.grid if isinstance(model.grid, Tensor) else None
    steps = steps or 128
    folder = Path(folder)
    earlier = [folder / n for n in (TEXT_FILE, RECORD_FILE, "grid.png") if (folder / n).exists()]
    if earlier and not overwrite:
        raise ValueError(f"output folder {folder} holds earlier samples; pass --overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    net = model.net
    shape = token_shape(net, cfg.data.name)
    device = next(net.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    start = time.perf_counter()
    chunks = []
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(seed)  # an extra noise input drawn inside the net
        for first in range(0, num, batch_size):
            n = min(batch_size, num - first)
            chunks.append(
                draw(
                    net,
                    parts.process,
                    parts.vocab_size,
                    (n, *shape),
                    steps,
                    generator=gen,
                    grid=levels,
                    **options,
                ).cpu()  # fmt: skip
            )
    tokens = torch.cat(chunks)
    seconds = time.perf_counter() - start
    record: dict[str, Any] = {
        "checkpoint": str(model.path),
        "method": cfg.method.name,
        "steps": None if parts.process is None else steps,
        "nfe": shape[-1] if parts.process is None else steps,
        "options": options,
        "seed": seed,
        "num": num,
        "student": student is not None,
        "seconds": round(seconds, 3),
    }
    if cfg.data.name == "discrete_mnist":
        images = tokens_to_images(tokens, parts.vocab_size)
        for old in folder.glob("[0-9][0-9][0-9][0-9][0-9].png"):
            old.unlink()
        save_images(images, folder, "{:05d}.png")
        save_image_grid(images[:256], folder / "grid.png", scale=2)
        shown = f"images: {folder}/  grid: {folder / 'grid.png'}"
    else:
        if cfg.data.name == "shakespeare_char":
            texts = [decode_text(t) for t in tokens]
        else:
            texts = [" ".join(str(int(v)) for v in t.flatten()) for t in tokens]
        (folder / TEXT_FILE).write_text("".join(f"--- sample {i}\n{t}\n" for i, t in
                                                enumerate(texts)))  # fmt: skip
        record["samples"] = texts
        shown = "\n".join(f"--- sample {i}\n{t}" for i, t in enumerate(texts[:4]))
        shown += f"\ntext: {folder / TEXT_FILE}"
    write_json_atomic(folder / RECORD_FILE, record)
    how = "autoregressive" if parts.process is None else f"{parts.process} x{steps} steps"
    record["summary"] = f"{num} samples ({how}) in {seconds:.1f} s\n{shown}"
    return record


# ----------------------------------------------------------------------------- likelihoods


@torch.no_grad()
def bits_per_token(
    net: nn.Module,
    process: str | None,
    tokens: Tensor,
    *,
    schedule: Schedule | None = None,
    repeats: int = 1,
    strata: int | None = None,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """`(mean, standard error over rows)` of the NELBO (exact NLL for the autoregressive net) of
    the rows of `tokens` in bits per token.

    Each row's bound is averaged over `repeats` one-sample estimates (one `t`, one `z_t`), or,
    with `strata = K`, over one stratified pass: `t = u^2 (3 - 2u)` with `u` drawn once in each of
    `K` equal strata of `[0, 1]`, each value weighted by `dt/du = 6u(1 - u)`. Both are unbiased;
    the stratified one avoids the heavy tail of the uniform-diffusion estimator near `t = 0` (a
    token corrupted at small `t` contributes `O(1/t)` with probability `O(t)`), which the
    `dt/du -> 0` weight removes."""
    device = next(net.parameters()).device
    per_row = []
    for first in range(0, len(tokens), batch_size):
        x = tokens[first : first + batch_size].to(device)
        if process is None:
            per_row.append(-net.log_prob(x).double().cpu())
            continue
        vocab = net.config.vocab_size
        draws = []
        if strata is None:
            for _ in range(repeats):
                bound = nelbo(process, net, x, vocab, schedule=schedule, generator=generator)
                draws.append(bound.double().cpu())
        else:
            for k in range(strata):
                jitter = torch.rand(len(x), generator=generator, dtype=torch.float64)
                u = ((k + jitter) / strata).to(device)
                t = u * u * (3.0 - 2.0 * u)
                bound = nelbo(process, net, x, vocab, schedule=schedule, t=t, generator=generator)
                draws.append((bound.double() * 6.0 * u * (1.0 - u)).cpu())
        per_row.append(torch.stack(draws).mean(0))
    v = torch.cat(per_row) / tokens[0].numel() / math.log(2)
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0


# ----------------------------------------------------------------------------- oracle data


class OracleSequences(Dataset):
    """`num_samples` exact draws of `DiscreteOracle.random(length, vocab_size, seed=seed)`
    (a download-free token dataset for tests and oracle studies); items `(LongTensor [L], -1)`.
    Split "train" draws with `seed`, any other split with `seed + 1`."""

    num_classes = 0

    def __init__(
        self,
        split: str = "train",
        *,
        length: int = 6,
        vocab_size: int = 3,
        seed: int = 0,
        num_samples: int = 4096,
    ):
        self.oracle = DiscreteOracle.random(length, vocab_size, seed=seed)
        self.vocab_size = vocab_size
        gen = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
        self.tokens = self.oracle.sample(num_samples, generator=gen)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.tokens[index], -1


def discrete_oracle(
    split: str = "train",
    *,
    length: int = 6,
    vocab_size: int = 3,
    seed: int = 0,
    num_samples: int = 4096,
) -> OracleSequences:
    """Exact draws of a random `DiscreteOracle` (`OracleSequences`)."""
    return OracleSequences(
        split, length=length, vocab_size=vocab_size, seed=seed, num_samples=num_samples
    )


# `data` may not import `discrete` (siblings), so the oracle dataset registers from here; the
# `difflab` command imports `difflab.methods` before it reads a config.
DATASETS.setdefault("discrete_oracle", discrete_oracle)
