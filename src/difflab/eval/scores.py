"""Feature metrics of image arrays against a reference split, prepared before any sampling.

Metrics: `fid`, `kid`, `pr` use the Inception network (`difflab[fid]`); `fd-lenet`,
`kid-lenet`, `pr-lenet` use difflab's own LeNet of the dataset (`LENET_METRICS`: MNIST's or
Fashion-MNIST's; MNIST's for any other 28x28 grey data), a Frechet distance in *its* features,
not FID; `haze` is a pixel statistic of the samples alone (`image_stats.haze_share`, the share
of the image border that is not black); `elbo` (the model's ELBO in bits/dim,
`likelihood.elbo`) is listed here so one `--metric` list names them all, but is computed from
a model (`difflab.api.evaluate`).

`FeatureScorer(...)` loads every feature network, the cached reference statistics (computed on
first use) and, for KID and precision/recall, the features of the first `ref_num` reference
images when it is built: an unknown dataset or split, a missing optional extra or a shape the
network cannot take fails there, before a model draws a single sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from numpy.typing import NDArray

from .features import LENET_METRICS, FeatureExtractor, get_feature_extractor
from .image_stats import haze_share
from .metrics import frechet_distance, kernel_inception_distance, precision_recall
from .reference import DATASET_SHAPES, cached_reference_stats, check_dataset, reference_images

FEATURE_OF = {
    "fid": "fid",
    "kid": "fid",
    "pr": "fid",
    "fd-lenet": "fd-lenet",
    "kid-lenet": "fd-lenet",
    "pr-lenet": "fd-lenet",
}
"""feature metric -> the feature network it is computed in."""
PIXEL_METRICS = {"haze": haze_share}
"""metric -> function of the samples alone (no feature network, no reference)."""
METRICS = (*FEATURE_OF, *PIXEL_METRICS, "elbo")


def feature_network(metric: str, dataset: str) -> str:
    """The feature network `metric` is computed in on `dataset`: the LeNet metrics use the
    dataset's own LeNet where one ships (`LENET_METRICS`), else the MNIST one."""
    feature = FEATURE_OF[metric]
    return LENET_METRICS.get(dataset, feature) if feature == "fd-lenet" else feature


def parse_metrics(text: str) -> list[str]:
    """`"fid,fd-lenet"` -> `["fid", "fd-lenet"]`; unknown names are a `ValueError`."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metric: unknown {unknown or text!r}; known metrics: {list(METRICS)}")
    return names


class FeatureScorer:
    """`scorer(samples) -> {metric: value}` for the feature `metrics` (`elbo` is skipped) of
    `samples` (float in [-1, 1] or uint8) against `dataset`/`split`, networks on `device`.

    Everything the reference side needs is loaded here, up front (see the module docstring)."""

    def __init__(
        self,
        metrics: Sequence[str],
        *,
        dataset: str = "mnist",
        split: str = "test",
        ref_num: int = 10_000,
        device: str | torch.device = "cpu",
    ) -> None:
        check_dataset(dataset)
        self.metrics = [m for m in metrics if m != "elbo"]
        unknown = [m for m in self.metrics if m not in FEATURE_OF and m not in PIXEL_METRICS]
        if unknown:
            raise ValueError(f"--metric: unknown {unknown}; known metrics: {list(METRICS)}")
        self.dataset, self.split = dataset, split
        self.extractors: dict[str, FeatureExtractor] = {}
        self.stats, self.real = {}, {}
        self.feature_of = {m: feature_network(m, dataset) for m in self.metrics if m in FEATURE_OF}
        for metric, feature in self.feature_of.items():
            if feature not in self.extractors:
                self.extractors[feature] = extractor = get_feature_extractor(feature, device)
                extractor.check_shape(DATASET_SHAPES[dataset], f"{dataset} images")
            extractor = self.extractors[feature]
            if metric in ("fid", "fd-lenet"):
                self.stats[feature] = cached_reference_stats(dataset, split, extractor)
            elif feature not in self.real:
                self.real[feature] = extractor(reference_images(dataset, split, ref_num))

    def check_shape(self, shape: tuple[int, ...], what: str = "samples") -> None:
        """Raise `ValueError` unless `[N, *shape]` images can be compared with the reference."""
        expected = DATASET_SHAPES[self.dataset]
        if tuple(shape) != expected:
            raise ValueError(
                f"{what} of shape [N, {', '.join(map(str, shape))}] cannot be compared with "
                f"{self.dataset} images of shape [N, {', '.join(map(str, expected))}]"
            )

    def __call__(self, samples: torch.Tensor) -> dict[str, float]:
        self.check_shape(samples.shape[1:])
        fake: dict[str, NDArray] = {}
        out: dict[str, float] = {}
        for metric in self.metrics:
            if metric in PIXEL_METRICS:
                out[metric] = PIXEL_METRICS[metric](samples)
                continue
            feature = self.feature_of[metric]
            if feature not in fake:
                images = samples.clamp(-1, 1) if samples.is_floating_point() else samples
                fake[feature] = self.extractors[feature](images)
            if metric in ("fid", "fd-lenet"):
                out[metric] = frechet_distance(fake[feature], self.stats[feature])
            elif metric.startswith("kid"):
                kid = kernel_inception_distance(self.real[feature], fake[feature])
                out[metric], out[f"{metric}_std"] = kid.mean, kid.std
            else:
                pr = precision_recall(self.real[feature], fake[feature])
                out[f"{metric}_precision"], out[f"{metric}_recall"] = pr.precision, pr.recall
        return out


def feature_metrics(
    samples: torch.Tensor,
    metrics: Sequence[str],
    *,
    dataset: str = "mnist",
    split: str = "test",
    ref_num: int = 10_000,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """`FeatureScorer(metrics, ...)(samples)` in one call."""
    scorer = FeatureScorer(metrics, dataset=dataset, split=split, ref_num=ref_num, device=device)
    return scorer(samples)
