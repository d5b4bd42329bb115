"""glibc malloc tuning for CPU training on Linux.

Why: with glibc's default settings, a freed block above the *dynamic* mmap threshold is handed
back to the kernel (`munmap`, or `madvise`/`brk` trimming of the heap top) and the next step's
allocation of the same size faults every page in again. PyTorch on CPU frees and re-allocates
large activation/optimizer buffers every step, so on Linux VMs training intermittently runs
~5x slower: large element-wise ops such as the AdamW update slow down ~100x whenever they touch
freshly mapped memory. Pinning the mmap threshold at its maximum (32 MiB on 64-bit glibc; this
also switches off the dynamic adjustment) and raising the trim threshold keeps freed memory in
the process, where the next step reuses it. Peak RSS grows by at most the freed-but-kept memory.

Applied by the CLI at start-up (and by `difflab.train.run_training`); opt out with
`DIFFLAB_NO_MALLOC_FIX=1`.
The equivalent without code, set before Python starts:

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296

`mallopt` is process-wide and takes effect for allocations made after the call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: the largest value it accepts
OPT_OUT_ENV = "DIFFLAB_NO_MALLOC_FIX"
TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"

_applied = False


def malloc_fix_supported() -> bool:
    """True on Linux with glibc (musl and other platforms have no `mallopt` to tune)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def apply_malloc_fix(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Set glibc's mmap and trim thresholds (module docstring). Returns whether it was applied:
    False where unsupported, opted out (`DIFFLAB_NO_MALLOC_FIX=1`) or `mallopt` refused."""
    global _applied
    if os.environ.get(OPT_OUT_ENV, "") not in ("", "0") or not malloc_fix_supported():
        return False
    if _applied:
        return True
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    _applied = ok
    return ok


def malloc_fix_applied() -> bool:
    """Whether `apply_malloc_fix` succeeded in this process."""
    return _applied
