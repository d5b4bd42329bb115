"""Image datasets in difflab's one convention.

Every item is `(image float32 [C, H, W] in [-1, 1], label int64)`, with label -1 when the data has
none. Every dataset exposes `.image_shape` (`(C, H, W)` of its items) and `.num_classes` (0 when
unlabeled), and can pad images (value -1, i.e. black) to `pad_to x pad_to`, e.g. 28 -> 32 for
U-Nets that halve the resolution several times, and flip them horizontally at random.
"""

from __future__ import annotations

import operator
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from difflab.diffusion.oracle import GaussianMixtureOracle

LAYOUTS = ("NHW", "NHWC", "NCHW")
CHANNELS = (1, 3)


class ImageDataset(Dataset):
    """Base class: subclasses implement `__len__` and `load(index) -> (image [C,H,W] in [-1,1],
    label)`; this class adds the shared padding and flipping and the int64 label."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        *,
        pad_to: int | None = None,
        flip: bool = False,
    ) -> None:
        c, h, w = image_shape
        if pad_to is not None and (pad_to < h or pad_to < w):
            raise ValueError(f"pad_to={pad_to} is smaller than the images ({h}x{w})")
        self.pad_to, self.flip, self.num_classes = pad_to, flip, num_classes
        self.image_shape = (c, pad_to, pad_to) if pad_to is not None else (c, h, w)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[Tensor, int]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        index, n = operator.index(index), len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} items")
        image, label = self.load(index % n)
        if self.pad_to is not None:
            image = pad_image(image, self.pad_to)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, torch.tensor(label, dtype=torch.int64)


def pad_image(image: Tensor, size: int) -> Tensor:
    """Pad `[C, H, W]` with -1 to `[C, size, size]`, centred (odd remainder right/bottom)."""
    dh, dw = size - image.shape[-2], size - image.shape[-1]
    return F.pad(image, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=-1.0)


def uint8_to_unit(x: Tensor) -> Tensor:
    """Pixels 0..255 -> float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
    return x.float() / 127.5 - 1.0


# ----------------------------------------------------------------------------- arrays


class ArrayImageDataset(ImageDataset):
    """Images held in memory as one array.

    Accepted layouts: `[N, H, W]` (grayscale), `[N, H, W, C]` or `[N, C, H, W]` with C in {1, 3};
    the 4-d layout is inferred from where the 1 or 3 is and must be given as `layout=` when both
    ends could be channels (e.g. `[N, 3, 3, 3]`).
    Values: uint8 arrays are pixels 0..255; any other dtype needs `value_range=(lo, hi)`, the
    range that maps to [-1, 1] (e.g. `(0, 1)` for floats in [0, 1]); values outside it are an
    error rather than silently clipped. Labels: optional non-negative integers `[N]`.
    `resolution`: upsample every image to `resolution x resolution` (bilinear, at least the
    stored size; before `pad_to`), e.g. Fashion-MNIST at 64x64 for the resolution experiment of
    docs/methods/recipe.md. `name` (a file path, say) is used in error messages.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        layout: str | None = None,
        value_range: tuple[float, float] | None = None,
        num_classes: int | None = None,
        pad_to: int | None = None,
        flip: bool = False,
        name: str = "images",
        resolution: int | None = None,
    ) -> None:
        images = to_nchw(np.asarray(images), layout, name)
        if images.dtype == np.uint8 and value_range in (None, (0, 255)):
            self.images = torch.from_numpy(images)  # kept as uint8: 4x less memory
        else:
            self.images = torch.from_numpy(to_unit_range(images, value_range, name))
        self.labels, num_classes = check_labels(labels, len(images), num_classes, name)
        channels, height, width = images.shape[1:]
        self.resolution = check_resolution(resolution, height, width, name)
        if self.resolution is not None:
            height = width = self.resolution
        super().__init__((channels, height, width), num_classes, pad_to=pad_to, flip=flip)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index]
        image = uint8_to_unit(image) if image.dtype == torch.uint8 else image
        if self.resolution is not None:
            image = upsample_image(image, self.resolution)
        return image, int(self.labels[index]) if self.labels is not None else -1


def check_resolution(resolution: int | None, height: int, width: int, name: str) -> int | None:
    """`resolution` (None: keep the stored size) if it is an int at least the stored `height`
    and `width`; None when it equals a square stored size (nothing to do)."""
    if resolution is None:
        return None
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise ValueError(f"resolution must be an int, got {resolution!r}")
    if resolution < max(height, width):
        raise ValueError(
            f"resolution={resolution} is smaller than the {name} ({height}x{width}): "
            "only upsampling is supported"
        )
    return None if resolution == height == width else resolution


def upsample_image(image: Tensor, size: int) -> Tensor:
    """`[C, H, W]` -> `[C, size, size]`, bilinear (half-pixel centres, `align_corners=False`):
    each output pixel is a convex combination of at most 4 input pixels, so the data range is
    kept and no ringing appears."""
    out = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)
    return out[0]


def infer_layout(shape: tuple[int, ...], name: str = "images") -> str:
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        raise ValueError(f"{name}: shape {shape} is not [N,H,W], [N,H,W,C] or [N,C,H,W]")
    first, last = shape[1] in CHANNELS, shape[3] in CHANNELS
    if first and last:
        raise ValueError(f"{name}: shape {shape} is ambiguous; pass layout='NCHW' or 'NHWC'")
    if not (first or last):
        raise ValueError(f"{name}: shape {shape} has no channel axis of size 1 or 3")
    return "NCHW" if first else "NHWC"


def to_nchw(array: np.ndarray, layout: str | None = None, name: str = "images") -> np.ndarray:
    """`array` in `layout` (inferred when None, see `ArrayImageDataset`) as `[N, C, H, W]`."""
    layout = infer_layout(array.shape, name) if layout is None else layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if array.ndim != len(layout):
        raise ValueError(f"{name}: shape {array.shape} does not match layout {layout!r}")
    if layout == "NHW":
        array = array[:, None]
    elif layout == "NHWC":
        array = array.transpose(0, 3, 1, 2)
    if array.shape[1] not in CHANNELS:
        raise ValueError(f"{name}: {array.shape[1]} channels in layout {layout}; expected 1 or 3")
    return np.ascontiguousarray(array)


def to_unit_range(
    array: np.ndarray, value_range: tuple[float, float] | None, name: str = "images"
) -> np.ndarray:
    """Map `value_range = (lo, hi)` affinely to [-1, 1] as float32, refusing values outside it."""
    if value_range is None:
        raise ValueError(
            f"{name}: {array.dtype} images need value_range=(lo, hi), the range that maps to "
            "[-1, 1], e.g. (0, 1) or (-1, 1); only uint8 defaults to (0, 255)"
        )
    lo, hi = (float(v) for v in value_range)
    if not lo < hi:
        raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range}")
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name}: images must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: images contain NaN or inf")
    if array.size and (array.min() < lo or array.max() > hi):
        raise ValueError(
            f"{name}: values span [{array.min():g}, {array.max():g}], outside "
            f"value_range=({lo:g}, {hi:g})"
        )
    return ((array - lo) * (2.0 / (hi - lo)) - 1.0).astype(np.float32)


def check_labels(
    labels: np.ndarray | Sequence[int] | None, n: int, num_classes: int | None, name: str
) -> tuple[Tensor | None, int]:
    """Labels as int64 `[n]` (or None) and the number of classes (0 without labels)."""
    if labels is None:
        return None, 0
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise ValueError(
            f"{name}: labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}"
        )
    if n and labels.min() < 0:
        raise ValueError(f"{name}: labels must be non-negative, got {labels.min()}")
    found = int(labels.max()) + 1 if n else 0
    if num_classes is not None and found > num_classes:
        raise ValueError(f"{name}: label {found - 1} >= num_classes={num_classes}")
    return torch.from_numpy(labels.astype(np.int64)), num_classes or found


def load_array_file(
    path: str | os.PathLike, key: str = "images", label_key: str = "labels"
) -> tuple[np.ndarray, np.ndarray | None]:
    """`(images, labels or None)` from a `.npy` (images only) or `.npz` file (arrays `key` and,
    if present, `label_key`). Never unpickles: object arrays are refused."""
    path = Path(path)
    if path.suffix not in (".npy", ".npz"):
        raise ValueError(f"{path}: expected a .npy or .npz file")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as npz:
            files = npz.files
            if key in files:
                return npz[key], npz[label_key] if label_key in files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"cannot read array file {path}: {err}") from err
    raise ValueError(f"{path} has no array {key!r} (it has {files}); pass key=")


# ----------------------------------------------------------------------------- image folders


def image_extensions() -> frozenset[str]:
    """File extensions Pillow can open."""
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


class FolderImageDataset(ImageDataset):
    """Every image file under `root` (recursively, by Pillow's extensions; hidden files skipped),
    resized so the shorter side is `resolution` and centre-cropped to a square, as grayscale
    (`channels=1`) or RGB (`channels=3`). With `labels=True`, each first-level subfolder of `root`
    is a class (sorted names -> 0, 1, ...; names in `.class_names`).

    Every file is opened and verified on construction, so an unreadable file is a `ValueError`
    naming it before training starts, not a crash hours in.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int,
        *,
        channels: int = 3,
        labels: bool = False,
        pad_to: int | None = None,
        flip: bool = False,
    ) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        if channels not in CHANNELS:
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        extensions = image_extensions()
        self.files = sorted(
            p
            for p in root.rglob("*")
            if p.suffix.lower() in extensions
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not self.files:
            raise ValueError(f"no image files under {root}")
        self.class_names: list[str] = []
        self.targets: list[int] | None = None
        if labels:
            self.class_names, self.targets = labels_from_subfolders(root, self.files)
        verify_images(self.files)
        self.root, self.resolution, self.mode = root, resolution, "L" if channels == 1 else "RGB"
        super().__init__(
            (channels, resolution, resolution), len(self.class_names), pad_to=pad_to, flip=flip
        )

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[Tensor, int]:
        path = self.files[index]
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im).convert(self.mode)
                im = ImageOps.fit(im, (self.resolution,) * 2, Image.Resampling.BICUBIC)
        except Exception as err:  # Pillow raises many types for broken files
            raise ValueError(f"cannot read image {path}: {err}") from err
        pixels = torch.from_numpy(np.array(im, dtype=np.uint8)).reshape(
            self.resolution, self.resolution, -1
        )
        label = self.targets[index] if self.targets is not None else -1
        return uint8_to_unit(pixels.permute(2, 0, 1)), label


def labels_from_subfolders(root: Path, files: list[Path]) -> tuple[list[str], list[int]]:
    """Class names (sorted first-level subfolders of `root`) and one class index per file."""
    top = [f for f in files if f.parent == root]
    if top:
        raise ValueError(
            f"labels=True needs every image in a class subfolder of {root}; {top[0]} is not"
        )
    folders = [f.relative_to(root).parts[0] for f in files]
    class_names = sorted(set(folders))
    index = {name: i for i, name in enumerate(class_names)}
    return class_names, [index[name] for name in folders]


def verify_images(files: list[Path], max_listed: int = 10) -> None:
    """Open and verify every file; one `ValueError` listing the unreadable ones."""
    bad = []
    for path in files:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as err:  # Pillow raises many types for broken files
            bad.append(f"{path} ({type(err).__name__}: {err})")
    if bad:
        listed = "\n  ".join(bad[:max_listed])
        more = f"\n  ... and {len(bad) - max_listed} more" if len(bad) > max_listed else ""
        raise ValueError(f"{len(bad)} unreadable image file(s):\n  {listed}{more}")


# ----------------------------------------------------------------------------- synthetic


class GaussianMixtureDataset(ImageDataset):
    """Exact samples of a `difflab.diffusion.oracle.GaussianMixtureOracle` (labels: components).

    Samples are drawn on construction in chunks of `CHUNK`, chunk `j` of a split seeded by
    `(seed, split, j)`: item `i` depends only on `(seed, split, i)`, not on `num_samples`, and
    batched draws are ~7x faster than one at a time. Memory: `num_samples * C * H * W` float32.
    Samples are not clipped to [-1, 1] (a Gaussian is unbounded, and clipping would break the
    exact oracle); `.oracle` is the reference denoiser for this data.
    """

    SPLITS = ("train", "test")
    CHUNK = 1024

    def __init__(
        self,
        oracle: GaussianMixtureOracle,
        num_samples: int,
        *,
        split: str = "train",
        seed: int = 0,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"gaussian_mixture split must be one of {self.SPLITS}, got {split!r}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if len(oracle.shape) != 3:
            raise ValueError(f"the mixture must be image-shaped [C, H, W], got {oracle.shape}")
        chunks = []
        for j in range(-(-num_samples // self.CHUNK)):
            state = np.random.SeedSequence((seed, self.SPLITS.index(split), j)).generate_state(1)
            x, k = oracle.sample(self.CHUNK, torch.Generator().manual_seed(int(state[0])))
            chunks.append((x.float(), k))
        self.oracle = oracle
        self.images = torch.cat([x for x, _ in chunks])[:num_samples]
        self.labels = torch.cat([k for _, k in chunks])[:num_samples]
        super().__init__(oracle.shape, int(oracle.weights.shape[0]))

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])
