"""Where prepared datasets live, and how they are written there.

Prepared data goes to `$DIFFLAB_DATA` (default `~/.cache/difflab`) as `.npz` files, written to a
temporary file in the same folder and moved into place with `os.replace`, so a reader sees either
the old file or the complete new one, never a partial write.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

DATA_DIR_ENV = "DIFFLAB_DATA"


class DatasetUnavailableError(FileNotFoundError):
    """A dataset's files are not on this machine; the message says how to get them."""


def data_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else `$DIFFLAB_DATA`, else `~/.cache/difflab`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return Path.home() / ".cache" / "difflab"


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> Path:
    """Write `arrays` to the compressed `.npz` file `path` atomically (temp file + `os.replace`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a data cache may be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
