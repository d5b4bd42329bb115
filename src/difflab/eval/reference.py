"""Cached feature statistics (mean, covariance) of reference datasets.

One `.npz` per (dataset, split, feature network name, sha256 of its weights) in
`$DIFFLAB_DATA/refstats/` (or `~/.cache/difflab/refstats/`), computed once by
`compute_reference_stats` (CLI: `difflab eval refstats <dataset> --split <split> --feature <name>`)
and read by `load_reference_stats`. Loading uses `allow_pickle=False`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from difflab.data import load_fashion_mnist, load_mnist
from difflab.data.cache import data_dir, save_npz_atomic
from difflab.eval.features import FeatureExtractor, get_feature_extractor
from difflab.eval.metrics import GaussianStats, feature_stats


def _images(load: Callable[[str], tuple[np.ndarray, np.ndarray]]) -> Callable[[str], np.ndarray]:
    """`split -> uint8 images [N, 1, H, W]` from a `split -> (images [N, H, W], labels)` loader."""
    return lambda split: np.asarray(load(split)[0])[:, None]


DATASETS: dict[str, Callable[[str], np.ndarray]] = {
    "mnist": _images(load_mnist),
    "fashion_mnist": _images(load_fashion_mnist),
}
"""dataset name -> `split -> uint8 images [N, C, H, W]`."""
DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
}
"""dataset name -> `(C, H, W)` of its images (known without loading them)."""


def check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown reference dataset {dataset!r}; known: {sorted(DATASETS)}")


def reference_images(dataset: str, split: str, num: int | None = None) -> torch.Tensor:
    """The first `num` (all if None) uint8 images `[N, C, H, W]` of a reference split."""
    check_dataset(dataset)
    return torch.from_numpy(DATASETS[dataset](split)[:num])


def refstats_dir() -> Path:
    return data_dir() / "refstats"


def refstats_path(dataset: str, split: str, extractor: FeatureExtractor) -> Path:
    return refstats_dir() / f"{dataset}_{split}_{extractor.name}_{extractor.sha256[:16]}.npz"


def refstats_command(dataset: str, split: str, feature: str) -> str:
    return f"difflab eval refstats {dataset} --split {split} --feature {feature}"


def save_reference_stats(
    stats: GaussianStats, dataset: str, split: str, extractor: FeatureExtractor
) -> Path:
    return save_npz_atomic(
        refstats_path(dataset, split, extractor),
        mu=stats.mu,
        cov=stats.cov,
        num=np.int64(stats.num),
        dataset=np.str_(dataset),
        split=np.str_(split),
        feature=np.str_(extractor.name),
        sha256=np.str_(extractor.sha256),
    )


def load_reference_stats(
    dataset: str, split: str, extractor: FeatureExtractor | str
) -> GaussianStats:
    """Cached stats; missing -> FileNotFoundError naming the command that computes them."""
    if isinstance(extractor, str):
        extractor = get_feature_extractor(extractor)
    path = refstats_path(dataset, split, extractor)
    if not path.is_file():
        raise FileNotFoundError(
            f"no reference statistics for {dataset}/{split} with {extractor.name} at {path}; "
            f"compute them once with `{refstats_command(dataset, split, extractor.name)}`"
        )
    with np.load(path, allow_pickle=False) as data:
        if str(data["sha256"]) != extractor.sha256:
            raise ValueError(f"{path} was computed with another {extractor.name} network")
        return GaussianStats(data["mu"], data["cov"], int(data["num"]))


def cached_reference_stats(dataset: str, split: str, extractor: FeatureExtractor) -> GaussianStats:
    """`load_reference_stats`, computing and caching them first when missing."""
    try:
        return load_reference_stats(dataset, split, extractor)
    except FileNotFoundError:
        print(f"computing {extractor.name} reference statistics of {dataset}/{split} (cached once)")
        compute_reference_stats(dataset, split, extractor.name, device=str(extractor.device))
        return load_reference_stats(dataset, split, extractor)


def compute_reference_stats(
    dataset: str,
    split: str = "train",
    feature: str = "fd-lenet",
    *,
    num: int | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
) -> Path:
    """Extract features of the first `num` images (all if None) of a split on `device` and cache
    their stats."""
    check_dataset(dataset)
    extractor = get_feature_extractor(feature, device)
    images = DATASETS[dataset](split)
    if num is not None:
        if not 2 <= num <= len(images):
            raise ValueError(f"num must be in [2, {len(images)}] for {dataset}/{split}, got {num}")
        images = images[:num]
    stats = feature_stats(extractor(images, batch_size=batch_size), f"{dataset}/{split} features")
    return save_reference_stats(stats, dataset, split, extractor)
