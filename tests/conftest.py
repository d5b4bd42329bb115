"""Test-wide setup.

- The glibc allocator fix the CLI applies (see difflab.allocator), so timings of the
  oracle-heavy tests are not at the mercy of malloc trimming.
- One intra-op thread per test process: the tests use small tensors, where two spinning OpenMP
  threads cost more than they gain on a 2-core machine; `make test` runs two pytest workers
  (pytest-xdist) instead.
"""

import torch

from difflab.allocator import apply_malloc_fix

apply_malloc_fix()
torch.set_num_threads(1)
