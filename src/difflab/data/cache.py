"""Where prepared datasets live, and how they are written there.

Prepared data goes to `$DIFFLAB_DATA` (default `~/.cache/difflab`) as `.npz` files, written to a
temporary file in the same folder and moved into place with `os.replace`, so a reader sees either
the old file or the complete new one, never a partial write.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..fileio import write_atomic

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
    """Write `arrays` to the compressed `.npz` file `path` atomically (`fileio.write_atomic`:
    a failed write leaves the old file and no temporary)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, buffer.getvalue())
