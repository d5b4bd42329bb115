"""What every benchmark shares: the machine record, the result store, the manifest, tables.

A study lives in one folder of `results/` (`results/<study>/`): `README.md` (the report,
rendered from the raw numbers only), `results.json` (the raw numbers), `manifest.json` (the
commands that made them, with commit, machine and date) and its plots. Scripts run as
`python benchmarks/<name>.py`, so `import common` finds this module next to them.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
UNKNOWN = "unknown"
REPORT, RAW, MANIFEST = "README.md", "results.json", "manifest.json"


# --------------------------------------------------------------------------- the machine
def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    """An installed distribution's version, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine(device: str | None = None) -> dict:
    """Where a measurement ran: CPU, cores, torch threads, versions, GPU (when `device` is a
    CUDA device), the load average at the time of the call."""
    import torch

    info = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "diffusers": package_version("diffusers"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if device is not None:
        info["device"] = device
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def git_state(root: Path = ROOT) -> dict:
    """`{"commit": HEAD, "dirty": bool}` of the checkout (`"unknown"` outside a git tree)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        if done.returncode:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except OSError:
        return {"commit": UNKNOWN, "dirty": UNKNOWN}


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line(argv: Sequence[str] | None = None, script: str | None = None) -> str:
    """The command as typed: `python benchmarks/<script> <args>` (`argv` defaults to
    `sys.argv[1:]`, `script` to the running script's path relative to the repository)."""
    if script is None:
        path = Path(sys.argv[0]).resolve()
        script = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else sys.argv[0]
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", script, *args])


def named_value(items: Iterable[str], name: str, default: Any) -> Any:
    """The value of `name` in `name=value` items (a flag such as `--method-lr mcm-cd=1e-3`),
    else `default`."""
    for item in items:
        key, _, value = item.partition("=")
        if key == name:
            return value
    return default


# --------------------------------------------------------------------------- the result store
def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON at `path` (parse errors name the file); `default` when the file is missing."""
    from difflab.fileio import read_json as fileio_read_json

    path = Path(path)
    if default is not None and not path.is_file():
        return default
    return fileio_read_json(path)


def write_json(path: str | Path, data: Any, *, indent: int = 1, sort_keys: bool = False) -> Path:
    """Write `data` atomically (a full disk leaves the old file intact). Key order is kept
    unless `sort_keys`: reports render rows in the stored order."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=str)
    return write_text(path, text + "\n")


def write_text(path: str | Path, text: str) -> Path:
    from difflab.fileio import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, text)


def united(first: list, second: list) -> list:
    """`first` followed by the items of `second` it lacks (order kept)."""
    return first + [item for item in second if item not in first]


def merge_stored(ours: dict, stored: dict) -> dict:
    """Add to `ours`, in place, what `stored` (the results on disk) has and `ours` lacks: nested
    dicts merge key by key, lists keep the stored items then ours, any other value stays ours.
    In place, so the row dicts a running stage holds stay part of `ours`."""
    for key, value in stored.items():
        mine = ours.get(key)
        if key not in ours:
            ours[key] = value
        elif isinstance(mine, dict) and isinstance(value, dict):
            merge_stored(mine, value)
        elif isinstance(mine, list) and isinstance(value, list):
            mine[:] = united(value, mine)
    return ours


def locked_update(
    path: str | Path,
    data: dict,
    merge: Callable[[dict, dict], dict] = merge_stored,
    *,
    indent: int = 1,
    sort_keys: bool = False,
) -> dict:
    """Merge `data` with the JSON file at `path` under an exclusive lock (`merge(data,
    stored)` returns the merged dict), save it atomically and return it: several processes can
    share one store (e.g. two student runs on two cores) without one dropping the other's rows."""
    from difflab.fileio import exclusive_lock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path):
        stored = read_json(path, {})
        merged = merge(data, stored)
        write_json(path, merged, indent=indent, sort_keys=sort_keys)
    return merged


def update_results(folder: str | Path, part: dict) -> dict:
    """Replace the top-level keys of `part` in `<folder>/results.json` (the others stay) and
    return the whole record: each script of a study writes its own keys."""
    path = Path(folder) / RAW
    return locked_update(path, part, lambda mine, stored: {**stored, **mine})


# --------------------------------------------------------------------------- the manifest
def manifest_entry(command: str, device: str | None = None, **extra: Any) -> dict:
    return {
        "command": command,
        **git_state(),
        "machine": machine(device),
        "date": utc_now(),
        **extra,
    }


def record_run(folder: str | Path, command: str, device: str | None = None, **extra: Any) -> dict:
    """Append this run (command, commit, dirty flag, machine, date) to
    `<folder>/manifest.json`; a run of the same command replaces its earlier entry."""
    path = Path(folder) / MANIFEST
    entry = manifest_entry(command, device, **extra)

    def merge(mine: dict, stored: dict) -> dict:
        runs = [r for r in stored.get("runs", []) if r.get("command") != command]
        return {**stored, "runs": [*runs, entry]}

    return locked_update(path, {}, merge)


# --------------------------------------------------------------------------- tables
def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | Sequence[str] = ""
) -> list[str]:
    """Markdown table lines; `align` per column: `l` (`---`) or `r` (`---:`), default `l`."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} has {len(align)} columns, header {len(header)}")
    marks = [("---:" if a == "r" else "---") for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def fmt_sig(value: float | None, digits: int = 3, big: float = 1000) -> str:
    """`value` with `digits` significant digits; at or above `big`, scientific notation; `-`
    for a value that was not measured (None)."""
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < big else f"{value:.{digits}e}"


def study_folder(out: str | Path) -> Path:
    """A study's folder from `--out` (a folder, or a path whose suffix is dropped)."""
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".md", ".json") else out


def write_report(folder: str | Path, text: str) -> Path:
    """`<folder>/README.md`."""
    path = Path(folder) / REPORT
    write_text(path, text)
    print(f"wrote {path}")
    return path
