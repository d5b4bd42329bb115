"""Moved to `difflab.allocator` (a process-level setting, layer 0); re-exported here."""

from ..allocator import (  # noqa: F401
    OPT_OUT_ENV,
    TUNABLES,
    apply_malloc_fix,
    malloc_fix_applied,
    malloc_fix_supported,
)
