"""Checkpoints as safetensors + JSON, written atomically; loading and exporting trained models.

A run directory holds `checkpoints/step_XXXXXXX/` folders and a `checkpoints/latest` pointer:

    config.json             the TrainConfig (diffusers-style: weights + JSON config)
    model.safetensors       the trained network
    ema_<decay>.safetensors one per EMA decay
    optimizer.safetensors   optimizer tensors (Adam moments, step counts)
    rng.safetensors         torch RNG states per rank (uint8 tensors)
    extra_<name>.safetensors trainable extra modules of a method (if any)
    state.json              step, data position, NaN counters, python/numpy RNG states,
                            optimizer hyper-parameters, and a manifest (bytes + sha256 per file)

A folder is filled under a temporary name, every file fsync'ed, then renamed into place
(`os.replace`), so a crash leaves either the whole checkpoint or none; the `latest` pointer is
replaced the same way. Nothing is ever unpickled. An exported model is one small safetensors
file with the EMA weights and the config JSON in its metadata (`export_model`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import safetensors.torch
from safetensors import safe_open
from torch import Tensor, nn

from ..config import TrainConfig, config_from_dict, config_to_dict

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
CONFIG_METADATA_KEY = "difflab_config"
FORMAT = "difflab-checkpoint-1"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated or corrupt; the message names the file."""


# --------------------------------------------------------------------------- atomic writes


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a synced temporary file and `os.replace`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_synced(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _tensors(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # clone: safetensors refuses tensors that share storage (tied weights, views)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def safetensors_bytes(tensors: Mapping[str, Tensor], metadata: dict[str, str] | None = None):
    return safetensors.torch.save(_tensors(tensors), metadata=metadata)


# --------------------------------------------------------------------------- optimizer state


def optimizer_to_tensors(optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (`state.<param>.<key>`) and a JSON part."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- saving


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary folders are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Delete half-written checkpoint folders left by a crash."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    files: Mapping[str, Mapping[str, Tensor]],
    state: Mapping[str, Any],
    config: TrainConfig,
    keep_last: int = 3,
) -> Path:
    """Write `files` (name -> tensors, saved as `<name>.safetensors`), `config.json` and
    `state.json` (with a manifest) atomically to `run_dir/checkpoints/step_XXXXXXX`, point
    `latest` at it and delete all but the newest `keep_last` checkpoints."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    manifest = {}
    blobs = {
        f"{name}.safetensors": safetensors_bytes(t, {"format": FORMAT}) for name, t in files.items()
    }
    blobs[CONFIG_FILE] = json.dumps(config_to_dict(config), indent=2, sort_keys=True).encode()
    for name, data in blobs.items():
        _write_synced(tmp / name, data)
        manifest[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    full_state = {"format": FORMAT, "step": step, **state, "manifest": manifest}
    _write_synced(tmp / STATE_FILE, json.dumps(full_state, indent=1, sort_keys=True).encode())
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step (e.g. after a fallback): swap the old one out
        old = root / f".tmp-old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)
    _fsync_dir(root)
    write_atomic(root / LATEST, (final.name + "\n").encode())
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- loading


@dataclass
class Checkpoint:
    """A checkpoint folder; every file is checked against the manifest when it is read."""

    path: Path

    @cached_property
    def state(self) -> dict[str, Any]:
        file = self.path / STATE_FILE
        if not file.is_file():
            raise CheckpointError(f"checkpoint {self.path} has no {STATE_FILE} (not a checkpoint)")
        try:
            state = json.loads(file.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"checkpoint file {file} is corrupt: {err}") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint file {file} is not a {FORMAT} state file")
        return state

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def _bytes(self, name: str) -> bytes:
        file = self.path / name
        entry = self.state["manifest"].get(name)
        if entry is None:
            raise CheckpointError(f"checkpoint {self.path} has no file {name}")
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing")
        data = file.read_bytes()
        if len(data) != entry["bytes"]:
            raise CheckpointError(
                f"checkpoint file {file} is truncated or corrupt: {len(data)} bytes, "
                f"expected {entry['bytes']}"
            )
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CheckpointError(f"checkpoint file {file} is corrupt: sha256 mismatch")
        return data

    def has(self, name: str) -> bool:
        return f"{name}.safetensors" in self.state["manifest"]

    def tensors(self, name: str) -> dict[str, Tensor]:
        """The tensors of `<name>.safetensors` (e.g. `model`, `ema_0.999`, `optimizer`)."""
        data = self._bytes(f"{name}.safetensors")
        try:
            return safetensors.torch.load(data)
        except Exception as err:  # SafetensorError does not subclass a public exception
            raise CheckpointError(
                f"checkpoint file {self.path / name}.safetensors: {err}"
            ) from None

    @cached_property
    def config(self) -> TrainConfig:
        return config_from_dict(json.loads(self._bytes(CONFIG_FILE)))

    def verify(self) -> Checkpoint:
        """Check every file against the manifest; raises `CheckpointError` naming the file."""
        for name in self.state["manifest"]:
            self._bytes(name)
        return self


def newest_valid_checkpoint(run_dir: str | Path, *, warn: bool = True) -> Checkpoint | None:
    """The newest checkpoint of a run that passes `verify`; unusable newer ones are reported
    with a warning and skipped (the previous checkpoint stays loadable)."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return Checkpoint(path).verify()
        except CheckpointError as err:
            if warn:
                warnings.warn(f"skipping unusable checkpoint: {err}", stacklevel=2)
    return None


def resolve_checkpoint(path: str | Path) -> Checkpoint:
    """A run directory (its newest valid checkpoint) or a checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if (path / STATE_FILE).is_file():
        return Checkpoint(path)
    if (path / CHECKPOINTS).is_dir():
        found = newest_valid_checkpoint(path)
        if found is None:
            raise CheckpointError(f"run directory {path} has no usable checkpoint")
        return found
    raise CheckpointError(
        f"{path} is neither a run directory (with {CHECKPOINTS}/), a checkpoint folder "
        f"(with {STATE_FILE}) nor an exported .safetensors model"
    )


def _weights_name(ckpt: Checkpoint, ema: float | bool) -> str:
    decays = [float(d) for d in ckpt.state.get("ema_decays", [])]
    if ema is False or (ema is True and not decays):
        return "model"
    from .ema import EMA

    decay = decays[0] if ema is True else float(ema)
    if not any(abs(decay - d) < 1e-12 for d in decays):
        raise CheckpointError(
            f"checkpoint {ckpt.path} has no EMA with decay {decay}; stored: {decays}"
        )
    return EMA.key(decay)


def build_net_from_config(cfg: TrainConfig) -> nn.Module:
    from ..nets import build_net

    return build_net(cfg.model.name, **cfg.model.kwargs)


def _read_exported(file: Path) -> tuple[dict[str, Tensor], TrainConfig]:
    try:
        with safe_open(str(file), "pt") as f:
            meta = f.metadata() or {}
        tensors = safetensors.torch.load_file(str(file))
    except Exception as err:
        raise CheckpointError(
            f"model file {file} is not a readable safetensors file: {err}"
        ) from None
    if CONFIG_METADATA_KEY not in meta:
        raise CheckpointError(f"model file {file} has no {CONFIG_METADATA_KEY!r} metadata")
    return tensors, config_from_dict(json.loads(meta[CONFIG_METADATA_KEY]))


def load_model(
    path: str | Path, ema: float | bool = True, device: str = "cpu"
) -> tuple[nn.Module, TrainConfig]:
    """Build the network and load trained weights, in eval mode.

    `path`: an exported `.safetensors` model, a checkpoint folder, or a run directory (its newest
    valid checkpoint). `ema`: True for the first EMA decay (raw weights if none was kept), a
    float for that decay, False for the raw trained weights."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        tensors, cfg = _read_exported(path)
    else:
        ckpt = resolve_checkpoint(path)
        cfg = ckpt.config
        tensors = ckpt.tensors(_weights_name(ckpt, ema))
    net = build_net_from_config(cfg)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights in {path} do not match model {cfg.model}: {err}") from None
    return net.to(device).eval().requires_grad_(False), cfg


def load_denoiser(
    path: str | Path, ema: float | bool = True, device: str = "cpu", clip_x: float | None = 1.0
) -> tuple[Callable[..., Callable[[Tensor, Tensor], Tensor]], TrainConfig]:
    """`(make_denoise, cfg)`: `make_denoise(labels=None)` returns the `Denoise` of the loaded
    network (`as_denoiser` with the trained parameterization; `x_hat` clipped to the data
    range `[-1, 1]` by default). The network itself is `make_denoise.net`."""
    from ..diffusion.parameterization import as_denoiser

    net, cfg = load_model(path, ema=ema, device=device)
    make = partial(as_denoiser, net, cfg.diffusion.prediction, clip_x)
    make.net = net  # type: ignore[attr-defined]
    return make, cfg


def export_model(path: str | Path, out_file: str | Path, ema: float | bool = True) -> Path:
    """Write the (EMA) weights of a checkpoint or run into one safetensors file whose metadata
    holds the config JSON: what ships with the package and what `load_model` reads back."""
    ckpt = resolve_checkpoint(path)
    tensors = ckpt.tensors(_weights_name(ckpt, ema))
    meta = {
        CONFIG_METADATA_KEY: json.dumps(config_to_dict(ckpt.config), sort_keys=True),
        "format": "difflab-model-1",
        "step": str(ckpt.step),
        "weights": _weights_name(ckpt, ema),
    }
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, safetensors_bytes(tensors, meta))
    return out
