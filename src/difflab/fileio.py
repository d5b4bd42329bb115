"""Atomic file writes and JSON reads that name the file (layer 0: imports nothing from difflab).

Every write goes to a temporary file next to the target (`.<name>.tmp-<pid>`), is flushed and
fsync'ed, then renamed over the target with `os.replace`; the directory is fsync'ed after. A
failed write (full disk, read-only file system, ...) removes its temporary file and leaves the
old target byte for byte as it was, so a crash or a full disk never truncates a results file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere the lock is a no-op and concurrent appends to one file are unsafe
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "append_json_record",
    "exclusive_lock",
    "fsync_dir",
    "pid_alive",
    "read_json",
    "remove_stale_temp_files",
    "temp_name",
    "write_atomic",
    "write_json_atomic",
    "write_synced",
    "write_text_atomic",
]

TMP_MARK = ".tmp-"


def temp_name(path: Path) -> Path:
    """The temporary sibling `.<name>.tmp-<pid>` that `write_atomic` writes first."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so a rename inside it survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` (not atomically) and fsync it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a synced temporary file and `os.replace`.

    On any failure the temporary file is removed, `path` keeps its old content, and the error
    is re-raised."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`write_atomic` of UTF-8 text."""
    return write_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """`write_atomic` of `obj` as JSON (keys sorted, newline-terminated). The object is
    serialised before anything is written, so an unserialisable object touches no file."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; bad JSON raises `ValueError` naming the file, line and column."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno} "
            f"(char {err.pos})"
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: not UTF-8 at byte {err.start}") from None


def lock_path(path: str | Path) -> Path:
    """The lock file of `path`: in the temporary folder (not beside the target, where it would
    be committed with results), named by a hash of the target's absolute path."""
    digest = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"difflab-{digest}.lock"


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` across processes (`flock` on `lock_path`) for
    a read-modify-write of that file, so that two writers never drop each other's update."""
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor is closed
        yield
    finally:
        os.close(fd)


def append_json_record(path: str | Path, record: Any) -> list:
    """Append `record` to the JSON list stored in `path` (created if missing), atomically and
    under `exclusive_lock`: processes appending to one file (two `difflab eval --out` runs)
    keep every record.

    Returns the new list. A file holding something other than a list raises `ValueError`
    naming it; nothing is written then."""
    path = Path(path)
    with exclusive_lock(path):
        records = read_json(path) if path.exists() else []
        if not isinstance(records, list):
            raise ValueError(
                f"{path} holds a JSON {type(records).__name__}, not a list of records; "
                "choose another output file"
            )
        records.append(record)
        write_json_atomic(path, records)
    return records


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete temporaries in `folder` whose writing process is gone (or is this process, which
    is not writing now): files or folders whose name starts with `.` and ends in `tmp-<pid>` or
    `-<pid>` after a `.tmp-` mark, i.e. `write_atomic`'s `.<name>.tmp-<pid>` and a checkpoint's
    `.tmp-step_XXXXXXX-<pid>`. Returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not p.name.startswith(".") or TMP_MARK not in p.name:
            continue
        pid = p.name.rsplit("-", 1)[1]
        if not pid.isdigit() or (int(pid) != os.getpid() and pid_alive(int(pid))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
