"""Read pickled numpy arrays without executing anything else.

Some datasets ship only as pickles (the classic `mnist.pkl.gz`). `pickle.load` runs any callable a
file names, so such files are read with an unpickler whose `find_class` admits exactly the globals
that rebuild an `ndarray` and refuses every other one *before* it can be called.
"""

from __future__ import annotations

import pickle
from typing import IO, Any

import numpy as np

try:  # numpy >= 1.26 (and 2.x): the implementation lives in numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy < 1.26
    from numpy.core.multiarray import _reconstruct

# Pickles written by numpy 1.x name `numpy.core`, by numpy 2.x `numpy._core`; both resolve here to
# the installed implementation, so neither the module nor its deprecation shim is imported by name.
NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays, tuples, lists, dicts and scalars, and nothing else.

    Any other global (`os.system`, `builtins.eval`, `numpy.load`, ...) raises
    `pickle.UnpicklingError` naming it. Object arrays can only hold what the pickle can build, i.e.
    plain Python values; callers should still check the dtypes they get.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return NUMPY_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only numpy array reconstruction is allowed"
            ) from None


def load_numpy_pickle(file: IO[bytes], *, encoding: str = "latin1") -> Any:
    """Unpickle `file` with `NumpyUnpickler`.

    `encoding="latin1"` is what Python-2 pickles of numpy arrays need: their raw buffers are `str`
    objects, and latin-1 maps each byte to one code point, so numpy recovers the bytes exactly.
    """
    return NumpyUnpickler(file, encoding=encoding).load()
