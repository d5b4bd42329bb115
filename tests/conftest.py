"""Test-wide setup: the glibc allocator fix the CLI applies (see difflab.train.allocator),
so timings of the oracle-heavy tests are not at the mercy of malloc trimming."""

from difflab.train.allocator import apply_malloc_fix

apply_malloc_fix()
