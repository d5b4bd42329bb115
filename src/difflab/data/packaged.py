"""Datasets that ship inside system or Python packages: read in place, nothing to prepare.

- Fashion-MNIST (Xiao et al. 2017) from the Debian package `dataset-fashion-mnist`
  (`/usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz`, the upstream IDX files).
- The 8x8 handwritten digits bundled with scikit-learn (`sklearn.datasets.load_digits`,
  1797 images with values 0..16), a dataset small enough for tests.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from .cache import DatasetUnavailableError
from .idx import read_idx

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_PER_CLASS = {"train": 6000, "test": 1000}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`(images uint8 [N, 28, 28], labels uint8 [N])`, checked to be the balanced 60k/10k sets."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"Fashion-MNIST split must be one of {tuple(FASHION_MNIST_FILES)}")
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    paths = [root / name for name in FASHION_MNIST_FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetUnavailableError(
            f"Fashion-MNIST not found: {root} lacks {', '.join(missing)}. Install the Debian "
            f"package (`{FASHION_MNIST_INSTALL}`) or pass root= a folder with the IDX files"
        )
    images, labels = (read_idx(p) for p in paths)
    n = FASHION_MNIST_PER_CLASS[split] * 10
    if images.dtype != np.uint8 or images.shape != (n, 28, 28) or labels.shape != (n,):
        raise ValueError(
            f"Fashion-MNIST {split} in {root}: images {images.dtype} {images.shape}, labels "
            f"{labels.shape}; expected uint8 ({n}, 28, 28) and ({n},)"
        )
    if labels.max() > 9 or np.any(np.bincount(labels) != FASHION_MNIST_PER_CLASS[split]):
        raise ValueError(f"Fashion-MNIST {split} labels in {root} are not 10 balanced classes")
    return images, labels


def _digits_csv() -> Path | None:
    """scikit-learn's `datasets/data/digits.csv.gz`, located without importing scikit-learn
    (its import costs seconds)."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def load_sklearn_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """`(images float64 [N, 8, 8] in 0..16, labels int64 [N])`; every 5th image is `test`.

    Read from scikit-learn's CSV file as `sklearn.datasets.load_digits` does (64 pixel
    columns then the label), without importing scikit-learn."""
    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    csv = _digits_csv()
    if csv is not None:
        data = np.loadtxt(csv, delimiter=",")
        images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    else:
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise ModuleNotFoundError(
                "the 'digits' dataset needs scikit-learn: `pip install scikit-learn` "
                "(or `pip install difflab[data]`)"
            ) from err
        digits = load_digits()
        images, target = digits.images, digits.target
    test = np.arange(len(target)) % 5 == 0
    keep = test if split == "test" else ~test
    return images[keep], target[keep]
