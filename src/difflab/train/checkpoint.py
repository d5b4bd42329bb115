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
replaced the same way. A failed write (full disk) removes its temporaries and names the last
good checkpoint; temporaries of crashed processes are removed when a run starts. `keep_last`
counts valid checkpoints only, so a corrupt one never pushes a good one out.
Nothing is ever unpickled. An exported model is one small safetensors
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
from functools import cached_property
from pathlib import Path
from typing import Any

import safetensors.torch
from safetensors import safe_open
from torch import Tensor, nn

from ..config import TrainConfig, config_from_stored, config_to_dict
from ..fileio import fsync_dir, remove_stale_temp_files, write_atomic, write_synced
from ..shipped import SHIPPED_MODELS, resolve_model_path

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
CONFIG_METADATA_KEY = "difflab_config"
FORMAT = "difflab-checkpoint-1"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated or corrupt; the message names the file."""


# --------------------------------------------------------------------------- tensors


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


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete what a crash or a failed write left: half-written checkpoint folders
    (`.tmp-step_XXXXXXX-<pid>`) and `.latest.tmp-<pid>` pointer files of processes that are
    gone, in `checkpoints/` and the run directory. Returns what was removed."""
    return [
        *remove_stale_temp_files(Path(run_dir) / CHECKPOINTS),
        *remove_stale_temp_files(run_dir),
    ]


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, read-only file system, ...); the message
    names the last good checkpoint. Nothing half-written is left behind."""


def _write_folder(root: Path, final: Path, blobs: Mapping[str, bytes], state: dict) -> None:
    """Fill a temporary folder with `blobs` + `state.json` (with the manifest), fsync it and
    rename it to `final`; on any failure remove the temporary and keep an old `final`."""
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    old = root / f".tmp-old-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        manifest = {}
        for name, data in blobs.items():
            write_synced(tmp / name, data)
            manifest[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        full_state = {**state, "manifest": manifest}
        write_synced(tmp / STATE_FILE, json.dumps(full_state, indent=1, sort_keys=True).encode())
        fsync_dir(tmp)
        if final.exists():  # re-saving a step (e.g. after a fallback): swap the old one out
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    fsync_dir(root)


_VERIFIED: dict[Path, tuple] = {}  # checkpoint folder -> file stats when it last verified


def _is_valid(path: Path) -> bool:
    """`Checkpoint(path).verify()` succeeds; a folder whose files are unchanged (size, mtime)
    since it last verified in this process is not hashed again."""
    try:
        stats = tuple(
            sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir())
        )
    except OSError:
        return False
    if _VERIFIED.get(path) == stats:
        return True
    try:
        Checkpoint(path).verify()
    except CheckpointError:
        _VERIFIED.pop(path, None)
        return False
    _VERIFIED[path] = stats
    return True


def prune_checkpoints(run_dir: str | Path, keep_last: int, keep: Path | None = None) -> list[Path]:
    """Delete checkpoints older than the newest `keep_last` *valid* ones (`keep` counts as
    valid: it was just written). Corrupt checkpoints never count, so they never cause a good
    one to be deleted. Returns the deleted folders."""
    deleted, valid = [], 0
    for path in reversed(list_checkpoints(run_dir)):
        if valid >= keep_last and path != keep:
            shutil.rmtree(path, ignore_errors=True)
            _VERIFIED.pop(path, None)
            deleted.append(path)
        elif path == keep or _is_valid(path):
            valid += 1
    return deleted


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
    `latest` at it and delete all but the newest `keep_last` valid checkpoints.

    A failed write (e.g. a full disk) removes its temporaries and raises `CheckpointWriteError`
    naming the last good checkpoint."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_dir_name(step)
    blobs = {
        f"{name}.safetensors": safetensors_bytes(t, {"format": FORMAT}) for name, t in files.items()
    }
    blobs[CONFIG_FILE] = json.dumps(config_to_dict(config), indent=2, sort_keys=True).encode()
    try:
        root.mkdir(parents=True, exist_ok=True)
        _write_folder(root, final, blobs, {"format": FORMAT, "step": step, **state})
        write_atomic(root / LATEST, (final.name + "\n").encode())
    except OSError as err:
        last = newest_valid_checkpoint(run_dir, warn=False)
        raise CheckpointWriteError(
            f"could not write checkpoint {final}: {err.strerror or err}; the last good "
            f"checkpoint is {last.path if last else 'none (no valid checkpoint was written)'}"
        ) from err
    prune_checkpoints(run_dir, keep_last, keep=final)
    return final


def find_resume_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The checkpoint a resumed run continues from: the newest valid one (unusable newer ones
    are skipped with a warning), or None when the run has no checkpoint at all.

    Raises `CheckpointError` naming every checkpoint and its defect when there are checkpoints
    but none is usable: starting from scratch would silently discard the run."""
    paths = list_checkpoints(run_dir)
    problems = []
    for path in reversed(paths):
        try:
            return Checkpoint(path).verify()
        except CheckpointError as err:
            problems.append(str(err))
            warnings.warn(f"skipping unusable checkpoint: {err}", stacklevel=2)
    if not paths:
        return None
    raise CheckpointError(
        f"cannot resume {run_dir}: none of its {len(paths)} checkpoints is usable "
        f"({'; '.join(problems)}). To start this run from scratch, delete "
        f"{Path(run_dir) / CHECKPOINTS} (or choose another train.out_dir) and train without "
        "--resume"
    )


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
        return config_from_stored(json.loads(self._bytes(CONFIG_FILE)))

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
        raise CheckpointError(
            f"checkpoint path {path} does not exist (nor is it the name of a shipped model: "
            f"{', '.join(SHIPPED_MODELS)})"
        )
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


def _read_exported(file: Path) -> tuple[dict[str, Tensor], TrainConfig, dict[str, Any]]:
    try:
        data = file.read_bytes()
        with safe_open(str(file), "pt") as f:
            meta = f.metadata() or {}
        tensors = safetensors.torch.load(data)
    except Exception as err:
        raise CheckpointError(
            f"model file {file} is not a readable safetensors file: {err}"
        ) from None
    if CONFIG_METADATA_KEY not in meta:
        raise CheckpointError(f"model file {file} has no {CONFIG_METADATA_KEY!r} metadata")
    source = {"path": str(file), "sha256": hashlib.sha256(data).hexdigest()}
    if "step" in meta:
        source["step"] = int(meta["step"])
    return tensors, config_from_stored(json.loads(meta[CONFIG_METADATA_KEY])), source


def read_weights(
    path: str | Path, ema: float | bool = True
) -> tuple[dict[str, Tensor], TrainConfig, dict[str, Any]]:
    """`(tensors, cfg, source)` of an exported `.safetensors` model, a checkpoint folder or a
    run directory (its newest valid checkpoint); `ema` as in `load_model`. `source` records
    where the weights came from: `{"path", "sha256"}` of an exported file (and its `step`), or
    `{"path", "step", "weights"}` of the checkpoint folder. A shipped model's name (`mnist_uvit`)
    stands for its file."""
    path = resolve_model_path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return _read_exported(path)
    ckpt = resolve_checkpoint(path)
    name = _weights_name(ckpt, ema)
    source = {"path": str(ckpt.path), "step": ckpt.step, "weights": name}
    return ckpt.tensors(name), ckpt.config, source


def net_from_weights(
    tensors: Mapping[str, Tensor], cfg: TrainConfig, device: str = "cpu", path: str | Path = ""
) -> nn.Module:
    """Build `cfg`'s network with `tensors` (strict), frozen in eval mode on `device`."""
    net = build_net_from_config(cfg)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights in {path} do not match model {cfg.model}: {err}") from None
    return net.to(device).eval().requires_grad_(False)


def load_model(
    path: str | Path, ema: float | bool = True, device: str = "cpu"
) -> tuple[nn.Module, TrainConfig]:
    """Build the network and load trained weights, in eval mode.

    `path`: an exported `.safetensors` model, a checkpoint folder, or a run directory (its newest
    valid checkpoint). `ema`: True for the first EMA decay (raw weights if none was kept), a
    float for that decay, False for the raw trained weights."""
    tensors, cfg, _ = read_weights(path, ema)
    return net_from_weights(tensors, cfg, device, path), cfg


@dataclass(frozen=True)
class NetDenoiser:
    """`make_denoise(labels=None) -> Denoise` of a trained network: `as_denoiser(net,
    prediction, clip_x, labels=...)`, the factory `sampling.generate` takes."""

    net: nn.Module
    prediction: str
    clip_x: float | None = 1.0

    def __call__(self, labels: Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        from ..diffusion.parameterization import as_denoiser

        cond = {} if labels is None else {"labels": labels}
        return as_denoiser(self.net, self.prediction, self.clip_x, **cond)


def load_denoiser(
    path: str | Path, ema: float | bool = True, device: str = "cpu", clip_x: float | None = 1.0
) -> tuple[NetDenoiser, TrainConfig]:
    """`(make_denoise, cfg)`: `make_denoise(labels=None)` returns the `Denoise` of the loaded
    network (`as_denoiser` with the trained parameterization; `x_hat` clipped to the data
    range `[-1, 1]` by default). The network itself is `make_denoise.net`."""
    net, cfg = load_model(path, ema=ema, device=device)
    return NetDenoiser(net, cfg.diffusion.prediction, clip_x), cfg


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
